"""The Kafka broker of the local stack: KRaft, one node, jars fetched from Maven Central once.

The broker is the one MSK runs (``KAFKA_VERSION``), configured as the service's topics expect
on MSK: explicit topics only (auto-create off), replication factor 1 on one node.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from local.stack import settings as cfg
from local.stack.processes import Component, StackError, log_contains, port_open, rel, run_with_progress
from local.stack.settings import HOST


class Kafka(Component):
    @property
    def home(self) -> Path:
        return self.settings.state_dir / "kafka"

    @property
    def lib_dir(self) -> Path:
        return self.settings.cache_dir / f"kafka-{cfg.KAFKA_VERSION}" / "lib"

    @property
    def config_file(self) -> Path:
        return self.home / "server.properties"

    def marker(self) -> str:
        return str(self.config_file)

    def prepare(self) -> None:
        if shutil.which("java") is None:
            raise StackError(
                self.name,
                "Java not found (a JDK 17+ runs the broker)",
                "install one, e.g. `apt-get install -y openjdk-17-jdk-headless`, and put `java` on PATH",
            )
        self._ensure_jars()
        self._write_config()
        data = self.home / "data"
        if not (data / "meta.properties").exists():
            self._format(data)

    def _ensure_jars(self) -> None:
        if self.lib_dir.is_dir() and any(self.lib_dir.glob(f"kafka_2.13-{cfg.KAFKA_VERSION}.jar")):
            return
        if shutil.which("mvn") is None:
            raise StackError(
                self.name,
                f"Kafka {cfg.KAFKA_VERSION} jars are not cached and Maven (mvn) is not installed",
                f"install Maven (`apt-get install -y maven`) or copy the jars into {self.lib_dir}",
            )
        work = self.lib_dir.parent
        work.mkdir(parents=True, exist_ok=True)
        pom = work / "pom.xml"
        pom.write_text(_KAFKA_POM)
        staging = work / "lib.partial"
        shutil.rmtree(staging, ignore_errors=True)
        log = self.settings.log_path("kafka-jars")
        code = run_with_progress(
            self.name,
            f"fetching Kafka {cfg.KAFKA_VERSION} jars from Maven Central",
            [
                "mvn",
                "-B",
                "-q",
                "-f",
                str(pom),
                f"{cfg.MAVEN_DEPENDENCY_PLUGIN}:copy-dependencies",
                "-DincludeScope=runtime",
                f"-DoutputDirectory={staging}",
            ],
            log,
            timeout=600,
        )
        if code != 0:
            raise StackError(
                self.name,
                "Maven could not fetch the Kafka jars",
                "check network access to Maven Central (repo.maven.apache.org), then retry",
                log,
            )
        shutil.rmtree(self.lib_dir, ignore_errors=True)
        staging.rename(self.lib_dir)

    def _write_config(self) -> None:
        s = self.settings
        self.home.mkdir(parents=True, exist_ok=True)
        props = {
            "process.roles": "broker,controller",
            "node.id": "1",
            "controller.quorum.voters": f"1@{HOST}:{s.kafka_controller_port}",
            "listeners": f"PLAINTEXT://{HOST}:{s.kafka_port},CONTROLLER://{HOST}:{s.kafka_controller_port}",
            "advertised.listeners": f"PLAINTEXT://{HOST}:{s.kafka_port}",
            "controller.listener.names": "CONTROLLER",
            "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
            "inter.broker.listener.name": "PLAINTEXT",
            "log.dirs": str(self.home / "data"),
            "num.partitions": "3",
            "offsets.topic.replication.factor": "1",
            "offsets.topic.num.partitions": "3",
            "transaction.state.log.replication.factor": "1",
            "transaction.state.log.min.isr": "1",
            "group.initial.rebalance.delay.ms": "0",
            # explicit topics only, as on MSK with auto-create off
            "auto.create.topics.enable": "false",
        }
        self.config_file.write_text("".join(f"{k}={v}\n" for k, v in props.items()))
        (self.home / "log4j.properties").write_text(_KAFKA_LOG4J)

    def _java(self, main: str, *args: str, heap: str = "-Xmx512m") -> list[str]:
        return [
            "java",
            heap,
            f"-Dlog4j.configuration=file:{self.home / 'log4j.properties'}",
            "-cp",
            f"{self.lib_dir}/*",
            main,
            *args,
        ]

    def _format(self, data: Path) -> None:
        cluster_id_file = self.home / "cluster-id"
        if not cluster_id_file.exists():
            out = subprocess.run(
                self._java("kafka.tools.StorageTool", "random-uuid", heap="-Xmx128m"),
                capture_output=True,
                text=True,
                timeout=120,
                check=False,
            )
            cluster_id = out.stdout.strip().splitlines()[-1] if out.returncode == 0 and out.stdout else ""
            if not cluster_id:
                raise StackError(self.name, "StorageTool random-uuid failed", "check the JDK", self.log)
            cluster_id_file.write_text(cluster_id)
        cluster_id = cluster_id_file.read_text().strip()
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with self.log.open("ab") as out_log:
            result = subprocess.run(
                self._java(
                    "kafka.tools.StorageTool",
                    "format",
                    "-t",
                    cluster_id,
                    "-c",
                    str(self.config_file),
                    "--ignore-formatted",
                    heap="-Xmx128m",
                ),
                stdout=out_log,
                stderr=subprocess.STDOUT,
                timeout=120,
                check=False,
            )
        if result.returncode != 0:
            raise StackError(
                self.name,
                "formatting the KRaft storage failed",
                f"delete {rel(self.home)} and run `make local-up` again",
                self.log,
            )

    def command(self) -> list[str]:
        return self._java("kafka.Kafka", str(self.config_file))

    def ready(self) -> bool:
        return port_open(self.settings.kafka_port) and log_contains(
            self.log, self._log_offset, "Kafka Server started"
        )


_KAFKA_POM = f"""<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>local.campusg</groupId>
  <artifactId>kafka-broker</artifactId>
  <version>1</version>
  <packaging>pom</packaging>
  <dependencies>
    <dependency><groupId>org.apache.kafka</groupId><artifactId>kafka_2.13</artifactId>
      <version>{cfg.KAFKA_VERSION}</version></dependency>
    <dependency><groupId>org.slf4j</groupId><artifactId>slf4j-reload4j</artifactId>
      <version>{cfg.SLF4J_RELOAD4J_VERSION}</version></dependency>
    <dependency><groupId>ch.qos.reload4j</groupId><artifactId>reload4j</artifactId>
      <version>{cfg.RELOAD4J_VERSION}</version></dependency>
  </dependencies>
</project>
"""

_KAFKA_LOG4J = """log4j.rootLogger=INFO, stdout
log4j.appender.stdout=org.apache.log4j.ConsoleAppender
log4j.appender.stdout.layout=org.apache.log4j.PatternLayout
log4j.appender.stdout.layout.ConversionPattern=[%d] %p %m (%c)%n
log4j.logger.org.apache.kafka=INFO
log4j.logger.kafka=INFO
log4j.logger.kafka.request.logger=WARN
log4j.logger.state.change.logger=WARN
log4j.logger.org.apache.kafka.controller=WARN
"""
