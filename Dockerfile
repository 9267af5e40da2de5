# syntax=docker/dockerfile:1.7
# The lakeforge image: one image for the MLflow server, every Airflow component (and the Celery
# workers, GPU included), the Spark master and workers, the trainer and the model server.
# docker-compose.yml builds it (`docker compose build`); no HEALTHCHECK here: compose defines one
# per service, because each service runs a different process.
#
# Bookworm, not the default (trixie) slim: trixie has no OpenJDK 17, and Spark 4 + hadoop-aws 3.5
# are run and tested here on 17.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# ------------------------------------------------------------------------------------------------
# builder: a venv with the locked dependencies and the project, plus the JVM jars baked by Maven
# ------------------------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS builder

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH

# JDK + Maven resolve the jars (`mvn dependency:copy-dependencies`); build-essential covers any
# sdist in the lock. The slim image's man dirs are missing, which some JDK postinst scripts need.
RUN --mount=type=cache,target=/var/cache/apt,sharing=locked \
    --mount=type=cache,target=/var/lib/apt/lists,sharing=locked \
    rm -f /etc/apt/apt.conf.d/docker-clean \
 && mkdir -p /usr/share/man/man1 \
 && apt-get update \
 && apt-get install -y --no-install-recommends openjdk-17-jdk-headless maven build-essential

RUN python -m venv /opt/venv

# Dependencies first (own layer: rebuilt only when the lock changes). torch is the CUDA build
# (GBs of nvidia wheels): the pip cache mount keeps rebuilds from downloading it again. The Spark
# provider goes in without deps (its pyspark-client would overwrite pyspark); the check after it
# fails the build if the installed pyspark is not the locked one.
COPY requirements/lock.txt requirements/no-deps.txt /tmp/requirements/
RUN --mount=type=cache,target=/root/.cache/pip \
    pip install -r /tmp/requirements/lock.txt \
 && pip install --no-deps -r /tmp/requirements/no-deps.txt \
 && python -c "import re, sys, pyspark; want = re.search(r'^pyspark==(\S+)', open('/tmp/requirements/lock.txt').read(), re.M).group(1); sys.exit(None if pyspark.__version__ == want else f'pyspark {pyspark.__version__} installed but the lock pins {want}: did pyspark-client overwrite it?')"

# The project. Editable install on purpose: lakeforge finds pipelines/ and jvm/ relative to its
# package (REPO_ROOT), so the package must stay at /opt/lakeforge/plugins/lakeforge.
WORKDIR /opt/lakeforge
COPY pyproject.toml README.md ./
COPY plugins/ plugins/
COPY dags/ dags/
COPY jobs/ jobs/
COPY pipelines/ pipelines/
COPY jvm/ jvm/
RUN --mount=type=cache,target=/root/.cache/pip \
    pip install --no-deps -e .

# Bake the JVM jars: Iceberg's Spark runtime + S3FileIO + the catalog's JDBC drivers (the lake's
# tables; Spark needs no Hadoop S3 connector), and the Kafka broker jars.
# Resolved from jvm/*/pom.xml into $LAKEFORGE_JAR_CACHE; the build fails if one did not come out.
ENV LAKEFORGE_JAR_CACHE=/opt/lakeforge/jars
RUN --mount=type=cache,target=/root/.m2 \
    python -m lakeforge.services.jars \
 && ls "$LAKEFORGE_JAR_CACHE"/iceberg/iceberg-spark-runtime-*.jar \
 && ls "$LAKEFORGE_JAR_CACHE"/iceberg/iceberg-aws-bundle-*.jar

# ------------------------------------------------------------------------------------------------
# runtime: JRE for Spark, the venv, the project, the jars; runs as a non-root user
# ------------------------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS runtime

# procps: Spark's launch scripts call `ps`; curl: the compose healthchecks.
RUN --mount=type=cache,target=/var/cache/apt,sharing=locked \
    --mount=type=cache,target=/var/lib/apt/lists,sharing=locked \
    rm -f /etc/apt/apt.conf.d/docker-clean \
 && mkdir -p /usr/share/man/man1 \
 && apt-get update \
 && apt-get install -y --no-install-recommends openjdk-17-jre-headless procps curl \
 && ln -s "$(dirname "$(dirname "$(readlink -f "$(command -v java)")")")" /usr/lib/jvm/java-17

# uid 50000 as in Airflow's own image, so volumes made for one fit the other.
RUN groupadd --gid 50000 lakeforge \
 && useradd --uid 50000 --gid lakeforge --create-home --home-dir /home/lakeforge lakeforge

COPY --from=builder /opt/venv /opt/venv
COPY --from=builder --chown=lakeforge:lakeforge /opt/lakeforge /opt/lakeforge

ENV VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    JAVA_HOME=/usr/lib/jvm/java-17 \
    PYTHONUNBUFFERED=1 \
    LAKEFORGE_JAR_CACHE=/opt/lakeforge/jars \
    LAKEFORGE_HOME=/home/lakeforge/.lakeforge \
    PYSPARK_PYTHON=/opt/venv/bin/python \
    PYSPARK_DRIVER_PYTHON=/opt/venv/bin/python \
    AIRFLOW_HOME=/opt/airflow \
    AIRFLOW__CORE__DAGS_FOLDER=/opt/lakeforge/dags \
    AIRFLOW__CORE__PLUGINS_FOLDER=/opt/lakeforge/plugins \
    AIRFLOW__CORE__LOAD_EXAMPLES=False \
    HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1

# Mount points of the compose volumes, made here so fresh named volumes inherit the owner.
RUN mkdir -p /opt/airflow/logs /opt/airflow/auth /var/lib/spark/work /var/lib/spark/recovery \
             /home/lakeforge/.lakeforge \
 && chown -R lakeforge:lakeforge /opt/airflow /var/lib/spark /home/lakeforge

USER lakeforge
WORKDIR /opt/lakeforge
CMD ["lakeforge", "--help"]
