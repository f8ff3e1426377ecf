"""The curator's durable table restores the very index of the uninterrupted run: only the
samples it kept, with the budget policy's evictions replayed at the same points."""

from __future__ import annotations

import asyncio
import json
import logging
import math
import threading
import uuid
from dataclasses import replace
from math import nan

import numpy as np
import pytest
from confluent_kafka import Producer

from agents import curator_state as state_codec
from agents import snapshot
from infogrowth.commands.offline import make_curator
from infogrowth.core.curate import Curator, Scored
from infogrowth.core.dedup import VARIANTS
from infogrowth.core.encode import Encoded
from infogrowth.core.gain import GainIndex
from infogrowth.io.kafka_io import end_offsets, ensure_topics, read_topic, topic_id
from infogrowth.io.runs import COMPACTED
from infogrowth.records import Sample
from infogrowth.settings import Settings


def items(n: int, seed: int) -> list[Scored]:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(6, 16))
    out = []
    for i in range(n):
        image = centres[i % 6] + 0.5 * rng.normal(size=16)
        text = image + 0.3 * rng.normal(size=16)
        image, text = (v / np.linalg.norm(v) for v in (image, text))
        encoded = Encoded(image.astype(np.float32), text.astype(np.float32), 0.9, None)
        encoded.image_hash = rng.integers(0, 2**63, size=VARIANTS, dtype="<u8").tobytes()
        out.append(Scored(Sample(f"s{seed}-{i}", caption="c"), encoded))
    return out


@pytest.mark.parametrize("policy", ["threshold", "budget", "all"])
def test_restore_rebuilds_the_index_of_the_uninterrupted_run(policy: str) -> None:
    settings = Settings(encoder="precomputed", policy=policy, tau=0.35, budget=20, k=2)
    live = make_curator(settings)
    table: dict[str, state_codec.Entry] = {}
    seq = 0
    for batch in range(4):  # what agents/curator.py writes, batch by batch
        part = items(25, batch)
        for it, outcome in zip(part, live.select(part), strict=True):
            if live.indexes(outcome):
                vectors = {"image": it.encoded.image_emb, "text": it.encoded.text_emb}
                table[it.sample.id] = state_codec.indexed(
                    seq, vectors, None, outcome.gain, it.encoded.image_hash
                )
            else:
                table[it.sample.id] = state_codec.rejected(seq)
            seq += 1

    restarted = make_curator(settings)
    changelog = {key: state_codec.encode(entry) for key, entry in table.items()}
    recovered = {key: state_codec.decode(value) for key, value in changelog.items()}
    restored = state_codec.restore(recovered, restarted.index, restarted.policy)
    restarted.index, restarted.hashes = restored.index, restored.hashes
    assert restored.index.ids == live.index.ids and restored.index.live == live.index.live
    # the image hashes of the kept samples, evictions included, as in the live curator
    assert restored.hashes.ids == live.hashes.ids and 0 < len(live.hashes) <= live.index.live
    if policy != "all":
        assert len(live.index) < 100  # rejected samples were left out
    if policy == "budget":
        assert live.index.live == 20 < len(live.index)  # evicted ones left the search
    later = items(25, 99)
    expected, got = live.select(later), restarted.select(later)
    assert [o.gain for o in got] == [o.gain for o in expected]
    assert [(o.decision, o.neighbour) for o in got] == [(o.decision, o.neighbour) for o in expected]


