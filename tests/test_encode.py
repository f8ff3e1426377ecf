"""Encoders and encode_batch: tiny random CLIP, the packaged offline models, bad input."""

from __future__ import annotations

import hashlib
import io
import os
from collections.abc import Sequence
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pytest
from model_fixtures import (
    CLIP_PROJECTION_DIM,
    build_tiny_captioner,
    build_tiny_clip,
    jpeg_bytes,
    packaged_encoder,
    photos,
)
from PIL import Image

from infogrowth.core.encode import (
    ClipEncoder,
    Encoded,
    Encoder,
    ImageFeatures,
    ImagePreprocessor,
    PackagedEncoder,
    alignment_of,
    encode_batch,
    l2_normalise,
    make_encoder,
)
from infogrowth.core.labels import IMAGENET_CLASSES
from infogrowth.records import BadInput, Sample
from infogrowth.settings import Settings


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_clip(tmp_path_factory.mktemp("tiny-clip"))


class FakeEncoder(Encoder):
    """Deterministic 8-d vectors from pixel/byte hashes; fails on 13-px-wide images."""

    name = "fake"
    image_dim = text_dim = 8

    def encode_images(self, images: Sequence[Image.Image]) -> ImageFeatures:
        if any(im.width == 13 for im in images):
            raise RuntimeError("cannot handle width 13")
        emb = l2_normalise(np.stack([_hash_vec(im.tobytes()) for im in images]))
        return ImageFeatures(emb, emb, None)

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        return l2_normalise(np.stack([_hash_vec(t.encode()) for t in texts]))


def _hash_vec(data: bytes) -> np.ndarray:
    digest = hashlib.sha256(data).digest()[:8]
    return np.frombuffer(digest, dtype=np.uint8).astype(np.float32) + 1


def _store(files: dict[str, bytes]):
    def read_bytes(ref: str) -> bytes:
        if ref not in files:
            raise BadInput(f"image not found: {ref}")
        return files[ref]

    return read_bytes


def _png(color: tuple[int, int, int], size: tuple[int, int] = (40, 30)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format="PNG")
    return buf.getvalue()


# --- helpers ------------------------------------------------------------------------------
def test_alignment_is_rowwise_cosine() -> None:
    a = l2_normalise(np.array([[1.0, 0.0], [1.0, 1.0]]))
    t = l2_normalise(np.array([[1.0, 0.0], [0.0, 1.0]]))
    np.testing.assert_allclose(alignment_of(a, t), [1.0, np.sqrt(0.5)], rtol=1e-6)
    assert alignment_of(a[0], t[0]).shape == (1,)


def test_preprocessor_resizes_crops_and_tames_extreme_aspect_ratios() -> None:
    prep = ImagePreprocessor(
        size={"shortest_edge": 32},
        crop={"height": 24, "width": 24},
        mean=(0.5,) * 3,
        std=(0.5,) * 3,
    )
    out = prep([Image.new("RGB", (64, 48), (255, 0, 0)), Image.new("L", (1, 5000))])
    assert out.shape == (2, 3, 24, 24) and out.dtype == np.float32
    np.testing.assert_allclose(out[0, 0], 1.0)  # red channel at 255 → (1 - 0.5) / 0.5
    np.testing.assert_allclose(out[0, 1], -1.0)
    square = ImagePreprocessor(
        size={"height": 20, "width": 10}, crop=None, mean=(0,) * 3, std=(1,) * 3
    )
    assert square([Image.new("RGB", (7, 3))]).shape == (1, 3, 20, 10)


