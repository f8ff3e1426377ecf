"""bench/quality_bench.py on tiny subsets: its tables have their rows and its checks hold.

A thumbnail encoder stands in for the packaged model, so this runs in seconds."""

from __future__ import annotations

import hashlib
import importlib.util
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from infogrowth.core.encode import Encoder, ImageFeatures

BENCH = Path(__file__).resolve().parents[1] / "bench" / "quality_bench.py"


@pytest.fixture(scope="module")
def qb():  # noqa: ANN201 - the bench script, imported from its path
    spec = importlib.util.spec_from_file_location("quality_bench", BENCH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["quality_bench"] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


class ThumbnailEncoder(Encoder):
    """Image: the centred 16×16 grey thumbnail; text: hashed words. No model."""

    name = "thumbnail"
    image_dim = 256
    text_dim = 16

    def __init__(self) -> None:
        self.images_encoded = 0

    def encode_images(self, images: Sequence[Image.Image]) -> ImageFeatures:
        self.images_encoded += len(images)
        thumbs = np.stack(
            [np.asarray(im.convert("L").resize((16, 16)), dtype=float).ravel() for im in images]
        )
        thumbs -= thumbs.mean(axis=1, keepdims=True)
        emb = thumbs / np.linalg.norm(thumbs, axis=1, keepdims=True)
        anchor = _unit(emb[:, : self.text_dim])
        return ImageFeatures(emb.astype(np.float32), anchor.astype(np.float32), None)

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        out = np.zeros((len(texts), self.text_dim))
        for row, text in enumerate(texts):
            for word in text.split():
                out[row, hashlib.md5(word.encode()).digest()[0] % self.text_dim] += 1
        return _unit(out + 1e-3).astype(np.float32)


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_duplicate_table_flags_copies_and_not_distinct_photos(qb) -> None:  # noqa: ANN001
    photos = qb.demo_photos()[:4]
    table = qb.duplicate_table({"photos": photos}, qb.CachedEncoder(ThumbnailEncoder()))
    assert [row[2] for row in table.rows] == list(qb.TRANSFORMS)
    by_copy = {row[2]: row for row in table.rows}
    for transform in ("resize to 90%", "brightness +10%"):  # the thumbnail hardly changes
        copies, own, distinct = by_copy[transform][3:6]
        assert (copies, own, distinct) == ("4/4", "4", "0")
        assert by_copy[transform][-1] == "yes"
    assert "Target: precision ≥ 0.95" in table.render()


def test_distance_table_separates_copies_from_distinct_photos(qb) -> None:  # noqa: ANN001
    photos = qb.demo_photos()[:4]
    encoder = qb.CachedEncoder(ThumbnailEncoder())
    [row] = qb.distance_table({"photos": photos}, encoder).rows
    assert row[0] == "photos"
    copy_max, distinct_min = float(row[1]), float(row[3])
    assert 0 <= float(row[2]) <= copy_max and distinct_min <= float(row[4]) <= float(row[5])
    assert row[-1] == ("yes" if copy_max <= 0.15 < distinct_min else "**no**")


def test_hash_table_puts_every_copy_below_the_hash_limit(qb) -> None:  # noqa: ANN001
    photos = qb.demo_photos()[:4]
    [row] = qb.hash_table({"photos": photos}, qb.CachedEncoder(ThumbnailEncoder())).rows
    copy_max, copy_p99, distinct_min = int(row[1]), int(row[2]), int(row[3])
    assert copy_p99 <= copy_max <= qb.DEFAULTS.dup_hash_distance < distinct_min
    assert distinct_min <= int(row[4]) <= int(row[5])


def test_cached_encoder_encodes_each_distinct_image_once(qb) -> None:  # noqa: ANN001
    inner = ThumbnailEncoder()
    cached = qb.CachedEncoder(inner)
    a, b = (Image.new("RGB", (20, 20), c) for c in ((10, 20, 30), (200, 0, 0)))
    a.putpixel((0, 0), (255, 255, 255))
    b.putpixel((3, 3), (0, 255, 0))
    first = cached.encode_images([a, b, a])
    again = cached.encode_images([b, a])
    assert inner.images_encoded == 2
    np.testing.assert_array_equal(first.emb[[1, 0]], again.emb)
    np.testing.assert_array_equal(first.emb[0], inner.encode_images([a]).emb[0])


def test_caption_table_scores_right_against_swapped_captions(qb) -> None:  # noqa: ANN001
    photos = qb.demo_photos()[:3]
    table = qb.caption_table(photos, qb.CachedEncoder(ThumbnailEncoder()))
    [row] = table.rows
    assert row[:3] == ["3", "3", "6"]
    assert 0.0 <= float(row[3]) <= 1.0
    assert row[-1] in ("yes", "**no**")


def test_label_vote_finds_flipped_digit_labels(qb) -> None:  # noqa: ANN001
    score, n = qb.digits_label_run(n=400)
    assert (n, score.flipped) == (400, 80)
    assert score.caught / score.flipped >= 0.7  # the kNN vote on 8×8 pixels
    table = qb.label_table({"digits": (score, n)})
    assert [row[0] for row in table.rows] == ["digits"]


def test_efficiency_table_has_every_arm(qb) -> None:  # noqa: ANN001
    scores = qb.efficiency_scores(seeds=2, n_train=150)
    table = qb.efficiency_table(scores, "tiny stream")
    assert [row[0] for row in table.rows] == list(qb.ARMS)
    assert all(len(v) == 2 and min(v) >= 0 and max(v) <= 100 for v in scores.values())
    stream = qb.digit_stream(0, n_train=150)
    assert stream.distinct == 150 and 150 < len(stream.x) <= 450
    assert int(stream.original.sum()) == 150


@pytest.mark.parametrize(
    ("curated", "cleaned", "expected"),
    [
        (92.0, 93.0, ["yes", "yes"]),  # random + 2, full − 0.5; cleaning beats full
        (90.5, 92.0, ["**no**", "**no**"]),  # random + 0.5; cleaning below full
        (91.0, 92.5, ["**no**", "yes"]),  # random + 1 but full − 1.5
    ],
)
def test_efficiency_targets(qb, curated: float, cleaned: float, expected: list[str]) -> None:  # noqa: ANN001
    scores = {arm: [90.0] for arm in qb.ARMS}
    scores.update({"full stream": [92.5], "random 50%": [90.0], "curated 50%": [curated]})
    scores["curated 50% + label cleaning"] = [cleaned]
    rows = {row[0]: row[-1] for row in qb.efficiency_table(scores, "x").rows}
    assert [rows["curated 50%"], rows["curated 50% + label cleaning"]] == expected
