"""The ``lakeforge`` command line (typer): services, producer, pipeline files, model server, demo."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from lakeforge.config import DEFAULT_PIPELINE
from lakeforge.errors import LakeforgeError

app = typer.Typer(help="lakeforge: Kafka -> lake -> Spark -> training -> MLflow -> serving, on Airflow 3.",
                  no_args_is_help=True, pretty_exceptions_enable=False)
console = Console(soft_wrap=True)


def _fail(exc: Exception) -> None:
    console.print(f"[red]error:[/red] {exc}", markup=True, highlight=False)
    raise typer.Exit(1)


def _supervisor():
    from lakeforge.services.supervisor import Supervisor

    return Supervisor()


@app.callback()
def _main(verbose: bool = typer.Option(False, "--verbose", "-v", help="debug logging")) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")


@app.command()
def up() -> None:
    """Start (or keep) every embedded service; print endpoints and the Airflow login."""
    sup = _supervisor()
    try:
        endpoints = sup.up(progress=console.print)
    except LakeforgeError as exc:
        _fail(exc)
    user, password = sup.admin_credentials()
    for k, v in endpoints.items():
        console.print(f"  {k:<16} {v}", highlight=False)
    console.print(f"  Airflow login    {user} / {password}", highlight=False)
    console.print(f"  state dir        {sup.state.home}", highlight=False)


@app.command()
def down() -> None:
    """Stop every embedded service started from this state dir."""
    still = _supervisor().down(progress=console.print)
    if still:
        _fail(LakeforgeError(f"ports still listening after down: {still}"))
    console.print("  all stopped; nothing listening on lakeforge's ports")


@app.command()
def status(as_json: bool = typer.Option(False, "--json", help="machine-readable output")) -> None:
    """Show each service: pid, health, endpoint, log file."""
    rows = _supervisor().status()
    if as_json:
        print(json.dumps(rows, indent=2))
        return
    table = Table("service", "pid", "healthy", "endpoint", "log")
    for r in rows:
        table.add_row(r["service"], str(r["pid"] or "-"), "yes" if r["healthy"] else "no", r["endpoint"], r["log"])
    console.print(table)
    if not all(r["healthy"] for r in rows):
        raise typer.Exit(3)


@app.command()
def logs(service: Optional[str] = typer.Argument(None, help="service name (default: list log files)"),
         lines: int = typer.Option(50, "-n", help="lines to show"),
         follow: bool = typer.Option(False, "-f", help="follow the log")) -> None:
    """Show a service's log (or list them)."""
    sup = _supervisor()
    if not service:
        for name in sup.service_names():
            console.print(f"  {name:<22} {sup.service(name).log_path}", highlight=False)
        return
    if service not in sup.service_names():
        _fail(LakeforgeError(f"unknown service {service!r}; known: {sup.service_names()}"))
    path = sup.service(service).log_path
    cmd = ["tail", f"-n{lines}"] + (["-F"] if follow else []) + [str(path)]
    raise typer.Exit(subprocess.call(cmd))


@app.command()
def env() -> None:
    """Print the LAKEFORGE_* variables of the running services (``eval $(lakeforge env)``)."""
    for k, v in _supervisor().writer_env().items():
        print(f"export {k}='{v}'")


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True, "help_option_names": []})
def airflow(ctx: typer.Context) -> None:
    """Run the airflow CLI against lakeforge's Airflow, e.g. `lakeforge airflow backfill create --dag-id …`."""
    import os

    env = {**os.environ, **_supervisor().airflow_env()}
    cmd = [str(Path(sys.executable).parent / "airflow"), *ctx.args]
    if ctx.args[:2] not in (["dags", "pause"], ["dags", "unpause"]) or any(a.startswith("-o") or a == "--output"
                                                                           for a in ctx.args):
        raise typer.Exit(subprocess.call(cmd, env=env))
    # Airflow's `dags pause/unpause` prints each DAG's state from *before* the change: ask for JSON and
    # print the state after it
    out = subprocess.run([*cmd, "--output", "json"], env=env, stdout=subprocess.PIPE, text=True)
    print(pause_report(ctx.args[1] == "pause", out.stdout))
    raise typer.Exit(out.returncode)


def pause_report(paused: bool, stdout: str) -> str:
    """What ``airflow dags pause|unpause --output json`` did, as the DAGs' states after it."""
    state = "paused" if paused else "unpaused"
    lines = [line for line in stdout.splitlines() if line.startswith("[{") or line.strip() == "[]"]  # not the logs
    try:
        changed = json.loads(lines[-1]) if lines else []
    except ValueError:
        return stdout.strip()
    if not changed:  # Airflow: "No paused DAGs were found"
        return f"nothing changed: no matching DAG was {'un' if paused else ''}paused ({stdout.strip()})"
    return "\n".join(f"{row['dag_id']}: {state}" for row in changed)