# --- ClipEncoder on a tiny random CLIP ----------------------------------------------------
def test_clip_encoder_returns_normalised_vectors_of_the_projection_dim(tiny_clip: Path) -> None:
    enc = ClipEncoder(str(tiny_clip), device="cpu", batch_size=2)
    images = list(photos().values())[:3]
    feats = enc.encode_images(images)
    texts = enc.encode_texts(["a photo of a cat", "a rocket", "coffee"])
    assert feats.emb.shape == (3, CLIP_PROJECTION_DIM) and texts.shape == (3, CLIP_PROJECTION_DIM)
    assert feats.probs is None and enc.class_names is None
    np.testing.assert_allclose(np.linalg.norm(feats.emb, axis=1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(texts, axis=1), 1.0, rtol=1e-5)
    assert feats.anchor is feats.emb  # CLIP: the image embedding is already in the text space
    assert enc.image_dim == enc.text_dim == CLIP_PROJECTION_DIM
    again = ClipEncoder(str(tiny_clip), device="cpu", batch_size=3).encode_images(images)
    np.testing.assert_allclose(again.emb, feats.emb, atol=1e-5)  # batching does not matter


def test_clip_encoder_through_encode_batch(tiny_clip: Path) -> None:
    enc = make_encoder(Settings(encoder="clip", clip_model=str(tiny_clip), device="cpu"))
    assert isinstance(enc, ClipEncoder)
    files = {"cat.jpg": jpeg_bytes(photos()["chelsea"])}
    out = encode_batch(enc, [Sample("a", image="cat.jpg", caption="a cat")], _store(files))
    assert isinstance(out[0], Encoded)
    assert -1.0 <= out[0].alignment <= 1.0 and out[0].top_label is None


def test_clip_encoder_rejects_other_architectures(tmp_path: Path) -> None:
    path = build_tiny_captioner(tmp_path / "captioner")
    with pytest.raises(ValueError, match="not supported"):
        ClipEncoder(str(path), device="cpu").encode_texts(["x"])
    with pytest.raises(ValueError, match="model path"):
        ClipEncoder("", device="cpu")


def test_make_encoder_kinds() -> None:
    assert make_encoder(Settings(encoder="precomputed")) is None
    assert isinstance(make_encoder(Settings(encoder="packaged", device="cpu")), PackagedEncoder)
    with pytest.raises(ValueError, match="model path"):
        make_encoder(Settings(encoder="clip"))
    with pytest.raises(ValueError, match="packaged\\|clip\\|precomputed"):
        make_encoder(Settings(encoder="nope"))


# --- encode_batch: bad input never spoils a batch -----------------------------------------
def test_encode_batch_turns_each_problem_into_bad_input() -> None:
    files = {
        "red.png": _png((255, 0, 0)),
        "blue.png": _png((0, 0, 255)),
        "junk.png": b"definitely not an image",
        "cut.png": _png((0, 255, 0))[:60],
    }
    samples = [
        Sample("ok1", image="red.png", caption="a red square"),
        Sample("missing", image="nowhere.png", caption="x"),
        Sample("noref", image=None, caption="x"),
        Sample("junk", image="junk.png", caption="x"),
        Sample("truncated", image="cut.png", caption="x"),
        Sample("nocap", image="red.png", caption="  "),
        Sample("nan", image_embedding=[1.0] * 7 + [float("nan")], text_embedding=[1.0] * 8),
        Sample("wrongdim", image_embedding=[1.0] * 4, text_embedding=[1.0] * 4),
        Sample("zero", image_embedding=[0.0] * 8, text_embedding=[1.0] * 8),
        Sample("nested", image_embedding=[[1.0] * 8], text_embedding=[1.0] * 8),
        Sample("ok2", image="blue.png", caption="a blue square"),
        Sample("pre", image_embedding=[2.0] + [0.0] * 7, text_embedding=[1.0, 1.0] + [0.0] * 6),
    ]
    results = encode_batch(FakeEncoder(), samples, _store(files))
    out = dict(zip([s.id for s in samples], results, strict=True))
    expected = {
        "missing": "not found",
        "noref": "missing image reference",
        "junk": "undecodable image",
        "truncated": "undecodable image",
        "nocap": "empty caption",
        "nan": "NaN",
        "wrongdim": "4 dims, expected 8",
        "zero": "zero norm",
        "nested": "1-D",
    }
    for sid, message in expected.items():
        assert isinstance(out[sid], BadInput), sid
        assert message in str(out[sid]), (sid, str(out[sid]))
    alone = encode_batch(FakeEncoder(), [samples[0], samples[10]], _store(files))
    for sid, ref in (("ok1", alone[0]), ("ok2", alone[1])):
        assert isinstance(out[sid], Encoded)
        np.testing.assert_allclose(out[sid].image_emb, ref.image_emb)
        assert out[sid].alignment == pytest.approx(ref.alignment)
    assert out["pre"].alignment == pytest.approx(np.sqrt(0.5), rel=1e-6)
    np.testing.assert_allclose(np.linalg.norm(out["pre"].text_emb), 1.0, rtol=1e-6)


def test_store_errors_become_bad_input() -> None:
    def broken(ref: str) -> bytes:
        raise OSError("connection reset")

    (res,) = encode_batch(FakeEncoder(), [Sample("a", image="s3://b/k", caption="x")], broken)
    assert isinstance(res, BadInput) and "connection reset" in str(res)


def test_an_encoder_failure_is_pinned_on_the_one_sample() -> None:
    files = {"odd.png": _png((1, 2, 3), size=(13, 9)), "ok.png": _png((9, 9, 9))}
    samples = [
        Sample("odd", image="odd.png", caption="x"),
        Sample("ok", image="ok.png", caption="y"),
    ]
    odd, ok = encode_batch(FakeEncoder(), samples, _store(files))
    assert isinstance(odd, BadInput) and "width 13" in str(odd)
    assert isinstance(ok, Encoded)
    # ... but a model that fails on everything is a real error, not bad input.
    with pytest.raises(RuntimeError):
        encode_batch(FakeEncoder(), [samples[0], samples[0]], _store(files))


def test_precomputed_mode_uses_only_carried_embeddings() -> None:
    samples = [
        Sample("a", image_embedding=[1.0, 0.0], text_embedding=[3.0, 4.0]),
        Sample("b", image="x.png", caption="no vectors"),
        Sample("c", image_embedding=[1.0, 0.0, 0.0], text_embedding=[1.0, 0.0]),
    ]
    a, b, c = encode_batch(None, samples, _store({}))
    assert isinstance(a, Encoded) and a.alignment == pytest.approx(0.6)
    assert isinstance(b, BadInput) and "precomputed" in str(b)
    assert isinstance(c, BadInput) and "differ" in str(c)


@pytest.mark.parametrize("dim", [3, 17, 512, 768])
def test_wire_vectors_of_a_batch_encode_as_each_row_alone_bit_for_bit(dim: int) -> None:
    """Float32 vectors (as decoded from the wire) are validated and normalised for the whole
    batch at once; every result is that of the row alone given as lists (validated and
    normalised row by row), bits and reasons."""
    rng = np.random.default_rng(dim)
    pairs = (rng.standard_normal((40, 2, dim)) * rng.uniform(1e-3, 1e3, (40, 1, 1))).astype(
        np.float32
    )
    pairs[3, 0, 1] = np.nan
    pairs[5, 1] = 0.0
    pairs[7, 0, 0] = np.inf
    pairs[9, 1] = 1e30  # finite in float32, its float32 norm is not
    pairs[11, 0] = 1e-44  # subnormal: the norm underflows
    samples = [
        Sample(f"s{i}", image_embedding=im, text_embedding=tx) for i, (im, tx) in enumerate(pairs)
    ]
    together = encode_batch(None, samples, _store({}))
    for sample, res in zip(samples, together, strict=True):
        as_lists = Sample(
            sample.id,
            image_embedding=sample.image_embedding.tolist(),
            text_embedding=sample.text_embedding.tolist(),
        )
        (alone,) = encode_batch(None, [as_lists], _store({}))
        assert type(res) is type(alone), sample.id
        if isinstance(alone, BadInput):
            assert str(res) == str(alone)
            continue
        for field in ("image_emb", "text_emb", "anchor"):
            assert getattr(res, field).tobytes() == getattr(alone, field).tobytes(), field
        assert res.alignment == alone.alignment
    reasons = [str(r) for r in together if isinstance(r, BadInput)]
    assert len(reasons) == 5, reasons


def test_single_modal_samples_need_no_caption() -> None:
    files = {"red.png": _png((255, 0, 0))}
    sample = Sample("a", image="red.png", label="tench")
    (res,) = encode_batch(FakeEncoder(), [sample], _store(files), require_caption=False)
    assert isinstance(res, Encoded)


# --- the packaged offline encoder (real weights) ------------------------------------------
@pytest.mark.slow
def test_packaged_encoder_shapes_norms_and_determinism() -> None:
    enc = packaged_encoder()
    images = list(photos().values())
    feats = enc.encode_images(images)
    assert feats.emb.shape == (len(images), 1280) and feats.anchor.shape == (len(images), 384)
    assert feats.probs.shape == (len(images), 1000) and len(enc.class_names) == 1000
    np.testing.assert_allclose(feats.probs.sum(1), 1.0, rtol=1e-4)
    for arr in (feats.emb, feats.anchor, enc.encode_texts(["a", "b c"])):
        np.testing.assert_allclose(np.linalg.norm(arr, axis=1), 1.0, rtol=1e-5)
    again = enc.encode_images(images[::-1])
    np.testing.assert_allclose(again.emb[::-1], feats.emb, atol=1e-5)
    np.testing.assert_allclose(again.anchor[::-1], feats.anchor, atol=1e-5)


@pytest.mark.slow
def test_packaged_encoder_sees_what_is_in_the_photo() -> None:
    enc = packaged_encoder()
    p = photos()
    feats = enc.encode_images([p["chelsea"], p["coffee"], p["rocket"]])
    cat_classes = {"tabby", "tiger cat", "Persian cat", "Siamese cat", "Egyptian cat"}
    assert IMAGENET_CLASSES[int(feats.probs[0].argmax())] in cat_classes
    assert IMAGENET_CLASSES[int(feats.probs[1].argmax())] in {"espresso", "cup", "coffee mug"}
    texts = enc.encode_texts(["a photo of a cat", "a rocket launching", "a cup of coffee"])
    scores = feats.anchor @ texts.T  # rows: images, columns: captions
    assert scores[0, 0] > scores[0, 1] + 0.2  # the cat is a cat, not a rocket
    assert scores[1, 2] > scores[1, 1]  # coffee beats rocket for the coffee photo
    assert list(scores.argmax(0)) == [0, 2, 1]  # each caption finds its photo


@pytest.mark.slow
def test_packaged_encode_batch_end_to_end() -> None:
    p = photos()
    files = {"cat.jpg": jpeg_bytes(p["chelsea"]), "junk.jpg": b"\xff\xd8 nope"}
    samples = [
        Sample("cat", image="cat.jpg", caption="a cat lying on a rug"),
        Sample("junk", image="junk.jpg", caption="x"),
        Sample("wrong", image="cat.jpg", caption="a rocket launching into the sky"),
        Sample("clip-sized", image_embedding=[1.0] * 512, text_embedding=[1.0] * 512),
    ]
    cat, junk, wrong, clip_sized = encode_batch(packaged_encoder(), samples, _store(files))
    assert isinstance(cat, Encoded) and isinstance(wrong, Encoded)
    assert cat.top_label in {"tabby", "tiger cat", "Egyptian cat"}
    assert cat.image_emb.shape == (1280,) and cat.text_emb.shape == (384,)
    assert cat.alignment > wrong.alignment
    assert isinstance(junk, BadInput) and "undecodable" in str(junk)
    assert isinstance(clip_sized, BadInput) and "expected 1280" in str(clip_sized)


def test_label_prompt_cache_survives_garbage(tmp_path: Path) -> None:
    from infogrowth.core.encode import _read_cached, _write_cached

    path = tmp_path / "sub" / "c.npy"
    assert _read_cached(path, (2, 3)) is None
    arr = np.arange(6, dtype=np.float32).reshape(2, 3)
    _write_cached(path, arr)
    np.testing.assert_array_equal(_read_cached(path, (2, 3)), arr)
    assert _read_cached(path, (3, 2)) is None  # wrong shape → recompute
    path.write_bytes(b"garbage")
    assert _read_cached(path, (2, 3)) is None