def test_changelog_values_are_binary_and_round_trip() -> None:
    vectors = {"image": np.linspace(-1, 1, 512, dtype=np.float32), "text": np.ones(512, "f4")}
    entries = [
        state_codec.indexed(7, vectors, "cat", 0.125),
        state_codec.queued(8, b"\x00\x00\x00\x00\x0bscored"),
        state_codec.queued(9, None),
        state_codec.rejected(10),
    ]
    for entry in entries:
        value = state_codec.encode(entry)
        back = state_codec.decode(value)
        assert back.keys() == entry.keys()
        assert {k: v for k, v in back.items() if k != "vectors"} == {
            k: v for k, v in entry.items() if k != "vectors"
        }
        for m, vec in entry.get("vectors", {}).items():
            assert np.array_equal(back["vectors"][m], vec)
    indexed = state_codec.encode(entries[0])
    assert len(indexed) < 2 * 512 * 4 + 120  # float32 bytes, not base64 text (4/3 larger)
    assert state_codec.light(entries[0]) == {"state": "indexed", "seq": 7, "gain": 0.125}
    # headers orjson refuses (NaN, a lone surrogate) are read by json, values unchanged
    odd = state_codec.decode(state_codec.encode(state_codec.indexed(3, vectors, "\ud800", nan)))
    assert odd["label"] == "\ud800" and math.isnan(odd["gain"]) and odd["seq"] == 3
    plain = state_codec.decode(state_codec.encode(state_codec.indexed(4, vectors, "é", 0.1 + 0.2)))
    assert plain["label"] == "é" and plain["gain"] == 0.1 + 0.2


def _curated_table(settings: Settings, batches: int) -> tuple[Curator, dict, list[GainIndex]]:
    """The live curator, its table and a snapshot of its index after every batch."""
    live = make_curator(settings)
    table: dict[str, state_codec.Entry] = {}
    snaps, seq = [], 0
    for batch in range(batches):
        part = items(25, batch)
        for it, outcome in zip(part, live.select(part), strict=True):
            vectors = {"image": it.encoded.image_emb, "text": it.encoded.text_emb}
            if live.indexes(outcome):
                table[it.sample.id] = state_codec.indexed(
                    seq, vectors, None, outcome.gain, it.encoded.image_hash
                )
            else:
                table[it.sample.id] = state_codec.rejected(seq)
            seq += 1
        snaps.append(GainIndex.from_bytes(live.index.to_bytes()))
    return live, table, snaps


@pytest.mark.parametrize("policy", ["threshold", "budget"])
def test_a_snapshot_stands_in_for_the_samples_it_covers(policy: str) -> None:
    settings = Settings(encoder="precomputed", policy=policy, tau=0.35, budget=20, k=2)
    live, table, snaps = _curated_table(settings, 4)
    restarted, covered = make_curator(settings), len(snaps[1])
    for key in snaps[1].ids:  # as read_and_restore reads them: the snapshot has the vectors
        table[key] = {k: v for k, v in table[key].items() if k != "vectors"}
    restored = state_codec.restore(table, restarted.index, restarted.policy, snaps[1])
    restarted.index, restarted.hashes = restored.index, restored.hashes  # as the agent does
    assert 0 < restored.from_snapshot == covered < len(live.index)
    assert restored.index.ids == live.index.ids and restored.index.live == live.index.live
    later = items(25, 99)
    expected, got = live.select(later), restarted.select(later)
    assert [(o.decision, o.neighbour) for o in got] == [(o.decision, o.neighbour) for o in expected]
    assert [o.gain for o in got] == [o.gain for o in expected]  # exact top-k at this size


def test_a_snapshot_the_committed_table_does_not_cover_is_ignored() -> None:
    settings = Settings(encoder="precomputed", policy="threshold", tau=0.35, k=2)
    live, table, snaps = _curated_table(settings, 3)
    aborted = next(k for k in snaps[1].ids if k not in snaps[0].ids)
    del table[aborted]  # its batch's transaction never committed
    fresh = make_curator(settings)
    restored = state_codec.restore(table, fresh.index, fresh.policy, snaps[1])
    assert restored.from_snapshot == 0 and aborted not in restored.index
    other = make_curator(replace(settings, k=3))  # other parameters: not this index
    assert state_codec.restore(table, other.index, other.policy, snaps[0]).from_snapshot == 0


