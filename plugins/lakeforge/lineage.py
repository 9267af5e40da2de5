"""Lineage of a model version: registered version -> MLflow run -> features snapshot -> curated
snapshot -> raw snapshot -> Kafka offset ranges (``lakeforge lineage``).

A training run records the features it read as the MLflow tag ``lakeforge.inputs``: the table, the
snapshot that published the partition and the partition. Every lake commit records the snapshots it
read in turn (:attr:`lakeforge.lake.Commit.inputs`), and the raw commit the Kafka offsets it landed,
so the chain is read from the snapshots themselves, whatever was rerun since. Training tags the
chain's snapshots per registered version (:meth:`lakeforge.lake.Lake.keep`), so snapshot expiry keeps
them and the rows stay readable by time travel.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from lakeforge.config import Settings
from lakeforge.errors import ConfigError
from lakeforge.lake import Lake

if TYPE_CHECKING:
    from mlflow.entities.model_registry import ModelVersion
    from mlflow.tracking import MlflowClient


def resolve_version(client: "MlflowClient", spec: str) -> "ModelVersion":
    """The registered version ``spec`` names: ``name@alias``, ``name/version`` or ``name`` (its latest)."""
    if "@" in spec:
        name, alias = spec.split("@", 1)
        return client.get_model_version_by_alias(name, alias)
    if "/" in spec:
        name, version = spec.rsplit("/", 1)
        return client.get_model_version(name, version)
    versions = client.search_model_versions(f"name='{spec}'")
    if not versions:
        raise ConfigError(f"no registered model {spec!r} (or it has no versions)")
    return max(versions, key=lambda v: int(v.version))


def model_lineage(spec: str, settings: Settings | None = None, lake: Lake | None = None) -> dict[str, Any]:
    """The lineage of a registered model version, as a dict (what ``lakeforge lineage --json`` prints).

    Raises:
        ConfigError: no such model / version / alias, or its run recorded no lake inputs.
        PartitionNotPublishedError: a snapshot of the chain is gone (expired without a tag).
    """
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    settings = settings or Settings.load()
    lake = lake or Lake(settings)
    client = MlflowClient(tracking_uri=settings.require("mlflow_uri"))
    try:
        version = resolve_version(client, spec)
        run = client.get_run(version.run_id)
    except MlflowException as exc:
        raise ConfigError(f"{spec}: {exc.message}") from None
    refs = json.loads(run.data.tags.get("lakeforge.inputs") or "[]")
    refs = [r for r in refs if r.get("table")]
    if not refs:
        raise ConfigError(f"{spec}: MLflow run {version.run_id} recorded no lake snapshot (lakeforge.inputs)")
    return {
        "model": version.name, "version": str(version.version), "aliases": list(version.aliases or []),
        "run_id": version.run_id, "run_name": run.info.run_name,
        "code_version": run.data.tags.get("lakeforge.code_version"),
        "inputs": [[c.model_dump(mode="json", exclude={"stats"}) | {"table": c.table} for c in lake.lineage(ref)]
                   for ref in refs],
    }


def render(lineage: dict[str, Any]) -> str:
    """``lineage`` as an indented tree, one line per link."""
    aliases = f" (@{', @'.join(lineage['aliases'])})" if lineage["aliases"] else ""
    lines = [f"{lineage['model']} v{lineage['version']}{aliases}",
             f"  MLflow run {lineage['run_id']} ({lineage['run_name']}, code {lineage['code_version']})"]
    for chain in lineage["inputs"]:
        for depth, c in enumerate(chain):
            pad = "    " + "  " * depth
            lines.append(f"{pad}{c['table']} {c['partition']} @ snapshot {c['snapshot_id']}: {c['rows']:,} rows, "
                         f"run {c['run_id']}, code {c['code_version']}, {c['created_at']}")
            for topic, ranges in sorted(c.get("kafka_offsets", {}).items()):
                spans = ", ".join(f"{tp}: [{a}, {b})" for tp, (a, b) in sorted(ranges.items(), key=lambda i: int(i[0])))
                lines.append(f"{pad}  Kafka {topic} offsets per topic-partition {spans}")
    return "\n".join(lines)
