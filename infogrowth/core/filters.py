"""DataComp-style filters: cheap checks that reject a sample before the gain stage.

Each filter is one small stage with one reason code and its own settings; ``check`` returns
why a sample is rejected (the ``detail``) or None. The image and caption filters run before
the encoder on original samples (not on new captions); the alignment filter runs on the
encoder's alignment. Filters that count (repeated captions, the alignment quantile) keep
their state in memory and decide in arrival order, so a replay from offset 0 decides the
same; a streaming worker restarted after a crash starts counting again.
"""

from __future__ import annotations

import io
import re
from collections import Counter
from collections.abc import Callable
from typing import Protocol

from PIL import Image
from sortedcontainers import SortedList

from infogrowth.records import BadInput, Sample, StoreUnavailable
from infogrowth.settings import Settings

REASON_IMAGE_SHAPE = "image_shape"
REASON_CAPTION_LENGTH = "caption_length"
REASON_CAPTION_REPEATED = "caption_repeated"
REASON_LOW_ALIGNMENT = "low_alignment"

ReadBytes = Callable[[str], bytes]


class Prefetched:
    """A reader that serves once the bytes a filter already read (an image header check
    must not cost a second S3 GET when the encoder reads the same image)."""

    def __init__(self, read_bytes: ReadBytes) -> None:
        self.read_bytes = read_bytes
        self.kept: dict[str, bytes] = {}

    def __call__(self, ref: str) -> bytes:
        data = self.kept.pop(ref, None)
        return self.read_bytes(ref) if data is None else data

    def keep(self, ref: str) -> bytes:
        """Reads ``ref`` and holds its bytes for the next read of the same reference."""
        data = self.kept[ref] = self(ref)
        return data

    def forget(self, ref: str) -> None:
        self.kept.pop(ref, None)


class SampleFilter(Protocol):
    reason: str

    def check(self, sample: Sample, reader: Prefetched) -> str | None: ...


class ImageShapeFilter:
    """Images with a side below ``min_side`` pixels or an aspect ratio (long / short side)
    above ``max_aspect`` (DataComp's basic filter keeps 1/3 … 3). Reads the image header
    only; samples without an image, or with precomputed embeddings, pass."""

    reason = REASON_IMAGE_SHAPE

    def __init__(self, min_side: int, max_aspect: float) -> None:
        self.min_side = min_side
        self.max_aspect = max_aspect

    def check(self, sample: Sample, reader: Prefetched) -> str | None:
        if sample.image is None or sample.has_embeddings:
            return None
        try:
            width, height = Image.open(io.BytesIO(reader.keep(sample.image))).size
        except StoreUnavailable:
            raise  # an outage: the caller waits and retries the batch
        except (BadInput, OSError, ValueError, Image.DecompressionBombError):
            return None  # unreadable: the encoder reports it as bad_input
        problem = self._problem(width, height)
        if problem is not None:
            reader.forget(sample.image)
        return problem

    def _problem(self, width: int, height: int) -> str | None:
        short, long = min(width, height), max(width, height)
        if short < self.min_side:
            return f"image {width}x{height}: a side below min_side={self.min_side}"
        if long > self.max_aspect * short:
            return f"image {width}x{height}: aspect ratio above max_aspect={self.max_aspect}"
        return None


class CaptionLengthFilter:
    """Captions shorter than ``min_words`` or longer than ``max_words`` (0: no bound)."""

    reason = REASON_CAPTION_LENGTH

    def __init__(self, min_words: int, max_words: int) -> None:
        self.min_words = min_words
        self.max_words = max_words

    def check(self, sample: Sample, reader: Prefetched) -> str | None:
        words = len((sample.caption or "").split())
        if words < self.min_words:
            return f"caption of {words} words < min_words={self.min_words}"
        if self.max_words and words > self.max_words:
            return f"caption of {words} words > max_words={self.max_words}"
        return None


def caption_key(caption: str | None) -> str:
    """A caption with case, punctuation and spacing folded: "Image." and "image" repeat."""
    return " ".join(re.sub(r"[^\w\s]", " ", (caption or "").lower()).split())


class CaptionRepeatFilter:
    """Captions seen more than ``max_repeats`` times so far in the stream (boilerplate such
    as "image" or "photo"): the first ``max_repeats`` pass, later ones are rejected."""

    reason = REASON_CAPTION_REPEATED

    def __init__(self, max_repeats: int) -> None:
        self.max_repeats = max_repeats
        self.seen: Counter[str] = Counter()

    def check(self, sample: Sample, reader: Prefetched) -> str | None:
        key = caption_key(sample.caption)
        self.seen[key] += 1
        if self.seen[key] > self.max_repeats:
            return f"caption {key!r} seen {self.seen[key]} times > max_repeats={self.max_repeats}"
        return None


class AlignmentTopFilter:
    """Keeps the top ``top`` fraction by alignment, online: a sample passes when fewer than
    ``top`` of all the alignments seen so far (itself included) are higher than its own.
    Exact and in arrival order (DataComp keeps the CLIP-score top 30%, offline)."""

    reason = REASON_LOW_ALIGNMENT

    def __init__(self, top: float) -> None:
        self.top = top
        self.seen: SortedList = SortedList()

    def check_alignment(self, alignment: float) -> str | None:
        self.seen.add(alignment)
        higher = len(self.seen) - self.seen.bisect_right(alignment)
        if higher < self.top * len(self.seen):
            return None
        share = higher / len(self.seen)
        return f"alignment {alignment:.3f}: {share:.0%} of those seen are higher (top={self.top})"


def make_filters(settings: Settings) -> list[SampleFilter]:
    """The pre-encoder filters the settings switch on, cheapest first."""
    filters: list[SampleFilter] = []
    captions = settings.mode != "single"  # single-modal samples carry a label, not a caption
    if captions and (settings.min_words or settings.max_words):
        filters.append(CaptionLengthFilter(settings.min_words, settings.max_words))
    if captions and settings.max_caption_repeats:
        filters.append(CaptionRepeatFilter(settings.max_caption_repeats))
    if settings.min_side or settings.max_aspect:
        filters.append(ImageShapeFilter(settings.min_side, settings.max_aspect or float("inf")))
    return filters


def make_alignment_filter(settings: Settings) -> AlignmentTopFilter | None:
    return AlignmentTopFilter(settings.alignment_top) if settings.alignment_top < 1 else None