def test_an_empty_snapshot_stands_in_for_none_and_keeps_its_table_usable() -> None:
    """A snapshot taken while the gate held every sample of its shard has an empty index:
    it covers none, so a restore over its table and the changelog's tail is usable when
    every indexed entry came from the tail (with vectors), and is not when the table
    itself holds indexed entries (without vectors). Seen: a shard moved with only such a
    snapshot read its whole changelog."""
    settings = Settings(encoder="precomputed", policy="threshold", tau=0.35, k=2)
    live, table, _ = _curated_table(settings, 2)
    empty = GainIndex(**live.index.params)
    done = state_codec._indexed(table)
    assert done and state_codec.covers(empty, done, live.index)
    assert state_codec._stands_in(empty, done, live.index)  # all of them from the tail
    from_table = [(k, {f: v for f, v in e.items() if f != "vectors"}) for k, e in done]
    assert not state_codec._stands_in(empty, from_table, live.index)
    fresh = make_curator(settings)
    restored = state_codec.restore(table, fresh.index, fresh.policy, empty)
    assert restored.from_snapshot == 0 and restored.index.ids == live.index.ids


class FakeStore:
    """The ObjectStore calls the snapshots use; ``fail_on`` makes a put of that key die."""

    def __init__(self) -> None:
        self.objects: dict[str, bytes] = {}
        self.fail_on = ""

    def ensure_bucket(self) -> None:
        pass

    def put_bytes(self, key: str, data: bytes, content_type: str = "") -> str:
        if self.fail_on and self.fail_on in key:
            raise ConnectionError("killed mid-write")
        self.objects[key] = data
        return key

    def get_bytes(self, key: str) -> bytes:
        if key not in self.objects:
            raise FileNotFoundError(key)
        return self.objects[key]

    def list(self, prefix: str) -> list[str]:
        return sorted(k for k in self.objects if k.startswith(prefix))

    def delete(self, key: str) -> None:
        del self.objects[key]


def test_a_write_killed_midway_leaves_the_previous_snapshot_usable() -> None:
    settings = Settings(encoder="precomputed", policy="threshold", tau=0.35, k=2)
    _, table, snaps = _curated_table(settings, 4)
    store, where = FakeStore(), snapshot.prefix("app")
    assert snapshot.read(store, where) is None

    def write(seq: int) -> None:
        snap, mark = snaps[seq], state_codec.Mark("topic", seq, b"k")
        packed = state_codec.pack_table(table.items(), mark)
        snapshot.write(store, where, snap.to_bytes(), seq, len(snap), packed)

    def newest_is(seq: int) -> None:
        found = snapshot.read(store, where)
        assert found.index.ids == snaps[seq].ids and found.table[1].offset == seq

    for seq in range(3):
        write(seq)
    assert len(store.list(where)) == 2 * snapshot.KEEP + 1  # two snapshots and the pointer
    for dies_in in ("index-", ".table", snapshot.POINTER):  # the kill lands in each write
        store.fail_on = dies_in
        with pytest.raises(ConnectionError):
            write(3)
        newest_is(2)
    store.fail_on = ""
    write(3)
    newest_is(3)
    assert len(store.list(where)) == 2 * snapshot.KEEP + 1
    store.objects[f"{where}index-{3:012d}.table"] = b"\x00 not a table"  # a corrupt one
    found = snapshot.read(store, where)  # the index alone: the changelog is read whole
    assert found.table is None and found.index.ids == snaps[3].ids
    index_only = snaps[3].to_bytes()  # as written before snapshots held the table
    snapshot.write(store, where, index_only, 4, len(snaps[3]))
    assert snapshot.read(store, where).table is None


class HangingStore(FakeStore):
    """An object store whose writes wait until ``answer`` is set (a gateway that hangs)."""

    def __init__(self) -> None:
        super().__init__()
        self.answer = threading.Event()

    def put_bytes(self, key: str, data: bytes, content_type: str = "") -> str:
        assert self.answer.wait(10)
        return super().put_bytes(key, data, content_type)


