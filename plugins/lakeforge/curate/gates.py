"""The data-quality gate of curate: thresholds from the pipeline YAML (``quality_gate``) checked after
the chain ran and before anything is published.

A failing partition is not published (the previous version, if any, stays visible), its report is
still written, and the job fails with :class:`~lakeforge.errors.DataQualityError` naming each rule
that failed and its figures. Only what depends on that partition stops: in Airflow, the run's
downstream tasks; other partitions read only *published* curated partitions, so they go on.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Iterable, Mapping

from lakeforge.config import PipelineConfig, QualityGateSpec
from lakeforge.errors import ConfigError, DataQualityError
from lakeforge.lake import Commit

#: Spark SQL types a raw column may have for each logical field type of the pipeline schema.
FIELD_TYPES = {"string": {"string"}, "int": {"bigint", "int", "smallint", "tinyint"},
               "float": {"double", "float"}, "bool": {"boolean"}, "timestamp": {"timestamp", "timestamp_ntz"}}


@dataclass(frozen=True)
class GateCheck:
    """One rule of the gate with its figures."""

    rule: str  # e.g. max_drop_rate[too_short]
    value: float  # the measured figure
    limit: float  # the threshold
    passed: bool
    message: str  # the rule and the figures, in words

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def check_reasons_known(spec: QualityGateSpec, reasons: Iterable[str]) -> None:
    """A ``max_drop_rate`` key that no step of the chain can emit is a typo: fail before running."""
    known = set(reasons)
    unknown = sorted(k for k in spec.max_drop_rate if k != "*" and k not in known)
    if unknown:
        raise ConfigError(f"quality_gate.max_drop_rate names reasons no curate step emits: {unknown};"
                          f" the chain's reasons are {sorted(known)}")


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def evaluate(spec: QualityGateSpec, *, rows_in: int, rows_out: int, counts: Mapping[str, int],
             raw: Commit | None = None, pipeline: PipelineConfig | None = None,
             raw_types: Mapping[str, str] | None = None) -> list[GateCheck]:
    """Every check of the gate, passed or not.

    Args:
        rows_in / rows_out: rows before and after the chain.
        counts: dropped rows per reason.
        raw: the raw commit (quarantine counts, schema version); None skips those checks.
        pipeline: the pipeline (its declared fields and schema version) for the schema check.
        raw_types: column -> Spark SQL type of the raw partition's files.
    """
    checks = []
    checks.append(GateCheck("min_rows", rows_out, spec.min_rows, rows_out >= spec.min_rows,
                            f"min_rows: {rows_out:,} curated rows, at least {spec.min_rows:,} required"))
    for reason, n in sorted(counts.items()):
        limit = spec.max_drop_rate.get(reason, spec.max_drop_rate.get("*"))
        if limit is None:
            continue
        rate = n / rows_in if rows_in else 0.0
        checks.append(GateCheck(f"max_drop_rate[{reason}]", rate, limit, rate <= limit,
                                f"max_drop_rate[{reason}]: {n:,} of {rows_in:,} input rows dropped ({_pct(rate)}),"
                                f" limit {_pct(limit)}"))
    total = sum(counts.values())
    rate = total / rows_in if rows_in else 0.0
    checks.append(GateCheck("max_total_drop_rate", rate, spec.max_total_drop_rate, rate <= spec.max_total_drop_rate,
                            f"max_total_drop_rate: {total:,} of {rows_in:,} input rows dropped ({_pct(rate)}),"
                            f" limit {_pct(spec.max_total_drop_rate)}"))
    if raw is not None:
        quarantined = sum(raw.quarantined.values())
        records = raw.rows + quarantined
        share = quarantined / records if records else 0.0
        checks.append(GateCheck("max_quarantine_share", share, spec.max_quarantine_share,
                                share <= spec.max_quarantine_share,
                                f"max_quarantine_share: {quarantined:,} of {records:,} records quarantined at ingest"
                                f" ({_pct(share)}; {dict(raw.quarantined)}), limit {_pct(spec.max_quarantine_share)}"))
    if spec.check_schema and raw is not None and pipeline is not None:
        problems = []
        if raw.schema_version != pipeline.schema_version:
            problems.append(f"schema_version {raw.schema_version} != pipeline's {pipeline.schema_version}")
        if raw_types is not None:
            for fld in pipeline.fields:
                got = raw_types.get(fld.name)
                if got is None:
                    problems.append(f"column {fld.name!r} missing")
                elif got not in FIELD_TYPES[fld.type]:
                    problems.append(f"column {fld.name!r} is {got}, pipeline says {fld.type}")
        checks.append(GateCheck("schema", len(problems), 0, not problems,
                                "schema: " + ("; ".join(problems) if problems else "matches the pipeline")))
    return checks


def enforce(checks: Iterable[GateCheck], where: str, report: str | None = None) -> None:
    """Raise DataQualityError listing every failed check (``where``: pipeline and partition)."""
    failed = [c for c in checks if not c.passed]
    if failed:
        see = f" Report: {report}" if report else ""
        raise DataQualityError(f"quality gate failed for {where}, not publishing: "
                               + "; ".join(c.message for c in failed) + "." + see)
