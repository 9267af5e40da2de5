"""Benchmark: time from nothing to the first served prediction, and peak memory, of `make demo`.

Runs the real demo (services, Kafka, Airflow DAG, Spark, training, MLflow, model server) in its own
state dir from a cold start (services stopped first, data kept so the JVM jars and venv are warm),
then writes bench/results/demo.json. Absolute times on a shared 2-core machine are noisy.

    .venv/bin/python bench/demo.py [--fresh] [--records 2000]
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import sys
import time
from dataclasses import asdict
from pathlib import Path

import typer

REPO = Path(__file__).resolve().parents[1]


def main(fresh: bool = typer.Option(True, help="start from an empty state dir (no data, no services)"),
         records: int = typer.Option(6000, help="events to produce"),
         home: Path = typer.Option(REPO / ".lakeforge-bench", help="state dir used by the benchmark"),
         out: Path = typer.Option(REPO / "bench" / "results" / "demo.json")) -> None:
    os.environ["LAKEFORGE_HOME"] = str(home)
    from lakeforge import code_version
    from lakeforge.demo import run_demo
    from lakeforge.services.supervisor import Supervisor

    sup = Supervisor(home)
    sup.down(progress=lambda *_: None)
    if fresh and home.exists():
        shutil.rmtree(home)
    t0 = time.time()
    try:
        res = run_demo("movie_reviews", records=records, say=print, home=home)
    finally:
        Supervisor(home).down(progress=print)
    result = {
        **asdict(res),
        "fresh_state_dir": fresh,
        "records_produced": records,
        "machine": {"cores": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
        "code_version": code_version(),
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t0)),
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2, default=str))
    print(json.dumps({k: result[k] for k in ("time_to_first_prediction_s", "peak_rss_mb", "services")}))


if __name__ == "__main__":
    sys.exit(typer.run(main))
