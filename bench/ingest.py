"""Benchmark: lakeforge's Kafka -> S3 landing beside kcat consuming the same topic to /dev/null.

In one run, on the embedded Kafka broker and S3 store (its own state dir, only PostgreSQL, S3 and
Kafka started):

1. produce ``--records`` movie-review events (~1.1 KB of JSON each, the default fault rates) into
   one day of a 3-partition topic, and ``--big`` events into a second topic;
2. ``--trials`` times, alternating so all see the same machine load: ``kcat -C -e`` reads the
   whole first topic to /dev/null; ``lakeforge ingest --force`` lands the same records (parse,
   validate, quarantine, Parquet zstd to S3, Iceberg commits) in a fresh process; and a *floor*, the least
   any landing to this S3 store does: ``kcat | zstd -1 | upload`` (the values as they are, compressed
   at Parquet's default zstd level, streamed to one S3 object; no parsing, no columns);
3. land the first topic once more with Apache Iceberg's Kafka Connect sink (``bench/iceberg_sink.py``:
   a standalone Connect worker from Apache Kafka's jars, the sink committing to a table of the same
   catalog and S3 store every 10 s, offsets in the snapshot summary through its transactional control
   topic) — the field's standard way to land Kafka exactly once in Iceberg;
4. land the big topic once, for the peak RSS at 4x the records (memory must not grow with them);
5. write ``bench/results/ingest.json``: medians and every trial, ``iceberg_sink_msgs_per_s``,
   ``ratio_vs_iceberg_sink`` (lakeforge's rate over the sink's) and ``ratio_vs_floor``.

Rates are records consumed per second of each command's wall time (process start to exit, so
lakeforge's Python start-up counts against it); ``lakeforge_in_run_msgs_per_s`` is the landing's
own figure from its commit. Peak RSS is the landing process's ``ru_maxrss``. Absolute figures on a
shared 2-core machine are noise; read the ratios.

``cpu_s`` says where the machine's time went in each command's window: CPU seconds of the command
itself (its rusage), of the Kafka broker and of the S3 server (their processes' counters before and
after), and ``busy``, the share of all cores' time those three used. kcat only reads; the landing
also makes the S3 server take ~460 MB of Parquet (it hashes every byte twice, MD5 for the ETags), so
the servers' share belongs to the comparison: on one machine the landing pays for them.
``floor_ratio`` is the floor's rate over kcat's: no landing into this S3 store on this machine can
beat it by much, so it says how much of the goal the machine leaves reachable.

    .venv/bin/python bench/ingest.py [--records 1000000] [--big 4000000] [--trials 3] [--no-sink]

Needs ``kcat`` and ``zstd`` (Debian: ``apt-get install kcat zstd``).
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import typer
import yaml

REPO = Path(__file__).resolve().parents[1]
END = datetime(2026, 11, 20, tzinfo=timezone.utc)  # the records' event times fill the day before
DAY = (END - timedelta(days=1)).strftime("%Y-%m-%d")


def pipeline_file(tmp: Path, name: str) -> Path:
    spec = yaml.safe_load((REPO / "pipelines" / "movie_reviews.yaml").read_text())
    spec.update(name=name, topic=f"{name}.events", stages=["land"])
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def ensure_topic(settings, path: Path, records: int, seed: int) -> dict:
    """Produce ``records`` events unless the topic holds exactly that many (a rerun reuses them)."""
    from lakeforge.config import PipelineConfig
    from lakeforge.ingest import topic_size
    from lakeforge.produce import ProduceConfig, produce

    topic = PipelineConfig.load(path).topic
    have = topic_size(settings, topic)
    if have == records:
        return {"topic": topic, "records": records, "reused": True}
    if have:
        raise SystemExit(f"topic {topic} holds {have} events, not {records}: remove the bench state dir")
    print(f"producing {records:,} events into {topic} …", flush=True)
    return produce(ProduceConfig(pipeline=str(path), records=records, days=1, end=END, seed=seed, write_truth=False),
                   settings, progress=lambda n, total: print(f"  sent {n:,}/{total:,}", flush=True))


def server_cpu(home: Path) -> dict[str, float]:
    """CPU seconds the Kafka broker and the S3 server (with their child processes) have used so far."""
    import psutil

    used = {}
    for name, label in (("kafka", "broker"), ("s3", "s3_server")):
        root = psutil.Process(int((home / "run" / f"{name}.pid").read_text().strip()))
        times = [p.cpu_times() for p in (root, *root.children(recursive=True))]
        used[label] = sum(t.user + t.system for t in times)
    return used


class Timed:
    """A pipeline's wall seconds, peak RSS (MiB, largest command), CPU seconds, stdout, and the
    servers' CPU meanwhile."""

    def __init__(self, home: Path, cmds: list[list[str]], env: dict, stdout=subprocess.PIPE):
        before = server_cpu(home)
        self.wall, self.rss, self.cpu, self.out = run_timed(cmds, env, stdout)
        after = server_cpu(home)
        self.cpu_s = {"command": round(self.cpu, 2), **{k: round(after[k] - before[k], 2) for k in after}}
        self.cpu_s["busy"] = round(sum(self.cpu_s.values()) / (self.wall * os.cpu_count()), 3)


