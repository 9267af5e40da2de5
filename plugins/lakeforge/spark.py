"""Spark sessions and spark-submit arguments that read and write the lake's Iceberg tables.

Spark reaches the lake only through the Iceberg catalog (:mod:`lakeforge.catalog`): Iceberg's own
S3 client (``S3FileIO``, in ``iceberg-aws-bundle``) reads and writes the files, so no Hadoop S3
connector (``hadoop-aws`` and its 600 MiB SDK bundle, about 13 s of every Spark start) is loaded.
The jars come from the jar cache (:func:`lakeforge.services.jars.spark_jars`), on the class path or
as ``spark.jars`` (:func:`jars_mode`). Non-secret catalog settings travel as
``spark.sql.catalog.*`` configs (:func:`catalog_conf`); secrets never do — they are set at run time
on the session (:func:`spark_session`) or handed to ``spark-submit`` through its environment
(:func:`submit_kwargs`), so they never show on a command line.
"""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING, Any

from lakeforge.config import Settings
from lakeforge.errors import ConfigError

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

DEFAULT_MASTER = "local[2]"


def base_conf() -> dict[str, str]:
    """Spark settings every lakeforge job uses (small machine, UTC, no UI, the venv's python)."""
    return {
        "spark.driver.memory": "1g",
        "spark.sql.session.timeZone": "UTC",
        "spark.ui.enabled": "false",
        # loopback only (and no "hostname resolves to a loopback address" warning)
        "spark.driver.host": "127.0.0.1",
        "spark.driver.bindAddress": "127.0.0.1",
        "spark.ui.showConsoleProgress": "false",
        "spark.sql.shuffle.partitions": "4",
        # Adaptive execution re-plans after every shuffle stage. A partition job here runs dozens of
        # small actions (counts per reason, dedup rounds, writes) over 4 shuffle partitions, where
        # re-planning costs more than it saves: a 0.3 MB curate run took 45 s with it, 29 s without.
        "spark.sql.adaptive.enabled": "false",
        "spark.pyspark.python": sys.executable,
        "spark.pyspark.driver.python": sys.executable,
    }


def jars_mode() -> str:
    """How the Iceberg jars reach Spark: ``classpath`` (default) or ``jars`` (``$LAKEFORGE_SPARK_JARS_MODE``).

    ``jars`` (``spark.jars`` / ``--jars``) makes every application copy the jars into its own
    ``spark-*/userFiles-*`` dir (about 130 MiB per app), in local mode too.
    ``classpath`` puts the cached jars on the driver and executor class paths instead: no copy;
    executors on other hosts need the same jar cache path (the Docker image bakes it).
    """
    mode = os.environ.get("LAKEFORGE_SPARK_JARS_MODE", "classpath")
    if mode not in ("classpath", "jars"):
        raise ConfigError(f"LAKEFORGE_SPARK_JARS_MODE={mode!r}: expected 'classpath' or 'jars'")
    return mode


def _spark_jar_paths() -> list[str]:
    from lakeforge.services.jars import spark_jars

    return [str(p) for p in spark_jars()]


def spark_session(app_name: str, settings: Settings | None = None, master: str | None = None) -> "SparkSession":
    """A SparkSession with the lake's Iceberg catalog, as the lake writer identity.

    When this process launches the JVM (plain python, tests), the master, memory and the Iceberg
    jars are passed at launch. Under ``spark-submit`` the JVM exists already: its master and jars win
    and only runtime settings apply. Secrets are set on the live session.

    Args:
        app_name: Spark application name.
        settings: endpoints and keys; default :meth:`Settings.load` (env > supervisor state).
        master: Spark master; default ``$LAKEFORGE_SPARK_MASTER`` or ``local[2]``.
    """
    from pyspark import SparkContext
    from pyspark.sql import SparkSession

    settings = settings or Settings.load()
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    conf = {**base_conf(), **catalog_conf(settings)}
    builder = SparkSession.builder.appName(app_name)
    jvm_running = SparkContext._active_spark_context is not None or "PYSPARK_GATEWAY_PORT" in os.environ
    if not jvm_running:
        builder = builder.master(master or os.environ.get("LAKEFORGE_SPARK_MASTER") or DEFAULT_MASTER)
        jars = _spark_jar_paths()
        if jars_mode() == "jars":
            conf["spark.jars"] = ",".join(jars)
        else:
            conf["spark.driver.extraClassPath"] = os.pathsep.join(jars)
            conf["spark.executor.extraClassPath"] = os.pathsep.join(jars)
    for key, value in conf.items():
        builder = builder.config(key, value)
    spark = builder.getOrCreate()
    if settings.catalog_uri:
        from lakeforge.catalog import spark_secrets

        # Runtime, not launch (pyspark passes launch configs to spark-submit as --conf arguments):
        # the catalog is instantiated on first use and reads its settings then. On an existing
        # context getOrCreate() may have kept older catalog settings: set them here too.
        for key, value in {**conf, **spark_secrets(settings)}.items():
            if key.startswith("spark.sql.catalog."):
                spark.conf.set(key, value)
    return spark


def catalog_conf(settings: Settings) -> dict[str, str]:
    """The lake's Iceberg catalog for Spark (:func:`lakeforge.catalog.spark_conf`), when one is
    configured (``LAKEFORGE_CATALOG_URI``); its secrets are set at run time."""
    if not settings.catalog_uri:
        return {}
    from lakeforge.catalog import spark_conf

    return spark_conf(settings)


def submit_kwargs(settings: Settings | None = None) -> dict[str, Any]:
    """Keyword arguments for Airflow's ``SparkSubmitOperator``: ``conf``, ``env_vars`` and either
    ``driver_class_path`` (default, see :func:`jars_mode`) or ``jars``.

    Call it inside a task (at run time), never at DAG parse time: it reads the S3 settings and
    keys from the environment / supervisor state, and fails loudly when they are missing. The
    keys and the catalog's password go into ``env_vars`` only (the job's :func:`spark_session` sets
    them on the live session's catalog), never into ``conf``, which spark-submit puts on its command line.

    Args:
        settings: endpoints and keys; default :meth:`Settings.load`.
    """
    settings = settings or Settings.load()
    conf = {**base_conf(), **catalog_conf(settings)}
    env = {
        "LAKEFORGE_HOME": str(settings.home),
        "LAKEFORGE_S3_ENDPOINT": settings.require("s3_endpoint"),
        "LAKEFORGE_S3_BUCKET": settings.s3_bucket,
        "LAKEFORGE_S3_REGION": settings.s3_region,
        "LAKEFORGE_S3_ACCESS_KEY_ID": settings.require("s3_access_key_id"),
        "LAKEFORGE_S3_SECRET_ACCESS_KEY": settings.require("s3_secret_access_key"),
        **({"LAKEFORGE_CATALOG_URI": settings.catalog_uri,
            "LAKEFORGE_CATALOG_NAME": settings.catalog_name} if settings.catalog_uri else {}),
        "PYSPARK_PYTHON": sys.executable,
        "PYSPARK_DRIVER_PYTHON": sys.executable,
        "SPARK_LOCAL_IP": os.environ.get("SPARK_LOCAL_IP", "127.0.0.1"),
    }
    jars = _spark_jar_paths()
    kwargs: dict[str, Any] = {"conf": conf, "env_vars": env}
    if jars_mode() == "jars":
        kwargs["jars"] = ",".join(jars)
    else:
        kwargs["driver_class_path"] = os.pathsep.join(jars)
        conf["spark.executor.extraClassPath"] = os.pathsep.join(jars)
    return kwargs
