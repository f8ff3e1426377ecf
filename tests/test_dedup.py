"""Near-duplicate images by perceptual hash: the hash store, the decision rule, and the
offline curator on textiles, where embeddings alone call every distinct fabric a copy."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps

from infogrowth.commands.offline import make_curator
from infogrowth.core.dedup import (
    VARIANTS,
    DuplicateRule,
    HashMatch,
    HashStore,
    find_duplicate,
    image_hashes,
)
from infogrowth.core.gain import Neighbour
from infogrowth.io.avro import AvroSerde
from infogrowth.io.messages import scored_from_record, scored_record
from infogrowth.records import REASON_DUPLICATE, Sample
from infogrowth.settings import Settings

RULE = DuplicateRule(dup_distance=0.15, hash_bits=64, hash_distance=8, hash_near=12)


def hashes(*values: int) -> bytes:
    """An image hash whose ten variants are ``values`` (the last one repeated)."""
    padded = list(values) + [values[-1]] * (VARIANTS - len(values))
    return np.array(padded, dtype="<u8").tobytes()


def test_the_store_finds_the_nearest_kept_hash_and_forgets_evicted_ones() -> None:
    store = HashStore()
    store.add("a", hashes(0b1111))
    store.add("b", hashes(0xFFFF_0000))
    assert store.nearest(hashes(0b0111)) == HashMatch("a", 1)
    assert store.distance("b", hashes(0b0111)) == 16 + 3
    store.remove(["a"])
    assert store.ids == ["b"] and "a" not in store
    assert store.nearest(hashes(0b0111)) == HashMatch("b", 19)
    assert store.distance("a", hashes(0)) is None


def test_ties_go_to_the_earliest_kept_image() -> None:
    store = HashStore()
    for name in ("first", "second"):
        store.add(name, hashes(0))
    store.add("first", hashes(0xFF))  # a redelivery changes nothing
    assert store.nearest(hashes(1)) == HashMatch("first", 1)


def test_a_newcomer_matches_a_kept_crop_variant_and_a_kept_image_matches_its_crop() -> None:
    store = HashStore()
    store.add("orig", hashes(0, 0xFF00))  # full hash 0, its first corner crop 0xFF00
    assert store.nearest(hashes(0xFF00, 0xABCD)).bits == 0  # a copy cropped like variant 1
    mirrored = hashes(0xF0F0, 0xF0F0, 0xF0F0, 0xF0F0, 0xF0F0, 0)  # its mirror hash is 0
    assert store.nearest(mirrored).bits == 0


def test_hashes_alone_make_a_duplicate_within_hash_distance() -> None:
    far = Neighbour("x", 0.9)
    dup = find_duplicate(RULE, far, HashMatch("orig", 8), pair_bits=30)
    assert dup is not None and dup.neighbour == Neighbour("orig", 8 / 64)
    assert "dup_hash_distance=8" in dup.detail
    assert find_duplicate(RULE, far, HashMatch("orig", 9), pair_bits=30) is None


def test_embedding_near_images_need_hashes_that_agree() -> None:
    near = Neighbour("fabric", 0.01)
    assert find_duplicate(RULE, near, HashMatch("other", 20), pair_bits=13) is None
    dup = find_duplicate(RULE, near, HashMatch("other", 20), pair_bits=12)
    assert dup is not None and dup.neighbour == near
    exact = find_duplicate(RULE, Neighbour("same", 0.0), HashMatch("other", 20), pair_bits=40)
    assert exact is not None and exact.neighbour.id == "same"


def test_without_hashes_the_embedding_decides_alone() -> None:
    dup = find_duplicate(RULE, Neighbour("n", 0.15), None, pair_bits=None)
    assert dup is not None and dup.neighbour == Neighbour("n", 0.15)
    assert find_duplicate(RULE, Neighbour("n", 0.16), None, pair_bits=None) is None
    assert find_duplicate(RULE, None, None, None) is None


def test_the_hash_travels_in_the_scored_record() -> None:
    """A replay from the scored topic sees the hash the live run saw."""
    curator = make_curator(Settings(encoder="precomputed"))
    row = Sample("s", caption="c", image_embedding=[1.0, 0.0], text_embedding=[1.0, 0.0])
    (item,) = curator.score([row])
    item.encoded.image_hash = hashes(7, 8, 9)
    serde = AvroSerde("ScoredSample")
    record = serde.decode(serde.encode(scored_record(item, 0)))
    assert scored_from_record(record).encoded.image_hash == hashes(7, 8, 9)


# --- textiles: distinct fabrics that embeddings cannot tell apart -------------------------
def textiles(n: int) -> list[Path]:
    import conformal_clip_data as ccd  # the dev extra installs it: never a silent skip

    return sorted(Path(ccd.nominal_dir()).glob("*.jpg"))[:n]


def jpeg_q70(image: Image.Image) -> Image.Image:
    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=70)
    return Image.open(io.BytesIO(buf.getvalue())).convert("RGB")


def test_copies_of_a_textile_hash_close_and_distinct_textiles_far() -> None:
    paths = textiles(20)
    originals = [Image.open(p).convert("RGB") for p in paths]
    store = HashStore()
    for path, image in zip(paths[1:], originals[1:], strict=True):
        store.add(path.stem, image_hashes(image, 64))
    assert store.nearest(image_hashes(originals[0], 64)).bits > Settings().dup_hash_distance
    w, h = originals[1].size
    centre = originals[1].crop((w // 40, h // 40, w - w // 40, h - h // 40)).resize((w, h))
    for copy in (ImageOps.mirror(originals[1]), jpeg_q70(originals[1]), centre):
        match = store.nearest(image_hashes(copy, 64))
        assert match is not None and match.id == paths[1].stem
        assert match.bits < Settings().dup_hash_distance


@pytest.mark.slow
def test_curate_keeps_distinct_textiles_and_rejects_copies_naming_their_original(
    tmp_path: Path,
) -> None:
    """Before image hashes, every textile after the first was a 'duplicate' of the first."""
    paths = textiles(20)
    flipped, jpeg = tmp_path / "flipped.png", tmp_path / "jpeg.png"
    ImageOps.mirror(Image.open(paths[3]).convert("RGB")).save(flipped)
    jpeg_q70(Image.open(paths[7]).convert("RGB")).save(jpeg)
    rows = [Sample(p.stem, image=str(p), label="nominal") for p in paths]
    rows += [Sample("flipped", image=str(flipped), label="nominal")]
    rows += [Sample("jpeg", image=str(jpeg), label="nominal")]
    settings = Settings(mode="single", encoder="packaged", device="cpu", tau=0.0)
    outcomes = make_curator(settings).curate_batch(rows)
    assert [o.decision for o in outcomes[:20]] == ["accepted"] * 20, json.dumps(
        [o.detail for o in outcomes[:20]]
    )
    copies = {o.id: o for o in outcomes[20:]}
    assert copies["flipped"].reason == REASON_DUPLICATE
    assert copies["flipped"].neighbour == paths[3].stem
    assert copies["jpeg"].reason == REASON_DUPLICATE
    assert copies["jpeg"].neighbour == paths[7].stem
    assert copies["jpeg"].neighbour_distance is not None


def test_only_kept_images_are_duplicate_candidates() -> None:
    """A rejected image's hash is not stored: a copy of it is judged on its own merits."""
    curator = make_curator(Settings(encoder="precomputed", policy="budget", budget=1))
    axes = np.eye(4).tolist()
    rows = [
        Sample(n, caption="c", image_embedding=v, text_embedding=v)
        for n, v in zip(("kept", "over", "copy-of-over", "copy-of-kept"), axes, strict=True)
    ]
    items = curator.score(rows)
    for item, value in zip(items, (0, 0xFFFF_FFFF, 0xFFFF_FFFF, 1), strict=True):
        item.encoded.image_hash = hashes(value)
    out = {o.id: o for o in curator.select(items)}
    assert out["kept"].decision == "accepted" and out["over"].reason == "over_budget"
    assert out["copy-of-over"].reason == "over_budget"
    assert out["copy-of-kept"].reason == REASON_DUPLICATE
    assert out["copy-of-kept"].neighbour == "kept"
    assert curator.hashes.ids == ["kept"]


def test_a_hash_of_another_layout_is_ignored_not_fatal() -> None:
    """A ScoredSample whose image_hash has another length (an older layout, a corrupt
    producer) deduplicates by embedding alone instead of stopping the curator."""
    from infogrowth.core.dedup import VARIANTS, usable_hashes
    from infogrowth.io.messages import scored_from_record

    good = bytes(8 * VARIANTS)
    assert usable_hashes(good) == good
    assert usable_hashes(bytes(80)) is None and usable_hashes(None) is None
    record = {"id": "a", "image_embedding": [1.0, 0.0], "alignment": 0.5, "image_hash": b"x" * 80}
    assert scored_from_record(record).encoded.image_hash is None