def run_timed(cmds: list[list[str]], env: dict, stdout=subprocess.PIPE) -> tuple[float, int, float, str]:
    """(wall seconds, peak RSS in MiB, CPU seconds, stdout of the last) of a pipeline of commands."""
    import tempfile

    with tempfile.TemporaryFile() as err:
        t0 = time.perf_counter()
        procs: list[subprocess.Popen] = []
        for i, cmd in enumerate(cmds):
            last = i == len(cmds) - 1
            procs.append(subprocess.Popen(cmd, env=env, stdin=procs[-1].stdout if procs else None,
                                          stdout=stdout if last else subprocess.PIPE, stderr=err))
            if len(procs) > 1:
                procs[-2].stdout.close()  # the next command holds it now
        out = procs[-1].stdout.read().decode() if stdout == subprocess.PIPE else ""
        rss, cpu = 0, 0.0
        for proc in procs:
            _, status, usage = os.wait4(proc.pid, 0)  # this child's own rusage (peak RSS, CPU)
            proc.returncode = os.waitstatus_to_exitcode(status)
            rss, cpu = max(rss, usage.ru_maxrss // 1024), cpu + usage.ru_utime + usage.ru_stime
        wall = time.perf_counter() - t0
        failed = [p for p in procs if p.returncode != 0]
        if failed:
            err.seek(0)
            raise SystemExit(f"{failed[0].args[:4]} failed ({failed[0].returncode}):\n{err.read().decode()[-3000:]}")
    return wall, rss, cpu, out


# streams stdin into one S3 object through the lake's own S3 client (pyarrow's, as the landing uses)
UPLOAD_STDIN = """
import sys
from lakeforge.config import Settings
from lakeforge.lake import Lake
lake = Lake(Settings.load())
with lake.fs.open_output_stream(lake.arrow_path(sys.argv[1])) as out:
    while chunk := sys.stdin.buffer.read(8 << 20):
        out.write(chunk)
"""


def kcat_cmd(bootstrap: str, topic: str) -> list[str]:
    return ["kcat", "-C", "-b", bootstrap, "-t", topic, "-o", "beginning", "-e", "-q"]


def kcat(home: Path, bootstrap: str, topic: str, env: dict) -> Timed:
    with open(os.devnull, "wb") as devnull:
        return Timed(home, [kcat_cmd(bootstrap, topic)], env, stdout=devnull)


def floor(home: Path, bootstrap: str, topic: str, env: dict) -> Timed:
    """kcat | zstd -1 | one S3 object: consuming, compressing and storing, nothing else."""
    with open(os.devnull, "wb") as devnull:
        return Timed(home, [kcat_cmd(bootstrap, topic), ["zstd", "-1", "-T1", "-q", "-c"],
                            [sys.executable, "-c", UPLOAD_STDIN, f"bench/floor/{topic}.zst"]], env, stdout=devnull)


def iceberg_sink_module():
    """bench/iceberg_sink.py as a module (bench/ is no package)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("bench_iceberg_sink", REPO / "bench" / "iceberg_sink.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def land(home: Path, path: Path, env: dict) -> tuple[Timed, dict]:
    run = Timed(home, [[sys.executable, "-m", "lakeforge.cli", "ingest", "--pipeline", str(path), "--partition", DAY,
                        "--force"]], env)
    return run, json.loads(run.out.strip().splitlines()[-1])


def main(records: int = typer.Option(1_000_000, help="events for the kcat comparison"),
         big: int = typer.Option(4_000_000, help="events for the memory check (0: skip)"),
         trials: int = typer.Option(3, help="alternating kcat / lakeforge runs"),
         sink: bool = typer.Option(True, help="also land the topic with Iceberg's Kafka Connect sink"),
         home: Path = typer.Option(REPO / ".lakeforge-bench-ingest", help="state dir of the benchmark"),
         keep: bool = typer.Option(False, help="keep services and data afterwards (reruns reuse the topics)"),
         out: Path = typer.Option(REPO / "bench" / "results" / "ingest.json")) -> None:
    for tool in ("kcat", "zstd"):
        if not shutil.which(tool):
            raise SystemExit(f"{tool} not found: apt-get install {tool}")
    os.environ["LAKEFORGE_HOME"] = str(home)
    from lakeforge import code_version
    from lakeforge.config import Settings
    from lakeforge.services.supervisor import Supervisor

    sup = Supervisor(home)
    sup.up(progress=print, only=("postgres", "s3", "kafka"))
    settings = Settings.load(home=home)
    env = {**os.environ, **sup.writer_env(), "LAKEFORGE_HOME": str(home)}
    tmp = home / "bench-pipelines"
    tmp.mkdir(parents=True, exist_ok=True)
    small, large = pipeline_file(tmp, "bench_ingest_1m"), pipeline_file(tmp, "bench_ingest_4m")
    try:
        produced = ensure_topic(settings, small, records, seed=1)
        topic = yaml.safe_load(small.read_text())["topic"]
        runs = []
        for i in range(trials):
            k = kcat(home, settings.kafka_bootstrap, topic, env)
            lf, m = land(home, small, env)
            fl = floor(home, settings.kafka_bootstrap, topic, env)
            scanned = m["rows"] + m["quarantined_total"]
            assert scanned == records, f"lakeforge read {scanned} of {records} records"
            runs.append({"kcat_s": round(k.wall, 3), "lakeforge_s": round(lf.wall, 3),
                         "lakeforge_in_run_s": m["seconds"], "peak_rss_mb": lf.rss, "rows": m["rows"],
                         "quarantined": m["quarantined_total"], "floor_s": round(fl.wall, 3),
                         "kcat_cpu_s": k.cpu_s, "lakeforge_cpu_s": lf.cpu_s, "floor_cpu_s": fl.cpu_s,
                         "load_avg": os.getloadavg()[0]})
            print(f"trial {i + 1}: kcat {records / k.wall:,.0f} msgs/s, lakeforge {records / lf.wall:,.0f} msgs/s "
                  f"(in run {m['msgs_per_s']:,}), floor {records / fl.wall:,.0f} msgs/s, peak RSS {lf.rss} MiB; "
                  f"CPU s kcat {k.cpu_s}, lakeforge {lf.cpu_s}, floor {fl.cpu_s}", flush=True)
        sink_run = None
        if sink:
            sink_run = iceberg_sink_module().run_iceberg_sink(
                settings, topic, records, table="bench_ingest_1m.iceberg_sink", timeout_s=max(900.0, records / 500))
            print(f"Iceberg Kafka Connect sink: {sink_run['msgs_per_s']:,} msgs/s ({sink_run['seconds']} s, "
                  f"{sink_run['commits']} commits), peak RSS {sink_run['peak_rss_mib']} MiB", flush=True)
        big_run = None
        if big:
            ensure_topic(settings, large, big, seed=2)
            lf, m = land(home, large, env)
            big_run = {"records": big, "lakeforge_s": round(lf.wall, 3), "peak_rss_mb": lf.rss, "rows": m["rows"],
                       "quarantined": m["quarantined_total"], "cpu_s": lf.cpu_s}
            print(f"{big:,} records: lakeforge {big / lf.wall:,.0f} msgs/s, peak RSS {lf.rss} MiB", flush=True)
    finally:
        if not keep:
            sup.down(progress=print)
    kcat_rate = statistics.median(records / r["kcat_s"] for r in runs)
    lf_rate = statistics.median(records / r["lakeforge_s"] for r in runs)
    floor_rate = statistics.median(records / r["floor_s"] for r in runs)
    rss_1m = statistics.median(r["peak_rss_mb"] for r in runs)
    result = {
        "records": records,
        "kcat_msgs_per_s": round(kcat_rate),
        "lakeforge_msgs_per_s": round(lf_rate),
        "ratio": round(lf_rate / kcat_rate, 3),
        "lakeforge_in_run_msgs_per_s": round(statistics.median(records / r["lakeforge_in_run_s"] for r in runs)),
        "floor_msgs_per_s": round(floor_rate),
        "floor_ratio": round(floor_rate / kcat_rate, 3),
        "iceberg_sink_msgs_per_s": sink_run["msgs_per_s"] if sink_run else None,
        "ratio_vs_iceberg_sink": round(lf_rate / sink_run["msgs_per_s"], 3) if sink_run else None,
        "ratio_vs_floor": round(lf_rate / floor_rate, 3),
        "iceberg_sink": sink_run,
        "peak_rss_mb_1m": rss_1m,
        "peak_rss_mb_4m": big_run["peak_rss_mb"] if big_run else None,
        "rss_ratio_4m_vs_1m": round(big_run["peak_rss_mb"] / rss_1m, 3) if big_run else None,
        "cpu_s": {arm: {k: statistics.median(r[f"{arm}_cpu_s"][k] for r in runs) for k in runs[0][f"{arm}_cpu_s"]}
                  for arm in ("kcat", "lakeforge", "floor")},
        "trials": runs,
        "big": big_run,
        "produced": produced,
        "machine": {"cores": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
        "code_version": code_version(),
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    if not keep:
        shutil.rmtree(home, ignore_errors=True)
    print(json.dumps({k: result[k] for k in ("records", "kcat_msgs_per_s", "lakeforge_msgs_per_s", "ratio",
                                             "floor_ratio", "iceberg_sink_msgs_per_s", "ratio_vs_iceberg_sink",
                                             "ratio_vs_floor", "peak_rss_mb_1m", "peak_rss_mb_4m")}))


if __name__ == "__main__":
    typer.run(main)
