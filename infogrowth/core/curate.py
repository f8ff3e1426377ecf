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

from infogrowth.core.clean import (
    CAPTION_SOURCE_LABEL,
    NO_CAPTIONER,
    NO_ENCODER,
    Captioner,
    ImageClassifier,
    LabelVerdict,
    classifier_vote,
    entropy_gain,
    knn_vote,
    needs_recaption,
)
from infogrowth.core.dedup import Duplicate, DuplicateRule, HashStore, find_duplicate
from infogrowth.core.encode import Encoded, Encoder, WrongEncoder, encode_batch
from infogrowth.core.filters import (
    REASON_LOW_ALIGNMENT,
    Prefetched,
    ReadBytes,
    make_alignment_filter,
    make_filters,
)
from infogrowth.core.gain import GainIndex, Neighbour, Verdict
from infogrowth.core.sample import Policy, make_policy
from infogrowth.records import (
    REASON_BAD_INPUT,
    REASON_DUPLICATE,
    REASON_MISALIGNED,
    REASON_MISLABELLED,
    REASON_OVER_BUDGET,
    REASON_REDUNDANT,
    BadInput,
    Outcome,
    Sample,
    StoreUnavailable,
)
from infogrowth.settings import Settings


@dataclass
class Scored:
    """A sample that passed input checks, with its embeddings and alignment."""

    sample: Sample
    encoded: Encoded
    caption_source: str = "original"
    original_alignment: float | None = None
    relabelled: bool = False  # single-modal: the classifier replaced the given label
    label_confidence: float | None = None  # single-modal: P(given label | data) (classifier)
    original_label: str | None = None  # single-modal: the given label when relabelled


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
        # (image, text) sizes of this run's embeddings, learnt from the first valid sample
        # when the encoder does not fix them: a later sample of another size is bad input.
        self.embedding_dims: tuple[int, int] | None = None
        # Offline runs stop at the first precomputed row that does not fit an explicitly
        # chosen encoder (one clear error, not one bad_input per row); a worker rejects it.
        self.fail_on_wrong_encoder = False
        self.classifier = (
            ImageClassifier(settings.label_model, settings.device)
            if (settings.mode == "single" and settings.label_model)
            else None
        )
        self.user_labels: dict[str, str] = {}  # labels seen so far: casefolded → as given
        self.hashes = HashStore()  # perceptual hashes of the indexed images (dedup.py)
        self.duplicate_rule = DuplicateRule(
            settings.dup_distance,
            settings.dup_hash_bits,
            settings.dup_hash_distance,
            settings.dup_hash_near,
        )

    # --- step 0: cheap filters, before the encoder (new samples only) ----------------------

    def reset_selection(self) -> None:
        """Forget what was selected (empty index, image hashes and policy) and keep the
        models: a streaming worker that (re)gains a partition restores its state into it."""
        self.index = GainIndex(**self.index.params)
        self.hashes = HashStore()
        self.policy = make_policy(self.settings)

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
        single = self.settings.mode == "single"
        if single:
            samples = [_single_modal_input(s) for s in samples]
        results = encode_batch(
            self.encoder,
            list(samples),
            self.read_bytes,
            expected_dims=self.embedding_dims,
            hash_bits=self.settings.dup_hash_bits,
        )
        results = self._check_run_dims(samples, results)
        out: list[Scored | Outcome] = []
        for sample, res in zip(samples, results, strict=True):
            if isinstance(res, BadInput):
                out.append(rejected(sample, REASON_BAD_INPUT, str(res)))
            else:
                out.append(Scored(sample, res))
        return self._judge_labels(out) if single else out

    def _check_run_dims(
        self, samples: Sequence[Sample], results: list[Encoded | BadInput]
    ) -> list[Encoded | BadInput]:
        """Every embedding of a run has one size: the first valid sample sets it."""
        wrong = next((r for r in results if isinstance(r, WrongEncoder)), None)
        if wrong is not None and self.fail_on_wrong_encoder:
            raise wrong
        checked: list[Encoded | BadInput] = []
        for sample, res in zip(samples, results, strict=True):
            if isinstance(res, Encoded):
                dims = _dims(res)
                self.embedding_dims = self.embedding_dims or dims
                if dims != self.embedding_dims and not sample.has_embeddings:
                    res = BadInput(
                        f"the encoder makes {dims[0]}-d embeddings but this run's are "
                        f"{self.embedding_dims[0]}-d (precomputed): give this row its embeddings"
                    )
            checked.append(res)
        return checked

    # --- single-modal: labels the classifier can judge ------------------------------------
    def _judge_labels(self, items: list[Scored | Outcome]) -> list[Scored | Outcome]:
        """A classifier judges the labels it knows by name; the others wait for the kNN
        vote in ``select`` (their ``label_confidence`` stays None)."""
        scored = [it for it in items if isinstance(it, Scored)]
        judged: dict[int, Scored | Outcome] = {}
        for it, (probs, names) in zip(scored, self._class_probs(scored), strict=True):
            # The user's label set as seen so far, row by row: batches never change a verdict.
            if it.sample.label is not None:
                self.user_labels.setdefault(str(it.sample.label).casefold(), str(it.sample.label))
            verdict = (
                None
                if probs is None
                else classifier_vote(it.sample.label, probs, names, self.user_labels)
            )
            if verdict is not None:
                judged[id(it)] = self._apply_verdict(it, verdict)
        return [judged.get(id(it), it) for it in items]

    def _class_probs(
        self, items: Sequence[Scored]
    ) -> list[tuple[np.ndarray | None, tuple[str, ...]]]:
        """Per item, the classifier's probabilities and class names (None: no classifier)."""
        if self.classifier is not None:
            with_image = [it for it in items if it.sample.image]
            images = [_open_image(self.read_bytes(it.sample.image)) for it in with_image]
            probs = dict(zip(map(id, with_image), self.classifier.probs(images), strict=True))
            return [(probs.get(id(it)), self.classifier.class_names) for it in items]
        names = self.encoder.class_names if self.encoder is not None else None
        return [(it.encoded.probs if names else None, names or ()) for it in items]

    def _apply_verdict(self, item: Scored, verdict: LabelVerdict) -> Scored | Outcome:
        item.label_confidence = verdict.confidence
        if not verdict.doubtful(self.settings.label_confidence):
            return item
        if self.settings.label_action == "reject":
            return rejected(
                item.sample,
                REASON_MISLABELLED,
                _mislabelled_detail(item.sample.label, verdict),
                label_confidence=verdict.confidence,
            )
        item.original_label = item.sample.label
        item.sample = replace(item.sample, label=verdict.winner)
        item.relabelled = True
        return item

    def is_aligned(self, item: Scored) -> bool:
        if self.settings.mode == "single":
            return True  # single-modal samples have no caption to align
        if item.caption_source == CAPTION_SOURCE_LABEL:
            return True  # kept on the user's explicit opt-in, not by a score (see clean.py)
        return not needs_recaption(item.encoded.alignment, self.settings.delta)

    def no_recaption_reason(self) -> str | None:
        """Why misaligned samples are rejected without a new caption; None if they get one."""
        if self.encoder is None:
            return NO_ENCODER
        return NO_CAPTIONER if self.captioner is None else None

    def no_captioner_detail(self) -> str:
        return f"alignment below delta={self.settings.delta}; {self.no_recaption_reason()}"

    def adopt_caption(self, item: Scored, source: str, original_alignment: float | None) -> None:
        """Marks a re-scored sample with where its caption came from. A label caption keeps
        no alignment: the only scorer at hand is built from the labels that wrote it. An
        "original" caption came back unchanged (no captioner, or it failed): it keeps its
        first score, so the verdict is the offline one to the last bit."""
        item.caption_source = source
        item.original_alignment = original_alignment
        if source == "original":
            item.encoded.alignment, item.original_alignment = original_alignment, None
        elif source == CAPTION_SOURCE_LABEL:
            item.encoded.alignment = None

    # --- step 2: recaption the misaligned and re-score ------------------------------------
    def recaption(self, items: Sequence[Scored]) -> list[Scored | Outcome]:
        """New captions for misaligned samples; still below δ → rejected as misaligned."""
        if not items:
            return []
        if self.captioner is None or self.encoder is None:
            return [self._misaligned(it, self.no_captioner_detail()) for it in items]
        try:
            captions = self.new_captions(items)
        except StoreUnavailable:
            raise  # an outage is no verdict on the caption: the caller waits and retries
        except Exception as exc:  # a remote captioner can fail; the samples must not be lost
            return [self._misaligned(it, f"recaption failed: {exc}") for it in items]
        renamed = [replace(it.sample, caption=c) for it, c in zip(items, captions, strict=True)]
        rescored = self.score(renamed)
        out: list[Scored | Outcome] = []
        for it, res in zip(items, rescored, strict=True):
            if isinstance(res, Outcome):
                out.append(res)
                continue
            self.adopt_caption(res, self.captioner.caption_source, it.encoded.alignment)
            if self.is_aligned(res):
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
            images.append(_open_image(self.read_bytes(it.sample.image)))
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
        time in arrival order. A sample whose embeddings are not of the run's sizes, or zero
        or not finite, is rejected as bad input: `scored` takes records from anyone, and
        inference processes each fix the size from their own first row (two of them, or one
        restarted, can differ); the index cannot take it, and the batch used to fail."""
        if not items:
            return []
        dims = [self._vector_dims(it) for it in items]
        run_dims = self.index.dims or next((d for d in dims if all(d.values())), None)
        misfits = {row: detail for row, d in enumerate(dims) if (detail := _misfit(d, run_dims))}
        fitting = [row for row in range(len(items)) if row not in misfits]
        if fitting:
            assert run_dims is not None  # the fitting rows have the run's sizes
            misfits.update(_unusable(items, fitting, list(run_dims)))
        if not misfits:
            return self._select(items)
        chosen = iter(self._select([it for row, it in enumerate(items) if row not in misfits]))
        return [
            rejected(it.sample, REASON_BAD_INPUT, misfits[row]) if row in misfits else next(chosen)
            for row, it in enumerate(items)
        ]

    def _vector_dims(self, item: Scored) -> dict[str, int]:
        """The size of each indexed embedding (0: the sample has none)."""
        dims = {"image": _size(item.encoded.image_emb)}
        if self.settings.mode != "single":
            dims["text"] = _size(item.encoded.text_emb)
        return dims

    def _select(self, items: Sequence[Scored]) -> list[Outcome]:
        if not items:
            return []
        single = self.settings.mode == "single"
        vectors = {"image": np.stack([it.encoded.image_emb for it in items])}
        if not single:
            vectors["text"] = np.stack([it.encoded.text_emb for it in items])
        outcomes: list[Outcome] = []

        def decide(
            row: int,
            gain: float | None,
            nearest: dict[str, Neighbour | None],
            neighbour_labels: list[str | None],
        ) -> Verdict:
            outcome = self._decide(items[row], gain, nearest, neighbour_labels)
            outcomes.append(outcome)
            insert = self.indexes(outcome)
            self.hashes.remove(outcome.evicted)
            image_hash = items[row].encoded.image_hash
            if insert and image_hash is not None:
                self.hashes.add(outcome.id, image_hash)
            return Verdict(insert=insert, remove=outcome.evicted)

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
        self,
        item: Scored,
        gain: float | None,
        nearest: dict[str, Neighbour | None],
        neighbour_labels: list[str | None],
    ) -> Outcome:
        single = self.settings.mode == "single"
        duplicate = self.duplicate_of(item, nearest["image"])
        if single and item.label_confidence is None and duplicate is None:
            # No classifier judged the label: the kNN vote does. On a copy: the index (and
            # the curator's durable state) keep the given label.
            verdict = knn_vote(item.sample.label, neighbour_labels)
            voted = self._apply_verdict(replace(item), verdict)
            if isinstance(voted, Outcome):
                voted.gain = gain
                return voted
            item = voted  # the outcome reports the voted label
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
        if single:
            outcome.label_confidence = item.label_confidence
            outcome.original_label = item.original_label
        if duplicate is not None:
            return _reject(outcome, REASON_DUPLICATE, duplicate.detail, duplicate.neighbour)
        decision = self.policy.decide(item.sample.id, gain)
        if decision.accepted:
            outcome.evicted = list(decision.evicted)
            return outcome
        closest = min((n for n in nearest.values() if n), key=lambda n: n.distance, default=None)
        blame = closest if decision.reason == REASON_REDUNDANT else None
        return _reject(outcome, decision.reason, _gain_detail(gain, self.settings), blame)

    def duplicate_of(self, item: Scored, nearest_image: Neighbour | None) -> Duplicate | None:
        """The kept image ``item`` copies, by embedding distance and perceptual hash."""
        image_hash = item.encoded.image_hash
        if image_hash is None:
            return find_duplicate(self.duplicate_rule, nearest_image, None, None)
        pair_bits = None
        if nearest_image is not None:
            pair_bits = self.hashes.distance(nearest_image.id, image_hash)
        match = self.hashes.nearest(image_hash)
        return find_duplicate(self.duplicate_rule, nearest_image, match, pair_bits)

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


def still_misaligned(item: Scored, delta: float) -> Outcome:
    """The rejection of a sample whose recaption came back still below δ (or unusable)."""
    error = (item.sample.extra.get("extra") or {}).get("recaption_error")
    detail = error or (
        f"alignment {item.original_alignment} and {item.encoded.alignment:.3f} after recaption "
        f"are both below delta={delta}"
    )
    return rejected(
        item.sample,
        REASON_MISALIGNED,
        detail,
        alignment=item.encoded.alignment,
        original_alignment=item.original_alignment,
        caption_source=item.caption_source,
    )


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


def _dims(encoded: Encoded) -> tuple[int, int]:
    text = encoded.text_emb.size if encoded.text_emb is not None else encoded.image_emb.size
    return encoded.image_emb.size, text


def _mislabelled_detail(label: str | None, verdict: LabelVerdict) -> str:
    return (
        f"label {label!r} has confidence {verdict.confidence:.2f}; the evidence prefers "
        f"{verdict.winner!r}"
    )


def _open_image(data: bytes) -> Image.Image:
    return Image.open(io.BytesIO(data)).convert("RGB")


def _single_modal_input(sample: Sample) -> Sample:
    # Single-modal samples carry a label, not a caption; the encoder still wants some text,
    # and a precomputed image embedding stands in for the unused text one.
    if sample.image_embedding is not None and sample.text_embedding is None:
        sample = replace(sample, text_embedding=sample.image_embedding)
    return sample if sample.caption else replace(sample, caption=sample.label or "-")


def _size(vector: np.ndarray | None) -> int:
    return 0 if vector is None else len(vector)


def _misfit(dims: dict[str, int], run_dims: dict[str, int] | None) -> str | None:
    """Why a sample's embeddings cannot enter this run's index, by their sizes (None: they can)."""
    missing = [mod for mod, size in dims.items() if not size]
    if missing:  # `scored` takes a null text embedding (single-modal runs write them)
        return f"no {' or '.join(missing)} embedding, which this run indexes"
    if dims != run_dims:
        assert run_dims is not None  # a sample with every embedding sets them
        return ", ".join(
            f"{mod} embedding of {dims[mod]} dims, this run's are {run_dims[mod]}"
            for mod in run_dims
            if dims[mod] != run_dims[mod]
        )
    return None


def _unusable(items: Sequence[Scored], rows: list[int], modalities: list[str]) -> dict[int, str]:
    """The ``rows`` (of the run's sizes) with an indexed embedding that is zero or not
    finite, which inference rejects and a record written to `scored` by anyone else may
    still carry; one norm call per modality for all of them (one per vector: ~5 us each)."""
    found: dict[int, str] = {}
    for mod in modalities:
        vectors = np.stack([getattr(items[r].encoded, f"{mod}_emb") for r in rows])
        norms = np.linalg.norm(vectors, axis=1)
        for row, usable in zip(rows, np.isfinite(norms) & (norms > 0), strict=True):
            if not usable:
                found.setdefault(row, f"{mod} embedding is zero or not finite")
    return found
