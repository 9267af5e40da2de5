"""The embedded message bus: a single-node Apache Kafka 4.x broker (KRaft, broker + controller).

The broker runs from the jars that Maven copied into the jar cache (:mod:`lakeforge.services.jars`):
``java -cp <jars> kafka.Kafka server.properties``. Everything it writes lives under
``<state>/data/kafka`` (``server.properties``, ``log4j2.properties``, ``cluster.id``, ``logs/``);
it listens on 127.0.0.1 only. Storage is formatted once, with a cluster id that is kept.
"""

from __future__ import annotations

import base64
import logging
import subprocess
import uuid
from dataclasses import dataclass
from pathlib import Path

from lakeforge.errors import ServiceError
from lakeforge.services.base import ProcessService, port_open
from lakeforge.services.jars import check_prerequisites, is_resolved, kafka_classpath

log = logging.getLogger(__name__)

HOST = "127.0.0.1"
#: A small broker for a 2-core laptop: the heap is plenty for the demo's volumes.
JVM_OPTS = [
    "-Xms256m", "-Xmx512m",
    "-XX:+UseG1GC", "-XX:MaxGCPauseMillis=20", "-XX:InitiatingHeapOccupancyPercent=35",
    "-XX:+ExplicitGCInvokesConcurrent",
    "-Djava.awt.headless=true",
]

LOG4J2 = """\
# log4j2 configuration of lakeforge's embedded Kafka broker: everything to stdout, which the
# supervisor sends to <state>/logs/kafka.log.
status = warn
# no log4j shutdown hook: the broker logs its own shutdown until the JVM exits
shutdownHook = disable
appender.stdout.type = Console
appender.stdout.name = STDOUT
appender.stdout.layout.type = PatternLayout
appender.stdout.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = INFO
rootLogger.appenderRef.stdout.ref = STDOUT
# chatty loggers: per-request and per-topic-partition state changes
logger.request.name = kafka.request.logger
logger.request.level = WARN
logger.statechange.name = state.change.logger
logger.statechange.level = WARN
logger.clients.name = org.apache.kafka.clients
logger.clients.level = WARN
"""


def new_cluster_id() -> str:
    """A Kafka cluster id: 16 random bytes, URL-safe base64 without padding (like ``random-uuid``)."""
    return base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode()