def test_a_hanging_object_store_delays_snapshots_not_the_curator(caplog) -> None:  # noqa: ANN001
    """Uploads run in the background, one per shard at a time: the batch that starts one
    goes on at once, and a snapshot due while one is uploading is skipped."""
    settings = Settings(encoder="precomputed", policy="threshold", tau=0.35, k=2)
    _, _, snaps = _curated_table(settings, 2)
    store, where = HangingStore(), snapshot.prefix("app")
    uploads = snapshot.Uploader(store, where)

    async def curate_on() -> None:
        assert uploads.start(snaps[0].to_bytes(), 0, len(snaps[0]))
        assert uploads.busy()
        assert not uploads.start(snaps[1].to_bytes(), 1, len(snaps[1]))  # still uploading
        store.answer.set()
        await uploads.running

    with caplog.at_level(logging.INFO, logger="infogrowth.curator"):
        asyncio.run(curate_on())
    assert not uploads.busy()
    assert snapshot.read(store, where).index.ids == snaps[0].ids
    assert "curator snapshot written" in caplog.text


def _transactional(kafka: str, transactional_id: str) -> Producer:
    producer = Producer({"bootstrap.servers": kafka, "transactional.id": transactional_id})
    producer.init_transactions(30)
    return producer


def _send(producer: Producer, topic: str, partition: int, key: str, entry: dict | None) -> None:
    value = state_codec.encode(entry) if entry is not None else None
    producer.produce(topic, value, json.dumps(key).encode(), partition=partition)


def test_read_entries_gives_the_committed_state_of_one_partition(kafka: str) -> None:
    """A worker that (re)gains a partition restores its committed entries: each key's last
    value, tombstones deleting, nothing of another partition, nothing of the transaction a
    killed owner left open (aborted when the next owner's producer starts)."""
    topic = f"changelog-{uuid.uuid4().hex[:8]}"
    ensure_topics(kafka, [topic], partitions=2, config=COMPACTED)
    owner = _transactional(kafka, f"{topic}-p1")
    owner.begin_transaction()
    _send(owner, topic, 1, "a", state_codec.queued(0, None))
    _send(owner, topic, 1, "b", state_codec.queued(1, b"scored-b"))
    _send(owner, topic, 0, "x", state_codec.rejected(0))  # another shard
    owner.commit_transaction(30)
    owner.begin_transaction()
    _send(owner, topic, 1, "a", None)  # a tombstone
    _send(owner, topic, 1, "b", state_codec.rejected(1))
    _send(owner, topic, 1, "c", state_codec.queued(2, None))
    owner.commit_transaction(30)
    owner.begin_transaction()  # killed with this transaction open
    _send(owner, topic, 1, "c", state_codec.rejected(2))
    _send(owner, topic, 1, "d", state_codec.queued(3, None))
    owner.flush(30)
    assert end_offsets(kafka, topic)[1] < end_offsets(kafka, topic, "read_uncommitted")[1]

    _transactional(kafka, f"{topic}-p1")  # the next owner's producer fences the old one
    entries = state_codec.read_entries(kafka, topic, 1).entries
    assert entries == {"b": state_codec.rejected(1), "c": state_codec.queued(2, None)}


