"""A local single-node Apache Kafka (KRaft) broker run from jars resolved by Maven.

``infra/pom.xml`` resolves ``kafka_2.13`` and a log4j2 backend into ``infra/kafka/lib``;
the broker runs as ``java -cp 'lib/*' kafka.Kafka server.properties`` with every file
(config, KRaft log dirs, logs, pid) under ``data_dir``.
"""

from __future__ import annotations

import base64
import hashlib
import os
import shutil
import subprocess
import uuid
from pathlib import Path

from confluent_kafka.admin import AdminClient

from infra._service import HOST, InfraError, LocalService, ToolMissing

INFRA_DIR = Path(__file__).resolve().parent
POM = INFRA_DIR / "pom.xml"
LOG4J_CONFIG = INFRA_DIR / "log4j2.xml"
DEFAULT_LIB = INFRA_DIR / "kafka" / "lib"
HEAP_OPTS = ("-Xmx512m", "-Xms256m")


def _require(tool: str, hint: str) -> str:
    path = shutil.which(tool)
    if path is None:
        raise ToolMissing(f"`{tool}` not found on PATH: {hint}")
    return path


def _pom_digest() -> str:
    return hashlib.sha256(POM.read_bytes()).hexdigest()


def random_cluster_id() -> str:
    """A Kafka-style cluster id: 16 random bytes, URL-safe base64 without padding."""
    while True:
        cid = base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode()
        if not cid.startswith("-"):  # Kafka's Uuid.randomUuid avoids these (CLI parsing)
            return cid


