"""The whole InfoGrowth pass over a batch, without Kafka: encode → clean → gain → select.

The streaming agents call the three steps separately (``score``, ``recaption``, ``select``)
on different topics; the offline CLI calls ``curate_batch`` which chains them.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
from PIL import Image

from infogrowth.clean import (
    Captioner,
    clean_label,
    entropy_gain,
    needs_recaption,
)
from infogrowth.encode import Encoded, Encoder, encode_batch
from infogrowth.filters import (
    REASON_LOW_ALIGNMENT,
    Prefetched,
    ReadBytes,
    make_alignment_filter,
    make_filters,
)
from infogrowth.gain import GainIndex, Neighbour, Verdict
from infogrowth.records import (
    REASON_BAD_INPUT,
    REASON_DUPLICATE,
    REASON_MISALIGNED,
    REASON_OVER_BUDGET,
    REASON_REDUNDANT,
    BadInput,
    Outcome,
    Sample,
)
from infogrowth.sample import Policy
from infogrowth.settings import Settings


@dataclass
class Scored:
    """A sample that passed input checks, with its embeddings and alignment."""

    sample: Sample
    encoded: Encoded
    caption_source: str = "original"
    original_alignment: float | None = None
    relabelled: bool = False  # single-modal: the classifier replaced the given label
    label_confidence: float | None = None  # single-modal: P(given label | data)


def rejected(sample: Sample, reason: str, detail: str, **fields: object) -> Outcome:
    return Outcome(
        id=sample.id,
        decision="rejected",
        reason=reason,
        detail=detail,
        caption=sample.caption,
        label=sample.label,
        **fields,  # type: ignore[arg-type]
    )


class Curator:
    """Holds the models, the live gain index and the selection policy of one curation run."""

    def __init__(
        self,
        settings: Settings,
        encoder: Encoder | None,
        captioner: Captioner | None,
        index: GainIndex,
        policy: Policy,
        read_bytes: ReadBytes,
    ) -> None:
        self.settings = settings
        self.encoder = encoder
        self.captioner = captioner
        self.index = index
        self.policy = policy
        self.read_bytes = Prefetched(read_bytes)
        self.filters = make_filters(settings)
        self.alignment_filter = make_alignment_filter(settings)
        # (image, text) sizes precomputed embeddings must have, learnt from the first valid one
        # when the encoder does not fix them: a later sample of another size is bad input.
        self.embedding_dims: tuple[int, int] | None = None
        if settings.mode == "single" and (encoder is None or encoder.class_names is None):
            raise ValueError("single-modal mode needs an encoder with a classifier (packaged)")

    # --- step 0: cheap filters, before the encoder (new samples only) ----------------------
    def score_new(self, samples: Sequence[Sample]) -> list[Scored | Outcome]:
        """``score`` for samples seen for the first time: the DataComp-style filters run
        before the encoder, the alignment-percentile filter on its alignment."""
        screened = [self._screen(s) for s in samples]
        passing = [s for s in screened if isinstance(s, Sample)]
        scored = iter(self.score(passing) if passing else [])
        self.read_bytes.kept.clear()  # what the encoder did not read again (bad input)
        out = [next(scored) if isinstance(s, Sample) else s for s in screened]
        return [self._screen_alignment(s) for s in out]

    def _screen(self, sample: Sample) -> Sample | Outcome:
        for stage in self.filters:
            detail = stage.check(sample, self.read_bytes)
            if detail is not None:
                return rejected(sample, stage.reason, detail)
        return sample

    def _screen_alignment(self, item: Scored | Outcome) -> Scored | Outcome:
        if self.alignment_filter is None or not isinstance(item, Scored):
            return item
        if self.settings.mode == "single" or item.encoded.alignment is None:
            return item
        detail = self.alignment_filter.check_alignment(item.encoded.alignment)
        if detail is None:
            return item
        return rejected(item.sample, REASON_LOW_ALIGNMENT, detail, alignment=item.encoded.alignment)

    # --- step 1: encode + check alignment ------------------------------------------------
    def score(self, samples: Sequence[Sample]) -> list[Scored | Outcome]:
        """Embeddings and alignment per sample; bad input becomes a rejected Outcome."""
        if self.settings.mode == "single":
            samples = [_with_placeholder_caption(s) for s in samples]
        results = encode_batch(
            self.encoder, list(samples), self.read_bytes, expected_dims=self.embedding_dims
        )
        self.embedding_dims = self.embedding_dims or _precomputed_dims(samples, results)
        out: list[Scored | Outcome] = []
        for sample, res in zip(samples, results, strict=True):
            if isinstance(res, BadInput):
                out.append(rejected(sample, REASON_BAD_INPUT, str(res)))
            elif self.settings.mode == "single":
                out.append(self._relabel(Scored(sample, res)))
            else:
                out.append(Scored(sample, res))
        return out

    def _relabel(self, item: Scored) -> Scored:
        """Single-modal cleaning: a label the classifier doubts is replaced by its argmax."""
        assert self.encoder is not None and self.encoder.class_names is not None
        decision = clean_label(
            item.sample.label,
            item.encoded.probs,
            self.encoder.class_names,
            self.settings.label_confidence,
        )
        item.sample = replace(item.sample, label=decision.label)
        item.relabelled = decision.relabelled
        item.label_confidence = decision.confidence
        return item

    def is_aligned(self, item: Scored) -> bool:
        if self.settings.mode == "single":
            return True  # single-modal samples have no caption to align
        return not needs_recaption(item.encoded.alignment, self.settings.delta)

    # --- step 2: recaption the misaligned and re-score ------------------------------------
    def recaption(self, items: Sequence[Scored]) -> list[Scored | Outcome]:
        """New captions for misaligned samples; still below δ → rejected as misaligned."""
        if not items:
            return []
        if self.captioner is None or self.encoder is None:
            why = "no captioner/encoder configured to re-score a new caption"
            return [self._misaligned(it, why) for it in items]
        try:
            captions = self.new_captions(items)
        except Exception as exc:  # a remote captioner can fail; the samples must not be lost
            return [self._misaligned(it, f"recaption failed: {exc}") for it in items]
        renamed = [replace(it.sample, caption=c) for it, c in zip(items, captions, strict=True)]
        rescored = self.score(renamed)
        out: list[Scored | Outcome] = []
        for it, res in zip(items, rescored, strict=True):
            if isinstance(res, Outcome):
                out.append(res)
            elif self.is_aligned(res):
                res.caption_source = "recaptioned"
                res.original_alignment = it.encoded.alignment
                out.append(res)
            else:
                detail = (
                    f"alignment {it.encoded.alignment:.3f} and {res.encoded.alignment:.3f} after "
                    f"recaption are both below delta={self.settings.delta}"
                )
                out.append(self._misaligned(res, detail, original=it.encoded.alignment))
        return out

    def new_captions(self, items: Sequence[Scored]) -> list[str]:
        """The captioner's captions for the images of ``items`` (raises if it fails)."""
        if self.captioner is None:
            raise RuntimeError("no captioner configured")
        images: list[Image.Image] = []
        for it in items:
            if it.sample.image is None:
                raise BadInput(f"{it.sample.id}: no image to caption")
            images.append(Image.open(io.BytesIO(self.read_bytes(it.sample.image))).convert("RGB"))
        return self.captioner.caption(images, [it.encoded.top_label for it in items])

    def _misaligned(self, item: Scored, detail: str, original: float | None = None) -> Outcome:
        return rejected(
            item.sample,
            REASON_MISALIGNED,
            detail,
            alignment=item.encoded.alignment,
            original_alignment=original,
        )

    # --- step 3: gain against the live index, then the online policy ----------------------
    def select(self, items: Sequence[Scored]) -> list[Outcome]:
        """Gain against the kept samples (the index holds only those, except under
        ``--policy all``), duplicate check on the image, then the policy, one sample at a
        time in arrival order."""
        if not items:
            return []
        single = self.settings.mode == "single"
        vectors = {"image": np.stack([it.encoded.image_emb for it in items])}
        if not single:
            vectors["text"] = np.stack([it.encoded.text_emb for it in items])
        outcomes: list[Outcome] = []

        def decide(row: int, gain: float | None, nearest: dict[str, Neighbour | None]) -> Verdict:
            outcome = self._decide(items[row], gain, nearest)
            outcomes.append(outcome)
            return Verdict(insert=self.indexes(outcome), remove=outcome.evicted)

        batch = self.index.gain_and_add(
            [it.sample.id for it in items],
            vectors,
            [it.sample.label for it in items] if single else None,
            decide=decide,
        )
        if single:
            for outcome, labels in zip(outcomes, batch.neighbour_labels, strict=True):
                outcome.label_gain = entropy_gain(outcome.label, labels)
        return outcomes

    def indexes(self, outcome: Outcome) -> bool:
        """Whether a selected sample enters the gain index: the kept ones, or all of them
        under ``--policy all`` (the official semantics)."""
        return outcome.decision == "accepted" or self.settings.policy == "all"

    def _decide(
        self, item: Scored, gain: float | None, nearest: dict[str, Neighbour | None]
    ) -> Outcome:
        single = self.settings.mode == "single"
        outcome = Outcome(
            id=item.sample.id,
            decision="accepted",
            gain=gain,
            alignment=None if single else item.encoded.alignment,
            caption=item.sample.caption if not single else None,
            caption_source=item.caption_source,
            original_alignment=item.original_alignment,
            label=item.sample.label,
            relabelled=single and item.relabelled,
        )
        image = nearest["image"]
        if image is not None and image.distance <= self.settings.dup_distance:
            limit = self.settings.dup_distance
            detail = f"image {image.distance:.4f} from {image.id} <= dup_distance={limit}"
            return _reject(outcome, REASON_DUPLICATE, detail, image)
        decision = self.policy.decide(item.sample.id, gain)
        if decision.accepted:
            outcome.evicted = list(decision.evicted)
            return outcome
        closest = min((n for n in nearest.values() if n), key=lambda n: n.distance, default=None)
        blame = closest if decision.reason == REASON_REDUNDANT else None
        return _reject(outcome, decision.reason, _gain_detail(gain, self.settings), blame)

    # --- everything, for offline use ----------------------------------------------------
    def curate_batch(self, samples: Sequence[Sample]) -> list[Outcome]:
        """Outcomes in input order."""
        return [outcome for outcome, _ in self.curate_items(samples)]

    def curate_items(self, samples: Sequence[Sample]) -> list[tuple[Outcome, Scored | None]]:
        """Outcomes in input order, each with the scored sample behind it (None if bad input)."""
        scored = self.score_new(samples)
        misaligned = [s for s in scored if isinstance(s, Scored) and not self.is_aligned(s)]
        fixed = dict(zip((id(m) for m in misaligned), self.recaption(misaligned), strict=True))
        staged: list[Scored | Outcome] = [fixed.get(id(s), s) for s in scored]
        selected = iter(self.select([s for s in staged if isinstance(s, Scored)]))
        return [(next(selected), s) if isinstance(s, Scored) else (s, None) for s in staged]


