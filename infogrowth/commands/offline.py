"""Offline curation of a file: build the stages from Settings and run them batch by batch."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm import tqdm

from infogrowth.commands.shards import settings_centroids
from infogrowth.core.clean import CAPTION_SOURCE_LABEL, make_captioner
from infogrowth.core.curate import Curator, ReadBytes, apply_evictions, rejected
from infogrowth.core.encode import Encoder, make_encoder
from infogrowth.core.gain import GainIndex
from infogrowth.core.sample import make_policy
from infogrowth.core.shards import ShardedCurator
from infogrowth.io.files import RowWriter, count_rows, read_rows
from infogrowth.io.store import ObjectStore, read_reference
from infogrowth.records import REASON_BAD_INPUT, REASON_MISALIGNED, Outcome, Sample
from infogrowth.settings import Settings


def make_reader(settings: Settings, base_dir: Path | None = None) -> ReadBytes:
    """Image bytes by reference; relative paths are tried against ``base_dir`` first."""
    store: list[ObjectStore] = []  # created on the first s3:// reference only

    def read(ref: str) -> bytes:
        if ref.startswith("s3://"):
            if not store:
                store.append(ObjectStore.from_settings(settings))
            return read_reference(ref, store[0])
        if base_dir is not None and "://" not in ref and not Path(ref).is_absolute():
            candidate = base_dir / ref
            if candidate.exists():
                ref = str(candidate)
        return read_reference(ref, None)

    return read


def make_index(settings: Settings) -> GainIndex:
    modalities = ("image",) if settings.mode == "single" else ("image", "text")
    return GainIndex(
        modalities=modalities,
        k=settings.k,
        m=settings.hnsw_m,
        ef_construction=settings.hnsw_ef_construction,
        ef=settings.hnsw_ef,
        mean=settings.gain_mean,
        exact_limit=settings.exact_limit,
    )


def make_curator(
    settings: Settings, base_dir: Path | None = None, encoder: Encoder | None = None
) -> Curator:
    """The run's curator: sharded when ``settings.centroids`` names a centroid file.
    ``encoder``: an already loaded model to reuse (default: load the settings' one)."""
    encoder = encoder if encoder is not None else make_encoder(settings)
    curator = Curator(
        settings,
        encoder=encoder,
        captioner=make_captioner(settings, encoder),
        index=make_index(settings),
        policy=make_policy(settings),
        read_bytes=make_reader(settings, base_dir),
    )
    return sharded(curator)


def sharded(curator: Curator) -> Curator:
    """``curator`` split into shards when its settings name a centroid file."""
    centroids = settings_centroids(curator.settings)
    return curator if centroids is None else ShardedCurator(curator, centroids)


def row_sample(row: dict[str, Any], seen: set[str]) -> Sample | Outcome:
    """A Sample, or a rejection when the row itself is unusable (bad JSON, no id, repeated id)."""
    sample = Sample.from_dict({k: v for k, v in row.items() if not k.startswith("_")})
    if "_error" in row:
        return rejected(sample, REASON_BAD_INPUT, row["_error"])
    if not sample.id:
        return rejected(sample, REASON_BAD_INPUT, "missing id")
    if sample.id in seen:
        return rejected(sample, REASON_BAD_INPUT, f"duplicate id {sample.id!r}")
    seen.add(sample.id)
    return sample


RowSink = Callable[[dict[str, Any], Outcome], None]


def curate_outcomes(
    rows: Iterator[dict[str, Any]],
    curator: Curator,
    total: int | None,
    progress: bool,
    write: RowSink | None = None,
) -> list[Outcome]:
    """One Outcome per row, in row order. ``write`` gets each row with its outcome, in row
    order, once its batch is curated, so rows are held a batch at a time; a budget eviction
    later may still turn an accepted outcome into a rejected one (compare the decisions)."""
    outcomes: list[Outcome] = []
    seen: set[str] = set()
    batch: list[tuple[int, Sample]] = []
    held: list[tuple[int, dict[str, Any]]] = []  # rows not yet written, in order
    bar = tqdm(total=total, unit="sample", desc="curate", disable=not progress)

    def release() -> None:
        if write is not None:
            for pos, row in held:
                write(row, outcomes[pos])
        held.clear()

    def flush() -> None:
        results = curator.curate_batch([s for _, s in batch])
        for (pos, _), outcome in zip(batch, results, strict=True):
            outcomes[pos] = outcome
        bar.update(len(batch))
        batch.clear()
        release()

    for row in rows:
        item = row_sample(row, seen)
        held.append((len(outcomes), row))
        outcomes.append(item if isinstance(item, Outcome) else None)  # type: ignore[arg-type]
        if isinstance(item, Outcome):
            bar.update(1)
        else:
            batch.append((len(outcomes) - 1, item))
        if len(batch) >= curator.settings.batch_size:
            flush()
        elif not batch:
            release()
    if batch:
        flush()
    bar.close()
    apply_evictions(outcomes)
    return outcomes


def output_row(row: dict[str, Any], outcome: Outcome, single: bool) -> dict[str, Any]:
    out = {k: v for k, v in row.items() if not k.startswith("_")}
    out.update(
        decision=outcome.decision,
        reason=outcome.reason,
        detail=outcome.detail,
        gain=outcome.gain,
        alignment=outcome.alignment,
        caption=outcome.caption if not single else row.get("caption"),
        caption_source=outcome.caption_source,
        neighbour=outcome.neighbour,
        neighbour_distance=outcome.neighbour_distance,
    )
    if single:
        out.update(
            label=outcome.label,
            relabelled=outcome.relabelled,
            label_gain=outcome.label_gain,
            label_confidence=outcome.label_confidence,
            original_label=outcome.original_label,
        )
    return out


@dataclass
class Summary:
    counts: Counter[str]  # "accepted", "rejected:<reason>"
    gains: list[float]
    recaptioned: Counter[str]  # final decision of the samples that got a new caption
    notes: list[str] = field(default_factory=list)  # what the user should know about the run

    @classmethod
    def of(cls, outcomes: list[Outcome], no_recaption: str | None = None) -> Summary:
        """``no_recaption``: why misaligned samples got no new caption (None: they could)."""
        counts = Counter(
            o.decision if o.reason is None else f"{o.decision}:{o.reason}" for o in outcomes
        )
        summary = cls(
            counts=counts,
            gains=[o.gain for o in outcomes if o.gain is not None],
            recaptioned=Counter(o.decision for o in outcomes if o.caption_source == "recaptioned"),
        )
        misaligned = counts[f"rejected:{REASON_MISALIGNED}"]
        if misaligned and no_recaption:
            summary.notes.append(
                f"{misaligned} misaligned samples were rejected, not recaptioned: {no_recaption}"
            )
        labelled = sum(1 for o in outcomes if o.caption_source == CAPTION_SOURCE_LABEL)
        if labelled:
            summary.notes.append(
                f"{labelled} samples got an unscored label caption (--captioner label, "
                f"caption_source={CAPTION_SOURCE_LABEL})"
            )
        return summary


def curate_file(src: Path, dst: Path, settings: Settings, progress: bool = True) -> Summary:
    """Curate ``src`` into ``dst`` (one output row per input row, same order)."""
    if not src.exists():
        raise FileNotFoundError(f"{src}: no such file")
    curator = make_curator(settings, base_dir=src.parent)
    curator.fail_on_wrong_encoder = True  # one clear error instead of a bad_input per row
    total = count_rows(src) if progress else None  # a pass over the file, for the bar only
    single = settings.mode == "single"
    written: list[dict[str, Any]] = []  # each row's decision as written

    with RowWriter(dst) as writer:

        def write(row: dict[str, Any], outcome: Outcome) -> None:
            writer.write(output_row(row, outcome, single))
            written.append(_decision(outcome))

        outcomes = curate_outcomes(read_rows(src), curator, total, progress, write)
        for position, (outcome, before) in enumerate(zip(outcomes, written, strict=True)):
            if _decision(outcome) != before:  # evicted from the budget after it was written
                writer.update(position, _decision(outcome))
    return Summary.of(outcomes, curator.no_recaption_reason())


_DECISION_FIELDS = ("decision", "reason", "detail")  # what apply_evictions changes


def _decision(outcome: Outcome) -> dict[str, Any]:
    return {name: getattr(outcome, name) for name in _DECISION_FIELDS}