class LocalKafka(LocalService):
    """Single-node KRaft broker+controller listening on 127.0.0.1 only."""

    name = "kafka"

    def __init__(
        self,
        data_dir: str | os.PathLike[str],
        port: int = 9092,
        controller_port: int | None = None,
        *,
        lib_dir: str | os.PathLike[str] = DEFAULT_LIB,
        die_with_parent: bool = False,
        heap_opts: tuple[str, ...] = HEAP_OPTS,
    ) -> None:
        super().__init__(data_dir, port, die_with_parent)
        self.controller_port = int(controller_port) if controller_port else self.port + 1
        self.lib_dir = Path(lib_dir)
        self.heap_opts = heap_opts

    @property
    def bootstrap(self) -> str:
        return f"{HOST}:{self.port}"

    @property
    def config_file(self) -> Path:
        return self.data_dir / "server.properties"

    @property
    def log_dir(self) -> Path:
        return self.data_dir / "logs"

    @property
    def kraft_dir(self) -> Path:
        return self.data_dir / "kraft"

    # --- install ------------------------------------------------------------------------
    @property
    def stamp_file(self) -> Path:
        return self.lib_dir / ".pom.sha256"

    def installed(self) -> bool:
        """Jars present and resolved from the current pom.xml (an edited pom re-resolves)."""
        try:
            return self.stamp_file.read_text().strip() == _pom_digest()
        except OSError:
            return False

    def install(self) -> None:
        """Resolve the broker jars with Maven into ``lib_dir`` unless already there."""
        _require(
            "java", "install a Java 17+ runtime (e.g. apt-get install openjdk-17-jre-headless)"
        )
        if self.installed():
            return
        mvn = _require("mvn", "install Maven (apt-get install maven) to fetch the Kafka jars")
        staging = self.lib_dir.with_name(self.lib_dir.name + ".partial")
        shutil.rmtree(staging, ignore_errors=True)
        cmd = [mvn, "-q", "-B", "-f", str(POM), "dependency:copy-dependencies",
               f"-DoutputDirectory={staging}", "-DincludeScope=runtime"]  # fmt: skip
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0:
            out = (done.stdout + done.stderr).strip().splitlines()[-15:]
            raise InfraError("mvn could not resolve the Kafka jars:\n" + "\n".join(out))
        # Swap in atomically so an interrupted download never looks installed.
        shutil.rmtree(self.lib_dir, ignore_errors=True)
        staging.rename(self.lib_dir)
        self.stamp_file.write_text(_pom_digest() + "\n")

    # --- LocalService -------------------------------------------------------------------
    def _ports(self) -> list[int]:
        return [self.port, self.controller_port]

    def _logs(self) -> list[Path]:
        return [self.log_dir / "server.log", self.out_file]

    def _prepare(self) -> list[str]:
        self.install()
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.config_file.write_text(self._properties())
        if not (self.kraft_dir / "meta.properties").exists():
            self._format()
        return self._java("kafka.Kafka", str(self.config_file))

    def _properties(self) -> str:
        props = {
            "process.roles": "broker,controller",
            "node.id": "1",
            "listeners": f"PLAINTEXT://{HOST}:{self.port},CONTROLLER://{HOST}:{self.controller_port}",
            "advertised.listeners": f"PLAINTEXT://{HOST}:{self.port}",
            "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
            "inter.broker.listener.name": "PLAINTEXT",
            "controller.listener.names": "CONTROLLER",
            # Static quorum: format needs neither --standalone nor --initial-controllers.
            "controller.quorum.voters": f"1@{HOST}:{self.controller_port}",
            "log.dirs": str(self.kraft_dir),
            # One broker: internal topics must not wait for three replicas (idempotent and
            # transactional producers, Faust exactly_once, share groups).
            "offsets.topic.replication.factor": "1",
            "transaction.state.log.replication.factor": "1",
            "transaction.state.log.min.isr": "1",
            "share.coordinator.state.topic.replication.factor": "1",
            "share.coordinator.state.topic.min.isr": "1",
            # Fewer internal partitions: the first group join / transaction is much faster.
            "offsets.topic.num.partitions": "4",
            "transaction.state.log.num.partitions": "4",
            "num.partitions": "1",
            "group.initial.rebalance.delay.ms": "0",
            "auto.create.topics.enable": "true",
        }
        return "".join(f"{k}={v}\n" for k, v in props.items())

    def _java(self, main: str, *args: str, jvm: tuple[str, ...] = ()) -> list[str]:
        java = _require("java", "install a Java 17+ runtime")
        return [
            java, *self.heap_opts, *jvm, "-Djava.awt.headless=true", "-XX:+ExitOnOutOfMemoryError",
            f"-Dkafka.logs.dir={self.log_dir}", f"-Dlog4j2.configurationFile={LOG4J_CONFIG}",
            "-cp", str(self.lib_dir / "*"), main, *args,
        ]  # fmt: skip

    def _format(self) -> None:
        """Format the KRaft storage once (what `kafka-storage.sh format` does)."""
        # A short-lived tool: the C1 compiler alone starts ~1 s faster on a small machine.
        quick = ("-XX:TieredStopAtLevel=1", "-XX:+UseSerialGC")
        cmd = self._java("kafka.tools.StorageTool", "format", "-t", random_cluster_id(),
                         "-c", str(self.config_file), jvm=quick)  # fmt: skip
        done = subprocess.run(cmd, capture_output=True, text=True, cwd=self.data_dir)
        if done.returncode != 0:
            out = (done.stdout + done.stderr).strip().splitlines()[-15:]
            raise InfraError("kafka storage format failed:\n" + "\n".join(out))

    def _ready(self) -> bool:
        admin = AdminClient({"bootstrap.servers": self.bootstrap, "log_level": 0})
        try:
            return bool(admin.list_topics(timeout=2).brokers)
        except Exception:  # KafkaException while the broker is still coming up
            return False

    def topics(self, timeout_s: float = 5.0) -> list[str]:
        """User topics (internal ``__*`` topics left out)."""
        return list_topics(self.bootstrap, timeout_s)


def list_topics(bootstrap: str, timeout_s: float = 5.0) -> list[str]:
    """User topics of any reachable broker; raises on an unreachable one."""
    admin = AdminClient({"bootstrap.servers": bootstrap, "log_level": 0})
    metadata = admin.list_topics(timeout=timeout_s)
    return sorted(t for t in metadata.topics if not t.startswith("__"))