def apply_evictions(outcomes: Sequence[Outcome]) -> None:
    """Budget policy: a later, better sample can push an accepted one out of the budget."""
    by_id = {o.id: o for o in outcomes}
    for o in outcomes:
        for evicted_id in o.evicted:
            victim = by_id.get(evicted_id)
            if victim is not None and victim.decision == "accepted":
                victim.decision = "rejected"
                victim.reason = REASON_OVER_BUDGET
                victim.detail = f"pushed out of the budget by {o.id}"


def _reject(outcome: Outcome, reason: str | None, detail: str, by: Neighbour | None) -> Outcome:
    outcome.decision, outcome.reason, outcome.detail = "rejected", reason, detail
    if by is not None:
        outcome.neighbour, outcome.neighbour_distance = by.id, by.distance
    return outcome


def _gain_detail(gain: float | None, settings: Settings) -> str:
    if settings.policy == "threshold" and gain is not None:
        return f"gain {gain:.4f} < tau={settings.tau}"
    return f"outside the budget of {settings.budget}"


def _precomputed_dims(
    samples: Sequence[Sample], results: Sequence[Encoded | BadInput]
) -> tuple[int, int] | None:
    for sample, res in zip(samples, results, strict=True):
        if sample.has_embeddings and isinstance(res, Encoded):
            return res.image_emb.size, res.image_emb.size  # _precomputed checks they are equal
    return None


def _with_placeholder_caption(sample: Sample) -> Sample:
    # Single-modal samples carry a label, not a caption; the encoder still wants some text.
    return sample if sample.caption else replace(sample, caption=sample.label or "-")
