"""Unit tests of the jar cache (lakeforge.services.jars), the Kafka broker config and the
spark-submit arguments. No network, no Maven, no JVM: Maven and java are faked where a test needs them."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from lakeforge.config import Settings
from lakeforge.errors import MissingSecretError, PrerequisiteError
from lakeforge.services import jars
from lakeforge.services.base import State


@pytest.fixture
def jvm_dir(tmp_path, monkeypatch) -> Path:
    """A private jvm/ with two tiny POMs and a private jar cache."""
    d = tmp_path / "jvm"
    for kind in jars.KINDS:
        (d / kind).mkdir(parents=True)
        (d / kind / "pom.xml").write_text(f"<project><!-- {kind} v1 --></project>\n")
    monkeypatch.setattr(jars, "JVM_DIR", d)
    monkeypatch.setenv("LAKEFORGE_JAR_CACHE", str(tmp_path / "cache"))
    return d


def _executable(path: Path, script: str) -> Path:
    path.write_text("#!/bin/sh\n" + script)
    path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return path


@pytest.fixture
def fake_tools(tmp_path, monkeypatch) -> Path:
    """PATH with only a fake `java` (version 17) and a fake `mvn` that 'copies' one jar and
    counts its calls."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    _executable(bin_dir / "java", 'echo \'openjdk version "17.0.15" 2025-04-15\' >&2\n')
    _executable(
        bin_dir / "mvn",
        'for a in "$@"; do case "$a" in -DoutputDirectory=*) out="${a#-DoutputDirectory=}";; esac; done\n'
        f'echo call >> {tmp_path}/mvn-calls\n'
        ': > "$out/fake-1.0.jar"\n',
    )
    monkeypatch.setenv("PATH", str(bin_dir))
    monkeypatch.delenv("JAVA_HOME", raising=False)
    return tmp_path


def _mvn_calls(root: Path) -> int:
    try:
        return len((root / "mvn-calls").read_text().splitlines())
    except FileNotFoundError:
        return 0


# -- cache location -------------------------------------------------------------------------


def test_jar_cache_defaults_to_repo_cache(monkeypatch):
    monkeypatch.delenv("LAKEFORGE_JAR_CACHE", raising=False)
    assert jars.jar_cache() == (jars.REPO_ROOT / ".cache" / "jars").resolve()


def test_jar_cache_from_env(tmp_path, monkeypatch):
    monkeypatch.setenv("LAKEFORGE_JAR_CACHE", str(tmp_path / "c"))
    assert jars.jar_cache() == (tmp_path / "c").resolve()
    assert jars.jar_dir("iceberg") == (tmp_path / "c" / "iceberg").resolve()


@pytest.mark.parametrize("kind", ["flink", "s3a"])  # s3a: Spark loads no Hadoop S3 connector any more
def test_unknown_kind_is_refused(kind):
    with pytest.raises(ValueError, match=f"unknown jar set '{kind}'"):
        jars.pom_path(kind)


def test_real_poms_exist():
    for kind in jars.KINDS:
        assert jars.pom_path(kind).is_file(), kind


def test_bench_only_jar_sets_resolve_on_demand_not_at_setup(tmp_path, monkeypatch):
    monkeypatch.setenv("LAKEFORGE_JAR_CACHE", str(tmp_path / "c"))
    assert "kafka-connect" in jars.ON_DEMAND_KINDS and "kafka-connect" not in jars.KINDS  # setup stays lean
    assert jars.pom_path("kafka-connect").is_file()
    assert jars.jar_dir("kafka-connect") == (tmp_path / "c" / "kafka-connect").resolve()


# -- prerequisites ---------------------------------------------------------------------------


