"""``lakeforge pipeline check``: a pipeline YAML's problems, each naming the field path and the fix.

:func:`check_pipeline` validates with :class:`~lakeforge.config.PipelineConfig`, rewording pydantic's
errors, and checks what the model cannot: unknown keys pydantic would ignore, curate steps that do not
exist (with a "did you mean"), step parameters a step refuses. It imports no Spark, torch or MLflow,
so the DAG file may call it while parsing.
"""

from __future__ import annotations

import difflib
import re
import typing
from pathlib import Path
from typing import Any, Sequence

import yaml
from pydantic import BaseModel, ValidationError

from lakeforge.config import (PIPELINES_DIR, PipelineConfig, pipeline_dirs)

# --------------------------------------------------------------------------------------------
# pipeline check
# --------------------------------------------------------------------------------------------


def pipeline_path(name_or_path: str | Path) -> Path:
    """The YAML of a pipeline name (searched in the pipeline dirs, as :meth:`PipelineConfig.load` does)
    or a path."""
    path = Path(name_or_path)
    if not path.suffix and not path.exists():
        found = [d / f"{name_or_path}.yaml" for d in pipeline_dirs() if (d / f"{name_or_path}.yaml").exists()]
        path = found[0] if found else PIPELINES_DIR / f"{name_or_path}.yaml"
    return path