@dataclass
class KafkaService(ProcessService):
    """Single-node KRaft Kafka broker on loopback.

    Construct as ``KafkaService(name="kafka", state=state, port=9092, controller_port=9093)``.
    """

    port: int = 9092  # client (PLAINTEXT) listener
    controller_port: int = 9093  # KRaft controller listener
    heap: str = "512m"  # -Xmx of the broker JVM

    def __post_init__(self) -> None:
        self.home = self.state.data / "kafka"
        if not self.argv and is_resolved("kafka"):
            # shown by `status` before a start; prepare() rebuilds it anyway
            self.argv = self.command()

    # -- files ------------------------------------------------------------------------------------
    @property
    def properties_path(self) -> Path:
        return self.home / "server.properties"

    @property
    def log4j_path(self) -> Path:
        return self.home / "log4j2.properties"

    @property
    def log_dir(self) -> Path:
        return self.home / "logs"

    def server_properties(self) -> dict[str, str]:
        """The broker configuration (written to ``server.properties``)."""
        return {
            # KRaft combined mode, one node. Static voters (not --standalone/dynamic quorum) so a
            # controller port that changes between runs only needs a new server.properties.
            "process.roles": "broker,controller",
            "node.id": "1",
            "controller.quorum.voters": f"1@{HOST}:{self.controller_port}",
            "listeners": f"PLAINTEXT://{HOST}:{self.port},CONTROLLER://{HOST}:{self.controller_port}",
            "advertised.listeners": f"PLAINTEXT://{HOST}:{self.port}",
            "inter.broker.listener.name": "PLAINTEXT",
            "controller.listener.names": "CONTROLLER",
            "listener.security.protocol.map": "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
            "log.dirs": str(self.log_dir),
            # one broker: every replication factor is 1
            "num.partitions": "3",
            "default.replication.factor": "1",
            "min.insync.replicas": "1",
            "offsets.topic.replication.factor": "1",
            "offsets.topic.num.partitions": "5",  # 50 by default: slow first group join on 2 cores
            "transaction.state.log.replication.factor": "1",
            "transaction.state.log.min.isr": "1",
            "transaction.state.log.num.partitions": "5",
            "share.coordinator.state.topic.replication.factor": "1",
            "share.coordinator.state.topic.min.isr": "1",
            "group.initial.rebalance.delay.ms": "0",
            "auto.create.topics.enable": "true",
            # the demo replays events whose CreateTime is days old: never delete by time or size,
            # and accept old timestamps (indexes, offsets_for_times, use CreateTime)
            "log.retention.ms": "-1",
            "log.retention.bytes": "-1",
            "log.message.timestamp.type": "CreateTime",
            "log.message.timestamp.before.max.ms": str(2**63 - 1),
            # small machine
            "num.network.threads": "2",
            "num.io.threads": "4",
            "num.recovery.threads.per.data.dir": "1",
            "log.cleaner.threads": "1",
            "log.cleaner.dedupe.buffer.size": str(16 * 2**20),
        }

    def endpoint(self) -> str:
        return f"{HOST}:{self.port}"

    def command(self) -> list[str]:
        """``java … -cp <jars> kafka.Kafka server.properties``."""
        return [*self._java(), "kafka.Kafka", str(self.properties_path)]

    def _java(self) -> list[str]:
        java = check_prerequisites(maven=False)
        opts = [o if not o.startswith("-Xmx") else f"-Xmx{self.heap}" for o in JVM_OPTS]
        return [
            java, *opts,
            f"-Dlog4j2.configurationFile={self.log4j_path}",
            f"-Dkafka.logs.dir={self.log_dir}",
            "-cp", kafka_classpath(),
        ]

    # -- lifecycle --------------------------------------------------------------------------------
    def prepare(self) -> None:
        """Write the configs and format the storage once (skipped when ``meta.properties`` exists)."""
        self.home.mkdir(parents=True, exist_ok=True)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        props = "".join(f"{k}={v}\n" for k, v in self.server_properties().items())
        self.properties_path.write_text("# written by lakeforge (KafkaService.prepare)\n" + props)
        self.log4j_path.write_text(LOG4J2)
        self.argv = self.command()
        if (self.log_dir / "meta.properties").exists():
            return
        id_path = self.home / "cluster.id"
        if not id_path.exists():
            id_path.write_text(new_cluster_id() + "\n")
        cluster_id = id_path.read_text().strip()
        fmt = [*self._java(), "kafka.tools.StorageTool", "format",
               "--cluster-id", cluster_id, "--config", str(self.properties_path), "--ignore-formatted"]
        proc = subprocess.run(fmt, capture_output=True, text=True, timeout=120)
        if proc.returncode != 0:
            raise ServiceError(
                f"formatting Kafka storage in {self.log_dir} failed (exit {proc.returncode}):\n"
                f"{(proc.stdout + proc.stderr)[-3000:]}"
            )
        log.info("kafka storage formatted: cluster id %s", cluster_id)

    def healthy(self) -> bool:
        """A real protocol round trip: bootstrap (ApiVersions) + Metadata with kafka-python."""
        if not port_open(self.port, HOST):
            # kafka-python leaks its IO thread when bootstrap fails in the constructor
            return False
        from kafka import KafkaAdminClient
        from kafka.errors import KafkaError

        try:
            admin = KafkaAdminClient(
                bootstrap_servers=self.endpoint(),
                client_id="lakeforge-health",
                request_timeout_ms=3000,
                bootstrap_timeout_ms=3000,
                reconnect_backoff_max_ms=500,
            )
        except KafkaError:
            return False
        try:
            admin.list_topics()
            return True
        except KafkaError:
            return False
        finally:
            admin.close()


def create_topic(bootstrap: str, topic: str, topic_partitions: int = 3, replication_factor: int = 1,
                 configs: dict[str, str] | None = None, timeout_ms: int = 15000) -> bool:
    """Create ``topic`` unless it exists. Returns True when created, False when it was there.

    Args:
        bootstrap: ``host:port`` of a broker.
        topic: topic name.
        topic_partitions: number of Kafka topic-partitions of a new topic (an existing topic is left as it is).
        replication_factor: 1 for the embedded broker.
        configs: topic-level configs, e.g. ``{"retention.ms": "-1"}``.
        timeout_ms: how long the broker may take, and how long to wait for leaders.
    """
    from kafka import KafkaAdminClient
    from kafka.errors import TopicAlreadyExistsError

    admin = KafkaAdminClient(bootstrap_servers=bootstrap, client_id="lakeforge-admin",
                             request_timeout_ms=timeout_ms)
    try:
        admin.create_topics(
            {topic: {"num_partitions": topic_partitions, "replication_factor": replication_factor,
                     "configs": dict(configs or {})}},
            timeout_ms=timeout_ms,
            wait_for_metadata=True,
        )
        return True
    except TopicAlreadyExistsError:
        return False
    finally:
        admin.close()
