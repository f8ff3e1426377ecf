"""Makes ``hanging-broker.tar.gz``: a single Kafka broker's data in which the coordinator
decided transactions (one COMMIT, one ABORT) whose markers it then skipped, as Kafka 4.3.1
does when killed while a transaction ends (``infogrowth/io/hanging.py`` says why). Each
transaction also commits the offset of a consumer group (``g-<partition>``) of ``source``,
as a read-process-write loop does, so the offsets can be left open too.

Killing the broker right after a transaction ends leaves its markers unwritten about one
time in three, so this runs rounds until it holds both kinds, each round on partitions no
later round writes (a later transaction of the same producer would end the open one). Run
it again only to remake the fixture: ``python tests/data/make_hanging_broker.py``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tarfile
import tempfile
import threading
from pathlib import Path

from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
from infogrowth.io.kafka_io import end_offsets, read_topic  # noqa: E402
from infra._service import free_port  # noqa: E402
from infra.kafka import LocalKafka  # noqa: E402

TOPIC, SOURCE, PER_ROUND, ROUNDS = "t", "source", 4, 12
OUT = Path(__file__).with_name("hanging-broker.tar.gz")


def produce_then_kill(bootstrap: str, first: int, broker_pid: int, commit: bool) -> None:
    """Producers on partitions first.., tight transactions of 5 records; after 50, the first
    one's last transaction ends with ``commit`` and the broker is killed at once."""

    def run(partition: int) -> None:
        producer = Producer({
            "bootstrap.servers": bootstrap, "transactional.id": f"tid-{partition}",
            "transaction.timeout.ms": 10000, "linger.ms": 0, "log_level": 0,
        })  # fmt: skip
        producer.init_transactions()
        group = Consumer({"bootstrap.servers": bootstrap, "group.id": f"g-{partition}"})
        for n in range(10**6):
            last = partition == first and n == 50
            producer.begin_transaction()
            for _ in range(5):
                value = b"abort" if last and not commit else b"commit"
                producer.produce(TOPIC, value=value, partition=partition)
            consumed = [TopicPartition(SOURCE, partition, n + 1)]
            producer.send_offsets_to_transaction(consumed, group.consumer_group_metadata())
            if last and not commit:
                producer.flush()  # abort_transaction drops records not sent yet
                producer.abort_transaction()
            else:
                producer.commit_transaction()
            if last:
                os.kill(broker_pid, signal.SIGKILL)
                os._exit(0)

    for partition in range(first, first + PER_ROUND):
        threading.Thread(target=run, args=(partition,), daemon=True).start()
    threading.Event().wait()


def left_open(bootstrap: str, partition: int) -> bytes | None:
    """The last record's value when the partition's last transaction has no marker."""
    stable = end_offsets(bootstrap, TOPIC, timeout=30)[partition]  # waits for leaders
    high = end_offsets(bootstrap, TOPIC, "read_uncommitted", timeout=30)[partition]
    if stable == high:
        return None
    last = read_topic(bootstrap, TOPIC, isolation="read_uncommitted", partitions=[partition],
                      starts={partition: high - 1})  # fmt: skip
    return [message.value() for message in last][-1]


def main() -> None:
    work = Path(tempfile.mkdtemp(prefix="hanging-broker-"))
    broker = LocalKafka(work, free_port(), free_port())
    broker.start(wait_s=120)
    admin = AdminClient({"bootstrap.servers": broker.bootstrap})
    for topic in (TOPIC, SOURCE):
        admin.create_topics([NewTopic(topic, PER_ROUND * ROUNDS, 1)])[topic].result()
    try:
        hanging: dict[str, int] = {}
        for round_ in range(ROUNDS):
            commit = "commit" not in hanging
            first = round_ * PER_ROUND
            args = [sys.executable, __file__, broker.bootstrap, str(first), str(broker.pid()),
                    "commit" if commit else "abort"]  # fmt: skip
            subprocess.run(args, check=False)
            assert broker._proc is not None
            broker._proc.wait(30)
            broker._proc = None
            broker.start(wait_s=120)
            # A kill just after an abort can also catch the commit before it: keep only the kind
            # asked for (an aborted transaction's records say "abort").
            value = left_open(broker.bootstrap, first)
            if value is not None and (value == b"abort") != commit:
                kind = "commit" if commit else "abort"
                hanging[kind] = first
                print(f"round {round_}: partition {first} hangs ({kind})")
            if len(hanging) == 2:
                break
    finally:
        broker.stop()  # also when a round fails: no broker left behind
    assert len(hanging) == 2, f"only {hanging} after {ROUNDS} rounds"
    (work / "hanging.json").write_text(json.dumps({"topic": TOPIC, **hanging}))
    with tarfile.open(OUT, "w:gz") as tar:
        for name in ("kraft", "hanging.json"):
            tar.add(work / name, arcname=name)
    print(f"wrote {OUT} ({OUT.stat().st_size} bytes)")


if __name__ == "__main__":
    if len(sys.argv) == 5:
        produce_then_kill(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4] == "commit")
    else:
        main()
