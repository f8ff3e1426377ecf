"""DataComp-style filters: each one alone, then wired into Curator before the encoder."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from infogrowth.commands.offline import make_curator
from infogrowth.core.filters import (
    AlignmentTopFilter,
    CaptionLengthFilter,
    CaptionRepeatFilter,
    ImageShapeFilter,
    Prefetched,
    caption_key,
    make_filters,
)
from infogrowth.records import Sample
from infogrowth.settings import Settings


def png(width: int, height: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (width, height), (200, 30, 30)).save(buf, format="PNG")
    return buf.getvalue()


class Reads:
    """A reader over in-memory images that counts reads per reference."""

    def __init__(self, images: dict[str, bytes]) -> None:
        self.images = images
        self.count: dict[str, int] = {}

    def __call__(self, ref: str) -> bytes:
        self.count[ref] = self.count.get(ref, 0) + 1
        return self.images[ref]


def test_image_shape_filter() -> None:
    reads = Reads({"ok": png(64, 32), "tiny": png(4, 40), "wide": png(400, 100)})
    stage, reader = ImageShapeFilter(min_side=8, max_aspect=3.0), Prefetched(reads)
    assert stage.check(Sample("a", image="ok"), reader) is None
    assert "min_side=8" in (stage.check(Sample("b", image="tiny"), reader) or "")
    assert "max_aspect=3.0" in (stage.check(Sample("c", image="wide"), reader) or "")
    assert stage.check(Sample("d"), reader) is None  # no image: nothing to check
    assert reader.kept.keys() == {"ok"}  # held for the encoder, rejected ones dropped
    reader("ok")
    assert reads.count["ok"] == 1 and not reader.kept


def test_caption_length_filter() -> None:
    stage = CaptionLengthFilter(min_words=2, max_words=4)
    assert stage.check(Sample("a", caption="a red car"), Prefetched(str.encode)) is None
    assert "min_words=2" in (stage.check(Sample("b", caption="photo"), Prefetched(str.encode)))
    too_long = Sample("c", caption="one two three four five")
    assert "max_words=4" in (stage.check(too_long, Prefetched(str.encode)) or "")


def test_caption_repeat_filter_counts_across_the_stream() -> None:
    stage = CaptionRepeatFilter(max_repeats=2)
    captions = ["Image.", "a dog", "image", "IMAGE ", "a dog", "photo"]
    verdicts = [
        stage.check(Sample(str(i), caption=c), Prefetched(str.encode))
        for i, c in enumerate(captions)
    ]
    assert [v is None for v in verdicts] == [True, True, True, False, True, True]
    assert caption_key("  A photo, of   a CAT! ") == "a photo of a cat"


def test_alignment_top_filter_is_exact_and_deterministic() -> None:
    rng = np.random.default_rng(0)
    values = rng.uniform(0, 1, 2000).tolist()
    runs = []
    for _ in range(2):
        stage = AlignmentTopFilter(top=0.3)
        runs.append([stage.check_alignment(v) is None for v in values])
    assert runs[0] == runs[1]
    kept = np.mean(runs[0][200:])  # after a warm-up the running cutoff settles near 0.7
    assert 0.25 < kept < 0.35
    assert AlignmentTopFilter(top=0.3).check_alignment(0.1) is None  # the first one passes


def test_defaults_only_guard_the_image_shape() -> None:
    assert [type(f) for f in make_filters(Settings())] == [ImageShapeFilter]
    assert make_filters(Settings(min_side=0, max_aspect=0)) == []
    single = make_filters(Settings(mode="single", min_words=2, max_caption_repeats=1))
    assert [type(f) for f in single] == [ImageShapeFilter]


@pytest.fixture()
def images(tmp_path: Path) -> Path:
    for name, size in {"tall": (30, 200), "dot": (2, 2)}.items():
        (tmp_path / f"{name}.png").write_bytes(png(*size))
    return tmp_path


def test_curator_rejects_before_the_encoder(images: Path) -> None:
    """Filters reject before any model runs: an encoder that fails on every call is never
    reached by the rejected samples."""
    curator = make_curator(
        Settings(encoder="precomputed", min_words=2, max_caption_repeats=1), base_dir=images
    )
    emb = [1.0, 0.0, 0.0]
    samples = [
        Sample("tall", image="tall.png", caption="a tall thing"),
        Sample("dot", image="dot.png", caption="a dot"),
        Sample("short", caption="photo", image_embedding=emb, text_embedding=emb),
        Sample("first", caption="a cat", image_embedding=emb, text_embedding=emb),
        Sample("again", caption="A cat.", image_embedding=[0, 1.0, 0], text_embedding=[0, 1.0, 0]),
    ]
    out = curator.curate_batch(samples)
    reasons = [o.reason for o in out]
    assert reasons == ["image_shape", "image_shape", "caption_length", None, "caption_repeated"]


def test_alignment_filter_through_the_curator() -> None:
    curator = make_curator(Settings(encoder="precomputed", alignment_top=0.5, delta=0.1, k=1))
    rows = []
    for i, cos in enumerate([0.9, 0.5, 0.95, 0.2, 0.99]):
        image = np.eye(4)[i % 4] if i < 4 else np.ones(4) / 2
        other = np.eye(4)[(i + 1) % 4]
        text = cos * image + np.sqrt(1 - cos**2) * other
        rows.append(Sample(f"s{i}", caption=f"c{i}", image_embedding=image.tolist(),
                           text_embedding=text.tolist()))  # fmt: skip
    out = curator.curate_batch(rows)
    assert [o.reason == "low_alignment" for o in out] == [False, True, False, True, False]