@app.command()
def produce(pipeline: str = typer.Option(DEFAULT_PIPELINE, help="pipeline name or YAML path"),
            from_: Optional[Path] = typer.Option(None, "--from", help="file to replay: CSV, JSON lines, Parquet, or a "
                                                                      "folder per label (default: the YAML's `source:`)"),
            fmt: Optional[str] = typer.Option(None, "--format", help="csv, jsonl, parquet or folders (default: by "
                                                                    "suffix; a directory: folders)"),
            map_: list[str] = typer.Option([], "--map", help="FIELD=COLUMN: the file's column for a pipeline field, "
                                                             "over the YAML's `source.columns` (repeatable)"),
            encoding: Optional[str] = typer.Option(None, help="text encoding of --from (default: the YAML source's, "
                                                              "else utf-8)"),
            records: int = typer.Option(2000, help="events to send (the file's rows cycle if fewer)"),
            days: int = typer.Option(3, help="spread event times over the N days before --end"),
            end: Optional[str] = typer.Option(None, help="end of the event-time range, YYYY-MM-DD[THH:MM] UTC "
                                                        "(default: now); replays historical days for a backfill"),
            seed: int = typer.Option(7, help="RNG seed (same seed, same events)"),
            no_faults: bool = typer.Option(False, "--no-faults", help="send clean events only"),
            fault: list[str] = typer.Option([], "--fault", "--faults", help="override one fault rate, e.g. --fault "
                                                                            "html=0.1 (repeatable)"),
            truth: Optional[Path] = typer.Option(None, help="ground-truth JSONL path"),
            no_truth: bool = typer.Option(False, "--no-truth", help="write no ground truth (millions of records)")) -> None:
    """Replay a labelled file into the pipeline's topic as JSON events (with injected faults); write the ground truth."""
    from datetime import datetime, timezone

    from lakeforge.config import PipelineConfig, SourceSpec
    from lakeforge.produce import FaultRates, ProduceConfig, parse_fault_overrides
    from lakeforge.produce import produce as do_produce

    try:
        base = FaultRates.none() if no_faults else FaultRates()
        faults = base.model_copy(update=parse_fault_overrides(fault))
        end_at = None
        if end:
            try:
                end_at = datetime.fromisoformat(end).replace(tzinfo=timezone.utc)
            except ValueError:
                raise LakeforgeError(f"bad --end {end!r}: expected YYYY-MM-DD or YYYY-MM-DDTHH:MM") from None
        columns = {}
        for item in map_:
            name, sep, column = item.partition("=")
            if not sep or not name.strip() or not column:
                raise LakeforgeError(f"bad --map {item!r}: expected FIELD=COLUMN, e.g. --map text=body")
            columns[name.strip()] = column
        source = None
        if from_ is not None:
            if not from_.exists():
                raise LakeforgeError(f"--from {from_}: no such file or folder")
            yaml_source = PipelineConfig.load(pipeline).source
            source = SourceSpec(path=str(from_.resolve()), format=fmt,
                                encoding=encoding or (yaml_source.encoding if yaml_source else "utf-8"))
        elif fmt or encoding:
            raise LakeforgeError("--format and --encoding describe a --from file: give --from FILE too")
        cfg = ProduceConfig(pipeline=pipeline, records=records, days=days, end=end_at, seed=seed, faults=faults,
                            truth_path=truth, write_truth=not no_truth, source=source, columns=columns)
        summary = do_produce(cfg, progress=lambda n, total: console.print(f"  sent {n:,}/{total:,}"))
    except LakeforgeError as exc:
        _fail(exc)
    print(json.dumps(summary))


pipeline_app = typer.Typer(help="Pipeline YAMLs: write a starter one from a labelled file, check one.",
                           no_args_is_help=True)
app.add_typer(pipeline_app, name="pipeline")


@pipeline_app.command("new")
def pipeline_new(name: str = typer.Argument(..., help="pipeline name (letters, digits, _)"),
                 from_: Path = typer.Option(..., "--from", help="labelled file: CSV, JSON lines, Parquet, or a "
                                                                "folder per label"),
                 fmt: Optional[str] = typer.Option(None, "--format", help="csv, jsonl, parquet or folders (default: "
                                                                          "by suffix; a directory: folders)"),
                 rows: int = typer.Option(1000, help="rows sampled for the guesses"),
                 out: Optional[Path] = typer.Option(None, help="where to write (default: pipelines/NAME.yaml)"),
                 force: bool = typer.Option(False, "--force", help="overwrite --out if it exists"),
                 text: Optional[str] = typer.Option(None, help="the text column (default: guessed)"),
                 label: Optional[str] = typer.Option(None, help="the label column (default: guessed)")) -> None:
    """Write a starter pipeline YAML for a labelled file: field roles, labels, cleaning chain, model, source."""
    from lakeforge.scaffold import new_pipeline

    try:
        made = new_pipeline(name, from_, fmt=fmt, rows=rows, out=out, force=force, text=text, label=label)
    except LakeforgeError as exc:
        _fail(exc)
    cfg = made.config
    console.print(f"wrote {made.path}", highlight=False)
    for role in ("text", "label", "id", "event_time"):
        console.print(f"  {role:<11} {made.roles[role] or '-':<20} {made.notes[role]}", highlight=False, markup=False)
    console.print(f"  labels      {cfg.labels}", highlight=False, markup=False)
    console.print(f"check the guesses, then: lakeforge pipeline check {made.path}; "
                  f"lakeforge produce --pipeline {made.path}", highlight=False)