def test_read_and_restore_reads_vectors_only_for_what_the_snapshot_lacks(kafka: str) -> None:
    """The changelog entries a snapshot covers are decoded without their vectors; a snapshot
    the committed table does not cover (its batch aborted) makes it read the partition again
    with every vector and replay it all."""
    settings = Settings(encoder="precomputed", policy="threshold", tau=0.35, k=2)
    live, table, snaps = _curated_table(settings, 3)
    aborted = next(k for k in snaps[1].ids if k not in snaps[0].ids)
    covered, blob = snaps[1].ids, snaps[1].to_bytes()  # a restore inserts into its snapshot
    topic = f"changelog-{uuid.uuid4().hex[:8]}"
    ensure_topics(kafka, [topic], partitions=2, config=COMPACTED)
    owner = _transactional(kafka, f"{topic}-owner")
    owner.begin_transaction()
    for key, entry in table.items():
        _send(owner, topic, 0, key, entry)
        if key != aborted:
            _send(owner, topic, 1, key, entry)  # partition 1: the table without `aborted`
    owner.commit_transaction(30)

    fresh = make_curator(settings)
    entries, restored = state_codec.read_and_restore(
        kafka, topic, 0, fresh.index, fresh.policy, GainIndex.from_bytes(blob)
    )
    assert restored.from_snapshot == len(covered) > 0
    assert restored.index.ids == live.index.ids
    indexed = [k for k, e in entries.items() if e["state"] == "indexed"]
    assert {k for k in indexed if "vectors" not in entries[k]} == set(covered)

    fresh = make_curator(settings)
    entries, restored = state_codec.read_and_restore(
        kafka, topic, 1, fresh.index, fresh.policy, GainIndex.from_bytes(blob)
    )
    assert restored.from_snapshot == 0
    assert restored.index.ids == [k for k in live.index.ids if k != aborted]
    assert all("vectors" in entries[k] for k, e in entries.items() if e["state"] == "indexed")
    got = restored.index.get_vectors(restored.index.ids)["image"]
    assert np.array_equal(got, live.index.get_vectors(restored.index.ids)["image"])


def test_a_failed_restore_is_tried_again_by_the_next_batch(caplog) -> None:  # noqa: ANN001
    """The restore starts at assignment; if it fails (a broker timeout), it is logged and the
    next batch's restore starts it again instead of getting the old failure forever."""
    from types import SimpleNamespace

    from agents.curator import CuratorState

    async def run(fn):  # noqa: ANN001, ANN202 - Context.run_on_index without its executor
        return fn()

    ctx = SimpleNamespace(
        curator=make_curator(Settings()), settings=Settings(), run_on_index=run, selection=None
    )
    state = CuratorState(ctx, "changelog")  # type: ignore[arg-type]
    restored = state_codec.Restored(index=ctx.curator.index)
    answers = iter([TimeoutError("changelog read timed out"), restored])

    def restore_changelog() -> state_codec.Restored:
        answer = next(answers)
        if isinstance(answer, Exception):
            raise answer
        return answer

    state.restore_changelog = restore_changelog  # type: ignore[method-assign]

    async def two_batches() -> None:
        state.start_restore()  # at assignment
        with pytest.raises(TimeoutError):
            await state.restore()  # the first batch
        await state.restore()  # the next one
        assert state.load() is restored

    with caplog.at_level(logging.ERROR, logger="infogrowth.curator"):
        asyncio.run(two_batches())
    assert "restore failed: TimeoutError('changelog read timed out')" in caplog.text


def test_a_snapshot_table_round_trips_what_a_restore_needs() -> None:
    vectors = {"image": np.ones(4, "f4"), "text": np.ones(4, "f4")}
    image_hash = bytes(range(8 * VARIANTS))
    entries = [
        ("a", state_codec.indexed(0, vectors, "cat", nan, image_hash)),
        ("b", state_codec.queued(1, b"\x00scored-b")),
        ("c", state_codec.queued(2, None)),
        ("d", state_codec.rejected(3)),
    ]
    mark = state_codec.Mark("topic-id", 41, b'"d"')
    table, back = state_codec.unpack_table(state_codec.pack_table(entries, mark))
    assert back == mark
    a = table.pop("a")  # no vectors, no label (the snapshot's index has them); NaN kept
    assert a.keys() == {"state", "seq", "gain", "hash"} and math.isnan(a["gain"])
    assert bytes.fromhex(a["hash"]) == image_hash
    assert table == {
        "b": state_codec.queued(1, b"\x00scored-b"),
        "c": state_codec.queued(2, None),
        "d": state_codec.rejected(3),
    }