def _loc(loc: Sequence) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _models(annotation) -> list[type[BaseModel]]:
    """The pydantic models inside a field's annotation (``X | None``, ``list[X]``, ``dict[str, X]``)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [m for arg in typing.get_args(annotation) for m in _models(arg)]


def _model_at(loc: Sequence) -> type[BaseModel] | None:
    """The model whose keys the path ``loc`` (not counting its last key) runs through."""
    model: type[BaseModel] | None = PipelineConfig
    for part in loc:
        if isinstance(part, int):
            continue
        info = model.model_fields.get(part) if model else None
        found = _models(info.annotation) if info else []
        model = found[0] if found else None
    return model


def _did_you_mean(word: Any, options: Sequence[str]) -> str:
    close = difflib.get_close_matches(str(word), list(options), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _keys(model: type[BaseModel]) -> list[str]:
    keys = []
    for name, info in model.model_fields.items():
        keys.append(name)
        alias = info.validation_alias
        keys += [c for c in getattr(alias, "choices", ()) if isinstance(c, str) and c != name]
    return keys


def _reword(err: dict) -> str:
    """One pydantic error as ``<field path>: <what is wrong>; <the fix>``."""
    loc, kind, msg, value = tuple(err.get("loc", ())), err.get("type", ""), err.get("msg", ""), err.get("input")
    path = _loc(loc)
    last = loc[-1] if loc else ""
    shown = repr(value) if len(repr(value)) <= 80 else repr(value)[:77] + "..."
    if kind == "literal_error":
        options = re.findall(r"'([^']*)'", str((err.get("ctx") or {}).get("expected", "")))
        return (f"{path}: {value!r} is not a {last}; use one of {', '.join(options)}"
                + _did_you_mean(value, options))
    if kind == "missing":
        return f"{path}: is required but missing; add `{last}: ...`"
    if kind == "extra_forbidden":
        parent = loc[:-1]
        model = _model_at(parent)
        known = _keys(model) if model else []
        where = _loc(parent) or "the pipeline"
        return (f"{path}: {last!r} is not a key of {where}; remove it" + _did_you_mean(last, known)
                + (f" (keys: {', '.join(known)})" if known else ""))
    if kind in ("value_error", "assertion_error"):
        text = re.sub(r"^(Value|Assertion) error, ", "", msg)
        if not path:
            return text
        return text if text.startswith(f"{path}:") or text.startswith(f"{last} ") else f"{path}: {text}"
    return f"{path or 'pipeline'}: {msg} (got {shown})"


def _unknown_keys(data: Any, model: type[BaseModel], loc: tuple) -> list[str]:
    """Keys of ``data`` that a (lenient) model would silently ignore: typos such as ``model.cpu.max_step``."""
    if not isinstance(data, dict):
        return []
    problems = []
    strict = model.model_config.get("extra") == "forbid"  # pydantic reports these itself
    keys = _keys(model)
    for key, value in data.items():
        info = model.model_fields.get(key)
        if info is None:
            if not strict and key not in keys:
                problems.append(f"{_loc((*loc, key))}: {key!r} is not a key of {_loc(loc) or 'the pipeline'}; remove "
                                f"it{_did_you_mean(key, keys)} (keys: {', '.join(keys)})")
            continue
        for sub in _models(info.annotation)[:1]:
            if isinstance(value, dict):
                problems += _unknown_keys(value, sub, (*loc, key))
            elif isinstance(value, list):
                for i, item in enumerate(value):
                    problems += _unknown_keys(item, sub, (*loc, key, i))
    return problems


def _check_steps(steps: Any) -> list[str]:
    """Each ``curate`` step is a known step whose params it accepts."""
    if not isinstance(steps, list):
        return []
    import inspect

    from lakeforge.curate.steps import CURATE_STEPS, build_steps

    known = sorted(CURATE_STEPS)
    problems = []
    for i, spec in enumerate(steps):
        if not isinstance(spec, dict) or not isinstance(spec.get("name"), str):
            continue  # pydantic reported it
        name = spec["name"]
        if name not in CURATE_STEPS:
            problems.append(f"curate[{i}].name: {name!r} is not a curate step" + _did_you_mean(name, known)
                            + f"; steps: {', '.join(known)}")
            continue
        params = spec.get("params") or {}
        if not isinstance(params, dict):
            continue  # pydantic reported it
        try:
            build_steps([{"name": name, "params": params}])
        except Exception as exc:  # ConfigError (bad params), or a step's own check
            accepted = [p for p in inspect.signature(CURATE_STEPS[name].__init__).parameters if p != "self"]
            bad = [k for k in params if k not in accepted]
            detail = ("; ".join(f"{k!r} is not a parameter of {name}{_did_you_mean(k, accepted)}" for k in bad)
                      or re.sub(r"^bad params .*? for curate step '[^']*': ", "", str(exc)))
            problems.append(f"curate[{i}].params: {detail}; {name}'s parameters: {', '.join(accepted) or 'none'}")
    return problems


def _validate(data: dict) -> tuple[PipelineConfig | None, list[str]]:
    try:
        return PipelineConfig.model_validate(data), []
    except ValidationError as exc:
        return None, [_reword(e) for e in exc.errors()]


def check_pipeline(path_or_name: str | Path) -> list[str]:
    """The problems of a pipeline YAML (a name in the pipeline dirs, or a path); empty when it is valid.

    Each problem names the field path and the fix. Checked: the YAML parses; :class:`PipelineConfig`
    accepts it (roles, types, labels, keys); no key is silently ignored; every ``curate`` step exists and
    accepts its params; ``source.columns`` maps fields the pipeline has.
    """
    path = pipeline_path(path_or_name)
    if not path.exists():
        known = sorted(p.stem for d in pipeline_dirs() if d.exists() for p in d.glob("*.yaml"))
        return [f"pipeline {str(path_or_name)!r} not found at {path}; known pipelines: {known}"]
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        return [f"{path}: not valid YAML: {exc}"]
    if not isinstance(data, dict):
        return [f"{path}: expected a mapping of keys (name, topic, fields, labels, ...), got {type(data).__name__}"]
    config, problems = _validate(data)
    if config is None and any(p.startswith("labels:") for p in problems) and isinstance(data.get("model"), dict):
        # a missing (or twice given) label space stops pydantic before the fields: validate again with one
        top, inner = data.get("labels"), data["model"].get("labels")
        space = top if isinstance(top, list) else inner if isinstance(inner, list) else None
        model = {k: v for k, v in data["model"].items() if k != "labels"}
        _, more = _validate({**data, "labels": space or ["label_a", "label_b"], "model": model})
        problems += [p for p in more if space or not p.startswith("labels")]
    fields = data.get("fields")
    if isinstance(fields, list):  # pydantic says so only once every field is valid
        names = [f.get("name") for f in fields if isinstance(f, dict) and isinstance(f.get("name"), str)]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            problems.append(f"fields: {twice} appear more than once; field names must be unique")
    problems += _unknown_keys(data, PipelineConfig, ())
    name = data.get("name")
    if isinstance(name, str) and not re.fullmatch(r"[A-Za-z0-9_.-]+", name):
        problems.append(f"name: {name!r} names the DAG and lake paths; use letters, digits, _ . and - only")
    problems += _check_steps(data.get("curate"))
    source = data.get("source")
    columns = source.get("columns") if isinstance(source, dict) else None
    if isinstance(columns, dict) and isinstance(fields, list):
        names = [f.get("name") for f in fields if isinstance(f, dict)]
        for key in columns:
            if key not in names:
                problems.append(f"source.columns.{key}: {key!r} is not a field of the pipeline; the keys are field "
                                f"names, the values the file's columns{_did_you_mean(key, [str(n) for n in names])}")
    return list(dict.fromkeys(problems))


def summary(config: PipelineConfig) -> str:
    """The one line ``pipeline check`` prints for a valid pipeline."""
    return (f"ok: {config.name} ({len(config.fields)} fields, {len(config.labels)} labels, "
            f"{len(config.curate)} steps)")
