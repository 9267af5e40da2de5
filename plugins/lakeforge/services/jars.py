"""JVM jars that lakeforge needs, resolved from Maven Central into a local cache.

Two jar sets, each described by a tiny POM under ``jvm/<kind>/pom.xml``:

* ``kafka`` — the Apache Kafka 4.x broker (``java -cp <kafka_classpath()> kafka.Kafka …``);
* ``iceberg`` — Iceberg's Spark runtime, its S3FileIO (``iceberg-aws-bundle``) and the JDBC
  drivers of the catalog (PostgreSQL; SQLite for a local lake), handed to Spark (:func:`spark_jars`).

Benchmarks may need more (:data:`ON_DEMAND_KINDS`, e.g. ``kafka-connect``, a Kafka Connect worker with
Iceberg's sink for ``bench/iceberg_sink.py``): :func:`resolve` and :func:`jars` take those too, on
first use, but :func:`resolve_all` (``make setup``) leaves them out.

``mvn dependency:copy-dependencies`` copies each set into ``$LAKEFORGE_JAR_CACHE/<kind>/``
(default ``<repo>/.cache/jars``). A marker file beside the jars stores the POM's sha256: a resolve
is skipped while it matches and redone when the POM changes. ``python -m lakeforge.services.jars``
resolves both sets (``make setup`` runs it).
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import re
import shutil
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

from lakeforge.config import REPO_ROOT
from lakeforge.errors import PrerequisiteError

#: The jar sets we know, each with its POM at ``jvm/<kind>/pom.xml``.
KINDS: tuple[str, ...] = ("kafka", "iceberg")
#: Jar sets resolved only when something asks for them (benchmarks), never by :func:`resolve_all`.
ON_DEMAND_KINDS: tuple[str, ...] = ("kafka-connect",)
JVM_DIR = REPO_ROOT / "jvm"
#: Name of the marker file written (last) into a resolved jar directory: the POM's sha256.
MARKER = ".pom.sha256"
MIN_JAVA = 17
INSTALL_HINT = "apt-get install openjdk-17-jdk-headless maven"

_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def jar_cache() -> Path:
    """Root of the jar cache: ``$LAKEFORGE_JAR_CACHE`` or ``<repo>/.cache/jars``."""
    return Path(os.environ.get("LAKEFORGE_JAR_CACHE") or REPO_ROOT / ".cache" / "jars").resolve()


def pom_path(kind: str) -> Path:
    """The POM that describes jar set ``kind`` (one of :data:`KINDS` or :data:`ON_DEMAND_KINDS`)."""
    if kind not in KINDS + ON_DEMAND_KINDS:
        raise ValueError(f"unknown jar set {kind!r}: expected one of {KINDS + ON_DEMAND_KINDS}")
    return JVM_DIR / kind / "pom.xml"


def jar_dir(kind: str) -> Path:
    """Where the jars of ``kind`` are copied: ``jar_cache()/<kind>``."""
    pom_path(kind)  # validates kind
    return jar_cache() / kind


def pom_sha256(kind: str) -> str:
    """sha256 of the POM of ``kind`` (what the marker stores)."""
    return hashlib.sha256(pom_path(kind).read_bytes()).hexdigest()


def is_resolved(kind: str) -> bool:
    """True when ``jar_dir(kind)`` holds jars copied from the current POM (marker matches)."""
    d = jar_dir(kind)
    try:
        marker = (d / MARKER).read_text().strip()
    except FileNotFoundError:
        return False
    return marker == pom_sha256(kind) and any(d.glob("*.jar"))


# -- prerequisites ---------------------------------------------------------------------------


def java_executable() -> str | None:
    """The ``java`` to run: ``$JAVA_HOME/bin/java`` when set, else the one on PATH."""
    home = os.environ.get("JAVA_HOME")
    if home and os.access(Path(home) / "bin" / "java", os.X_OK):
        return str(Path(home) / "bin" / "java")
    return shutil.which("java")


_JAVA_MAJOR: dict[str, int] = {}


def java_major(java: str) -> int | None:
    """Major version of a ``java`` executable (``1.8`` -> 8, ``17.0.15`` -> 17), None if unknown.

    Known answers are cached: the supervisor builds the Kafka service (and so asks) on every liveness
    check, and each ask starts a JVM, which took longer than the 30 s timeout on a machine at load 45.
    """
    if java in _JAVA_MAJOR:
        return _JAVA_MAJOR[java]
    try:
        out = subprocess.run([java, "-version"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    m = re.search(r'version "(\d+)(?:\.(\d+))?', out.stderr + out.stdout)
    if not m:
        return None
    major = int(m.group(1))
    _JAVA_MAJOR[java] = int(m.group(2) or 0) if major == 1 else major
    return _JAVA_MAJOR[java]


def check_prerequisites(maven: bool = True) -> str:
    """Check that Java >= 17 (and Maven, when ``maven``) are installed; return the java path.

    Raises:
        PrerequisiteError: one line naming what is missing and how to install it.
    """
    problems: list[str] = []
    java = java_executable()
    if java is None:
        problems.append("java not found (PATH, $JAVA_HOME)")
    else:
        major = java_major(java)
        if major is None or major < MIN_JAVA:
            problems.append(f"{java} is Java {major or 'of unknown version'}, need >= {MIN_JAVA}")
    if maven and shutil.which("mvn") is None:
        problems.append("mvn not found on PATH")
    if problems:
        need = f"Java >= {MIN_JAVA}" + (" and Maven" if maven else "")
        raise PrerequisiteError(f"{need} required: {'; '.join(problems)}; install with `{INSTALL_HINT}`")
    assert java is not None
    return java


# -- resolving ---------------------------------------------------------------------------------


@contextmanager
def _lock(kind: str) -> Iterator[None]:
    """Serialize resolves of one jar set across processes (parallel Airflow tasks, tests)."""
    cache = jar_cache()
    cache.mkdir(parents=True, exist_ok=True)
    with open(cache / f".{kind}.lock", "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def mvn_command(kind: str, output_dir: Path) -> list[str]:
    """The Maven command line that copies the jars of ``kind`` into ``output_dir``."""
    return [
        "mvn", "-q", "-B", "-Dstyle.color=never",
        "-f", str(pom_path(kind)),
        "dependency:copy-dependencies",
        f"-DoutputDirectory={output_dir}",
    ]


def resolve(kind: str, force: bool = False) -> Path:
    """Copy the jars of ``kind`` into ``jar_dir(kind)`` unless already there; return that dir.

    Idempotent: skipped while the marker matches the POM's sha256. The jars are copied into a
    temporary sibling directory that replaces the old one, and the marker is written last, so an
    interrupted resolve never looks complete.

    Args:
        kind: one of :data:`KINDS` or :data:`ON_DEMAND_KINDS`.
        force: resolve even when the marker matches.

    Raises:
        PrerequisiteError: Java/Maven missing, or Maven failed (message ends with its output tail).
    """
    target = jar_dir(kind)
    if not force and is_resolved(kind):
        return target
    with _lock(kind):
        if not force and is_resolved(kind):  # another process did it while we waited
            return target
        check_prerequisites(maven=True)
        digest = pom_sha256(kind)
        tmp = target.with_name(f".{kind}.tmp-{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        proc = subprocess.run(
            mvn_command(kind, tmp), capture_output=True, text=True, cwd=str(pom_path(kind).parent)
        )
        if proc.returncode != 0 or not any(tmp.glob("*.jar")):
            shutil.rmtree(tmp, ignore_errors=True)
            out = _ANSI.sub("", proc.stdout + proc.stderr).strip().splitlines()
            tail = "\n".join(line for line in out[-30:] if line.strip())
            raise PrerequisiteError(
                f"resolving the {kind} jars failed: `{' '.join(mvn_command(kind, tmp))}` exited "
                f"{proc.returncode}; Maven Central must be reachable. Maven said:\n{tail}"
            )
        (tmp / MARKER).write_text(digest + "\n")
        old = target.with_name(f".{kind}.old-{os.getpid()}")
        if target.exists():
            target.rename(old)
        tmp.rename(target)
        shutil.rmtree(old, ignore_errors=True)
    return target


def jars(kind: str) -> list[Path]:
    """The jar files of ``kind``, sorted by name (resolving first when needed)."""
    return sorted(resolve(kind).glob("*.jar"))


def kafka_classpath() -> str:
    """Classpath of the Kafka broker and its tools (``os.pathsep``-joined jar paths)."""
    return os.pathsep.join(str(p) for p in jars("kafka"))


def spark_jars() -> list[Path]:
    """The jars every Spark job gets: Iceberg (the lake's tables, their S3FileIO, the catalog's JDBC
    drivers)."""
    return jars("iceberg")


def cache_size(kind: str) -> int:
    """Bytes taken by the resolved jars of ``kind`` (0 when not resolved)."""
    d = jar_dir(kind)
    return sum(p.stat().st_size for p in d.glob("*.jar")) if d.exists() else 0


def resolve_all(progress: Callable[[str], None] | None = None, force: bool = False) -> dict[str, Path]:
    """Resolve every jar set; ``progress`` gets one line per step. Returns kind -> jar dir."""
    say = progress or (lambda line: None)
    out: dict[str, Path] = {}
    for kind in KINDS:
        if not force and is_resolved(kind):
            say(f"jars: {kind} up to date in {jar_dir(kind)} ({cache_size(kind) / 2**20:.0f} MiB)")
            out[kind] = jar_dir(kind)
            continue
        pom = pom_path(kind)
        shown = pom.relative_to(REPO_ROOT) if pom.is_relative_to(REPO_ROOT) else pom
        say(f"jars: resolving {kind} from {shown} with Maven …")
        t0 = time.monotonic()
        out[kind] = resolve(kind, force=force)
        n = len(list(out[kind].glob("*.jar")))
        say(f"jars: {kind}: {n} jars, {cache_size(kind) / 2**20:.0f} MiB in {time.monotonic() - t0:.1f}s"
            f" -> {out[kind]}")
    return out


def main(argv: list[str] | None = None) -> int:
    """``python -m lakeforge.services.jars [--force]``: resolve every jar set, print progress."""
    args = sys.argv[1:] if argv is None else argv
    try:
        resolve_all(progress=lambda line: print(line, flush=True), force="--force" in args)
    except PrerequisiteError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