def _offset_of(kafka: str, topic: str, key: str) -> int:
    wanted = json.dumps(key).encode()
    return next(m.offset() for m in read_topic(kafka, topic) if m.key() == wanted)


def test_a_snapshot_table_makes_a_restore_read_only_the_changelog_tail(kafka: str) -> None:
    """With the table of a snapshot (taken after the 2nd of 4 batches) a restore reads the
    changelog from the snapshot's last record on and restores what a full read restores;
    where the partition does not hold that record (its transaction aborted, another topic
    of the same name) it reads the whole partition."""
    settings = Settings(encoder="precomputed", policy="budget", tau=0.35, budget=20, k=2)
    live, table, snaps = _curated_table(settings, 4)
    keys = list(table)  # in arrival order, 25 per batch
    topic = f"changelog-{uuid.uuid4().hex[:8]}"
    ensure_topics(kafka, [topic], partitions=1, config=COMPACTED)
    owner = _transactional(kafka, f"{topic}-owner")
    for batch in range(4):  # one transaction per batch, as the curator writes them
        owner.begin_transaction()
        for key in keys[25 * batch : 25 * batch + 25]:
            _send(owner, topic, 0, key, table[key])
        owner.commit_transaction(30)
    owner.begin_transaction()  # a batch that aborts: its record cannot be a snapshot's mark
    _send(owner, topic, 0, "gone", state_codec.rejected(100))
    owner.flush(30)
    owner.abort_transaction(30)

    last = keys[49]  # the snapshot's last record
    mark = state_codec.Mark(
        topic_id(kafka, topic), _offset_of(kafka, topic, last), json.dumps(last).encode()
    )
    blob = snaps[1].to_bytes()

    def restore(mark: state_codec.Mark | None) -> tuple[state_codec.Restored, list, list]:
        """The restored state, its index's ids and the decisions on later samples."""
        fresh = make_curator(settings)
        snap, base = None, None
        if mark is not None:
            snap = GainIndex.from_bytes(blob)
            base = state_codec.unpack_table(
                state_codec.pack_table([(k, table[k]) for k in keys[:50]], mark)
            )
        _, restored = state_codec.read_and_restore(
            kafka, topic, 0, fresh.index, fresh.policy, snap, base
        )
        ids = (list(restored.index.ids), restored.index.live)
        fresh.index, fresh.hashes = restored.index, restored.hashes
        later = fresh.select(items(25, 99))  # the policy's memory and the index decide these
        return restored, ids, [(o.decision, o.gain, o.neighbour) for o in later]

    full, full_ids, full_later = restore(None)
    tail, tail_ids, tail_later = restore(mark)
    assert full.read_from == 0 and tail.read_from == mark.offset > 0
    assert tail.from_snapshot == len(snaps[1]) > 0
    assert tail_ids == full_ids == (list(live.index.ids), live.index.live)
    for got in (full, tail):
        assert got.finished == set(keys) and got.next_seq == len(keys)
        assert got.mark == full.mark and got.mark.offset > mark.offset
    expected = [(o.decision, o.gain, o.neighbour) for o in live.select(items(25, 99))]
    assert tail_later == full_later == expected

    aborted = replace(mark, offset=full.mark.offset + 2)  # the aborted record's offset
    for unusable in (aborted, replace(mark, topic_id="another"), replace(mark, key=b'"s0-1"')):
        restored, ids, later = restore(unusable)
        assert restored.read_from == 0 and (ids, later) == (full_ids, full_later)


