"""A curated partition's selection state (gain index, image hashes, policy): made fresh,
restored from its changelog partition and newest snapshot, selected into, snapshotted.

The worker's curator uses these in its own process, or, with ``curator_process``, a child
process runs them (``SelectionState``, agents/selection_process.py)."""

from __future__ import annotations

import time
from dataclasses import replace

from agents import curator_state as state_codec
from agents import snapshot
from infogrowth.core.curate import Curator
from infogrowth.core.shards import ShardedCurator
from infogrowth.io.messages import scored_from_record
from infogrowth.io.store import ObjectStore
from infogrowth.records import Outcome
from infogrowth.settings import Settings


def fresh_selection(curator: Curator, partition: int) -> Curator:
    """The curator of ``partition`` with an empty selection, whatever an earlier owner of
    the partition left: a shard's own curator when sharded, else the one curator."""
    if isinstance(curator, ShardedCurator):
        return curator.reset_shard(partition)
    curator.reset_selection()
    return curator


def restore_selection(
    settings: Settings,
    curator: Curator,
    changelog: str,
    partition: int,
    store: ObjectStore | None,
    snapshots: str,
) -> tuple[dict[str, state_codec.Entry], state_codec.Restored]:
    """Rebuilds ``curator``'s index, hashes and policy from the committed changelog
    partition (and the newest snapshot under ``snapshots`` when ``store`` is set); returns
    the entries without vectors and the rest of the restored state (gate, finished...)."""
    latest = snapshot.read(store, snapshots) if store else None
    entries, restored = state_codec.read_and_restore(
        settings.kafka_bootstrap,
        changelog,
        partition,
        curator.index,
        curator.policy,
        latest.index if latest else None,
        latest.table if latest else None,
    )
    curator.index = restored.index
    curator.hashes = restored.hashes
    return {key: state_codec.light(entry) for key, entry in entries.items()}, restored


class SelectionState:
    """The child's side of ``curator_process``: one selection per curated partition."""

    def __init__(self, settings: Settings) -> None:
        from infogrowth.commands.offline import make_curator
        from infogrowth.core import exact
        from infogrowth.io.avro import AvroSerde
        from infogrowth.io.schema_registry import use_registry

        exact.load_torch()
        use_registry(settings.schema_registry_url)  # the records' ids, as in the worker
        self.settings = settings
        self.curator = make_curator(settings)
        self.partitions: dict[int, Curator] = {}
        self.store: ObjectStore | None = None
        self.serde = AvroSerde("ScoredSample")

    def restore(
        self, partition: int, changelog: str, snapshots: str | None
    ) -> tuple[state_codec.Restored, dict[str, state_codec.Entry], int]:
        """The partition's state restored here; the parent gets what it keeps (the gate,
        the light entries, the mark), not the index."""
        curator = self.partitions[partition] = fresh_selection(self.curator, partition)
        if snapshots is not None and self.store is None:
            self.store = ObjectStore.from_settings(self.settings)
        light, restored = restore_selection(
            self.settings, curator, changelog, partition, self.store, snapshots or ""
        )
        return replace(restored, index=None, hashes=None), light, len(curator.index)

    def select(self, partition: int, records: list[bytes]) -> tuple[list[Outcome], int, float]:
        """``Curator.select`` of a batch's aligned samples, given as their `scored` records;
        also the index size after it and the seconds it took (the worker's metrics)."""
        started = time.perf_counter()
        items = [scored_from_record(self.serde.decode(raw)) for raw in records]
        curator = self.partitions[partition]
        outcomes = curator.select(items)
        return outcomes, len(curator.index), time.perf_counter() - started

    def snapshot(self, partition: int) -> tuple[bytes, int]:
        index = self.partitions[partition].index
        return index.to_bytes(), len(index)

    def drop(self, partition: int) -> None:
        """The partition went to another worker: its state is freed here."""
        self.partitions.pop(partition, None)