@pipeline_app.command("check")
def pipeline_check(pipeline: str = typer.Argument(..., help="pipeline name or YAML path")) -> None:
    """Validate a pipeline YAML: schema, roles, labels, curate steps and their params; list every problem."""
    from lakeforge.config import PipelineConfig
    from lakeforge.scaffold import check_pipeline, pipeline_path, summary

    problems = check_pipeline(pipeline)
    if problems:
        console.print(f"[red]{len(problems)} problem(s)[/red] in {pipeline_path(pipeline)}:", highlight=False)
        for p in problems:
            console.print(f"  - {p}", highlight=False, markup=False)
        raise typer.Exit(1)
    print(summary(PipelineConfig.load(pipeline_path(pipeline))))


@app.command()
def ingest(pipeline: str = typer.Option(DEFAULT_PIPELINE, help="pipeline name or YAML path"),
           partition: str = typer.Option(..., help="YYYY-MM-DD (or YYYY-MM-DDTHH for hourly pipelines)"),
           force: bool = typer.Option(False, "--force", help="land even if the topic has not passed end + lateness"),
           accept_retention_loss: bool = typer.Option(
               False, "--accept-retention-loss",
               help="land even if Kafka retention deleted records that may be this partition's (recorded)"),
           run_id: Optional[str] = typer.Option(None, help="run id (default: generated)")) -> None:
    """Land one partition from Kafka into the lake (what the DAG's land_events task runs)."""
    from lakeforge.ingest import IngestOptions, run
    from lakeforge.stage.run import StageRun, summarize

    try:
        stage = StageRun.create(pipeline, partition, run_id)
        options = IngestOptions(force=force, accept_retention_loss=accept_retention_loss)
        m = run(stage, options, progress=lambda msg: Console(stderr=True).print(f"[dim]{msg}[/dim]"))
    except LakeforgeError as exc:
        _fail(exc)
    print(json.dumps(summarize(m, stage.lake)))


@app.command()
def lineage(model: str = typer.Argument(..., help="registered model: NAME (latest version), NAME@ALIAS or NAME/VERSION"),
            as_json: bool = typer.Option(False, "--json", help="machine-readable output")) -> None:
    """What a model version was trained on: MLflow run -> features -> curated -> raw snapshots -> Kafka offsets."""
    from lakeforge.lineage import model_lineage, render

    try:
        found = model_lineage(model)
    except LakeforgeError as exc:
        _fail(exc)
    print(json.dumps(found, default=str) if as_json else render(found))


@app.command()
def serve(host: str = typer.Option("127.0.0.1"), port: int = typer.Option(8000),
          model: Optional[str] = typer.Option(None, help="default pipeline of /v1/predict: a pipeline or registered "
                                                         "model name (default: LAKEFORGE_SERVE_MODEL, else the only "
                                                         "pipeline)"),
          tracking_uri: Optional[str] = typer.Option(None, help="MLflow URI (default: LAKEFORGE_MLFLOW_URI)")) -> None:
    """Run the model server: every pipeline's MLflow `champion` at /v1/models/<pipeline>/predict, hot-swapped."""
    from lakeforge.config import Settings
    from lakeforge.serve import main

    settings = Settings.load()
    main(host=host, port=port, model_name=model, tracking_uri=tracking_uri or settings.require("mlflow_uri"))


@app.command()
def demo(pipeline: str = typer.Option(DEFAULT_PIPELINE, help="pipeline name (pipelines/<name>.yaml)"),
         records: int = typer.Option(6000, help="events to produce (about a third land in the trained partition)"),
         days: int = typer.Option(3, help="days of event time"),
         max_steps: Optional[int] = typer.Option(None, help="override training steps"),
         result: Optional[Path] = typer.Option(None, help="write the result JSON here")) -> None:
    """Run the whole chain through Airflow and end with a real prediction."""
    from dataclasses import asdict

    from lakeforge.demo import print_result, run_demo

    try:
        res = run_demo(pipeline, records=records, days=days, max_steps=max_steps, say=console.print)
    except LakeforgeError as exc:
        _fail(exc)
    print_result(res, _supervisor(), say=lambda s: console.print(s, highlight=False, markup=False))
    if result:
        result.parent.mkdir(parents=True, exist_ok=True)
        result.write_text(json.dumps(asdict(res), indent=2))


if __name__ == "__main__":
    app()