def test_missing_java_and_maven_one_line(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # empty dir: no java, no mvn
    monkeypatch.delenv("JAVA_HOME", raising=False)
    with pytest.raises(PrerequisiteError) as err:
        jars.check_prerequisites()
    msg = str(err.value)
    assert "\n" not in msg
    assert "java not found" in msg and "mvn not found" in msg
    assert "apt-get install openjdk-17-jdk-headless maven" in msg


def test_old_java_is_refused(tmp_path, monkeypatch):
    _executable(tmp_path / "java", 'echo \'java version "1.8.0_392"\' >&2\n')
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.delenv("JAVA_HOME", raising=False)
    with pytest.raises(PrerequisiteError, match=r"Java 8, need >= 17"):
        jars.check_prerequisites(maven=False)


def test_java_only_check_ignores_maven(fake_tools, monkeypatch):
    (fake_tools / "bin" / "mvn").unlink()
    assert jars.check_prerequisites(maven=False).endswith("/java")
    with pytest.raises(PrerequisiteError, match="mvn not found"):
        jars.check_prerequisites(maven=True)


# -- marker logic ------------------------------------------------------------------------------


def test_resolve_is_idempotent_and_redone_when_pom_changes(jvm_dir, fake_tools):
    assert not jars.is_resolved("kafka")
    d = jars.resolve("kafka")
    assert (d / "fake-1.0.jar").exists()
    assert (d / jars.MARKER).read_text().strip() == jars.pom_sha256("kafka")
    assert jars.is_resolved("kafka") and _mvn_calls(fake_tools) == 1

    jars.resolve("kafka")  # marker matches: Maven is not called again
    assert _mvn_calls(fake_tools) == 1

    (jvm_dir / "kafka" / "pom.xml").write_text("<project><!-- kafka v2 --></project>\n")
    assert not jars.is_resolved("kafka")  # POM changed -> stale
    jars.resolve("kafka")
    assert _mvn_calls(fake_tools) == 2 and jars.is_resolved("kafka")

    jars.resolve("kafka", force=True)
    assert _mvn_calls(fake_tools) == 3


def test_marker_without_jars_is_not_resolved(jvm_dir):
    d = jars.jar_dir("iceberg")
    d.mkdir(parents=True)
    (d / jars.MARKER).write_text(jars.pom_sha256("iceberg"))
    assert not jars.is_resolved("iceberg")


def test_classpath_and_spark_jars(jvm_dir, fake_tools):
    cp = jars.kafka_classpath()
    assert cp == str(jars.jar_dir("kafka") / "fake-1.0.jar")
    assert jars.spark_jars() == [jars.jar_dir("iceberg") / "fake-1.0.jar"]  # Iceberg only: no hadoop-aws


def test_maven_failure_shows_its_tail(jvm_dir, fake_tools):
    _executable(fake_tools / "bin" / "mvn", 'echo "[ERROR] Could not resolve org.apache.kafka:kafka_2.13"\nexit 1\n')
    with pytest.raises(PrerequisiteError, match=r"(?s)resolving the kafka jars failed.*Could not resolve"):
        jars.resolve("kafka")
    assert not jars.jar_dir("kafka").exists()  # nothing half-copied is left as "resolved"


def test_resolve_all_prints_progress(jvm_dir, fake_tools):
    lines: list[str] = []
    out = jars.resolve_all(progress=lines.append)
    assert set(out) == set(jars.KINDS)
    assert any("resolving kafka" in line for line in lines)
    lines.clear()
    jars.resolve_all(progress=lines.append)
    assert all("up to date" in line for line in lines) and len(lines) == len(jars.KINDS)


def test_module_main_reports_missing_tools(jvm_dir, tmp_path):
    env = {**os.environ, "PATH": str(tmp_path / "nothing"), "LAKEFORGE_JAR_CACHE": str(tmp_path / "c2")}
    env.pop("JAVA_HOME", None)
    p = subprocess.run([sys.executable, "-m", "lakeforge.services.jars"], env=env,
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 1
    assert "apt-get install openjdk-17-jdk-headless maven" in p.stderr


# -- Kafka broker config -------------------------------------------------------------------------


def test_kafka_server_properties(tmp_path):
    from lakeforge.services.kafka import KafkaService, new_cluster_id

    svc = KafkaService(name="kafka", state=State(tmp_path), port=19092, controller_port=19093)
    props = svc.server_properties()
    assert props["listeners"] == "PLAINTEXT://127.0.0.1:19092,CONTROLLER://127.0.0.1:19093"
    assert props["controller.quorum.voters"] == "1@127.0.0.1:19093"
    assert props["log.dirs"] == str(tmp_path.resolve() / "data" / "kafka" / "logs")
    assert props["log.retention.ms"] == "-1" and props["num.partitions"] == "3"
    assert props["offsets.topic.replication.factor"] == "1"
    assert svc.endpoint() == "127.0.0.1:19092"
    cid = new_cluster_id()
    assert len(cid) == 22 and "=" not in cid


# -- spark-submit arguments ---------------------------------------------------------------------


def _settings(**kw) -> Settings:
    base = dict(home="/tmp/lf-unit", s3_endpoint="http://127.0.0.1:8333",
                s3_access_key_id="AKIDUNIT", s3_secret_access_key="s3cr3t-unit")
    return Settings(**{**base, **kw})


def test_submit_kwargs_keep_secrets_in_env(jvm_dir, fake_tools, monkeypatch):
    from lakeforge.spark import submit_kwargs

    monkeypatch.delenv("LAKEFORGE_SPARK_JARS_MODE", raising=False)
    kw = submit_kwargs(_settings())
    jar = str(jars.jar_dir("iceberg") / "fake-1.0.jar")
    assert kw["driver_class_path"] == jar and "jars" not in kw
    assert kw["conf"]["spark.executor.extraClassPath"] == jar
    assert kw["env_vars"]["LAKEFORGE_S3_SECRET_ACCESS_KEY"] == "s3cr3t-unit"
    assert kw["env_vars"]["PYSPARK_PYTHON"] == sys.executable
    assert kw["conf"]["spark.pyspark.python"] == sys.executable
    assert not any("s3cr3t-unit" in v or "AKIDUNIT" in v for v in kw["conf"].values())
    assert not any(k.startswith("spark.hadoop.fs.s3a.") for k in kw["conf"])  # no Hadoop S3 connector

    monkeypatch.setenv("LAKEFORGE_SPARK_JARS_MODE", "jars")
    kw = submit_kwargs(_settings())
    assert kw["jars"] == jar.replace(os.pathsep, ",") and "driver_class_path" not in kw


def test_submit_kwargs_name_the_catalog_and_keep_its_password_in_env(jvm_dir, fake_tools):
    from lakeforge.spark import submit_kwargs

    uri = "postgresql+psycopg2://lakeforge_catalog:pw-unit@127.0.0.1:5433/lakeforge_catalog"
    kw = submit_kwargs(_settings(catalog_uri=uri))
    assert kw["conf"]["spark.sql.catalog.lakeforge.uri"] == "jdbc:postgresql://127.0.0.1:5433/lakeforge_catalog"
    assert kw["conf"]["spark.sql.catalog.lakeforge.io-impl"] == "org.apache.iceberg.aws.s3.S3FileIO"
    assert kw["env_vars"]["LAKEFORGE_CATALOG_URI"] == uri and kw["env_vars"]["LAKEFORGE_CATALOG_NAME"] == "lakeforge"
    assert not any("pw-unit" in v or "s3cr3t-unit" in v for v in kw["conf"].values())


def test_submit_kwargs_need_an_endpoint():
    from lakeforge.spark import submit_kwargs

    with pytest.raises(MissingSecretError, match="LAKEFORGE_S3_ENDPOINT"):
        submit_kwargs(_settings(s3_endpoint=None))


def test_bad_jars_mode(monkeypatch):
    from lakeforge.errors import ConfigError
    from lakeforge.spark import jars_mode

    monkeypatch.setenv("LAKEFORGE_SPARK_JARS_MODE", "packages")
    with pytest.raises(ConfigError, match="'packages'"):
        jars_mode()