def test_a_batch_sends_one_changelog_entry_per_sample_its_last() -> None:
    """A sample queued and finished in one batch: only its final entry goes out (both would
    commit in the batch's transaction, and a restore keeps each key's last value); a sample
    still queued at the batch's end goes out queued. In the order the samples came."""
    from types import SimpleNamespace

    from agents.curator import CuratorState

    sent: list[tuple[bytes, bytes, int | None]] = []

    async def publish(topic, key, value, source, partition=None):  # noqa: ANN001, ANN202
        sent.append((key, value, partition))
        future = asyncio.get_running_loop().create_future()
        future.set_result(SimpleNamespace(offset=len(sent) - 1))
        return future

    ctx = SimpleNamespace(
        curator=make_curator(Settings()), settings=Settings(), publish=publish, selection=None
    )
    state = CuratorState(ctx, "changelog", partition=3)  # type: ignore[arg-type]
    vectors = {"image": np.ones(4, np.float32) / 2}
    batch: dict[str, state_codec.Entry] = {}  # the batch's own entries (agents/curator.py Step)
    state.put("a", state_codec.queued(0, b"record a"), batch)
    state.put("b", state_codec.queued(1, b"record b"), batch)
    state.put("a", state_codec.indexed(0, vectors, None, 0.5), batch)
    asyncio.run(state.flush(SimpleNamespace(partition=3), batch))  # type: ignore[arg-type]

    assert [(json.loads(key), partition) for key, _, partition in sent] == [("a", 3), ("b", 3)]
    a, b = (state_codec.decode(value) for _, value, _ in sent)
    assert a["state"] == "indexed" and a["gain"] == 0.5 and b == state_codec.queued(1, b"record b")
    assert state.sent is not None and state.sent[1] == b'"b"'
    assert state.light["a"]["state"] == "indexed"


def test_a_restore_or_select_in_the_selection_process_is_a_step_in_progress() -> None:
    """With ``curator_process`` the curator awaits its child: while it does, the stall
    watchdog must see a step running (as for a step on the index thread), or a restore of
    a long changelog would look like a stalled worker and restart it."""
    from types import SimpleNamespace

    from agents.curator import CuratorState
    from agents.metrics import BATCH_SECONDS, LIVENESS

    class Child:  # SelectionProcess.call, answered when the test says
        def __init__(self) -> None:
            self.answers: list[asyncio.Future] = []

        def call(self, op: str, *args: object) -> asyncio.Future:
            self.answers.append(asyncio.get_running_loop().create_future())
            return self.answers[-1]

    child = Child()
    ctx = SimpleNamespace(curator=make_curator(Settings()), settings=Settings(), selection=child)
    state = CuratorState(ctx, "changelog")  # type: ignore[arg-type]
    selects = BATCH_SECONDS.labels("select")

    async def restore_then_select() -> None:
        restoring = state.start_restore()
        await asyncio.sleep(0)
        assert LIVENESS.steps == 1  # waiting for the child's restore
        child.answers[0].set_result((state_codec.Restored(index=None), {}, 7))
        await restoring
        assert LIVENESS.steps == 0 and state.indexed_count() == 7
        before = selects._sum.get()
        selected = state.select([], [b"record"])
        await asyncio.sleep(0)
        assert LIVENESS.steps == 1  # waiting for the child's select
        child.answers[1].set_result(([], 8, 0.25))
        assert await selected == [] and LIVENESS.steps == 0
        assert state.indexed_count() == 8 and selects._sum.get() == before + 0.25

    asyncio.run(restore_then_select())


@pytest.mark.parametrize("level", [logging.INFO, logging.WARNING])
def test_the_selection_process_logs_at_the_workers_level(level: int, capfd) -> None:  # noqa: ANN001
    """The spawned child sets up its own logging: at the level it is given (the worker's
    --loglevel), tagged, on the worker's stderr. At WARNING its start-up INFO line (which
    GEMM the exact scans use) is not printed."""
    from agents.selection_process import SelectionProcess

    process = SelectionProcess(Settings(), log_level=level)

    async def ready() -> None:  # answered once the child has set up its state
        await process.call("drop", 0)

    try:
        asyncio.run(ready())  # its log lines are written (and flushed) before the answer
    finally:
        process._proc.kill()  # a worker's child goes with the worker's end of the pipe
        process._proc.join(30)
    err = capfd.readouterr().err
    assert ("[selection process]: exact gain search:" in err) == (level == logging.INFO), err
