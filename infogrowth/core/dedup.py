"""Near-duplicate images by perceptual hash, next to the embedding distance.

An image embedding made for semantics puts distinct photos of one fabric (or one product,
one scan type) closer together than a JPEG copy of one of them: no embedding threshold
separates them. A perceptual hash of the pixels does: the DCT hash (pHash) keeps the sign of
the lowest 2-D DCT frequencies of a 32×32 grey image against their median, so re-encoding,
resizing and brightness barely move it, while two different textures differ in ~half of it.

Each image carries ``VARIANTS`` hashes: itself, the four crops without ``CROP`` of two
sides (one per corner) and the centre crop without ``CROP``/2 of every side, then the same
six of its mirror image. A kept image stores its first six; a newcomer matches a kept one
when its own (or mirrored) hash is near any stored variant, or one of its (mirrored) crops
is near the stored full hash, so a flipped copy or a copy cropped by up to ~5% from one
corner or around the centre matches whichever of the two arrives first.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from PIL import Image

from infogrowth.core.gain import Neighbour

GREY_SIDE = 32  # the image is reduced to 32×32 grey before the DCT (as pHash does)
CROP = 0.05  # share of each side cut off by the stored crop variants
CROPS = 6  # full image + four corner crops + a centre crop
VARIANTS = 2 * CROPS  # the same six of the mirror image
EXACT = 1e-6  # an embedding distance this small is the same image whatever the hashes say
_DTYPE = np.dtype("<u8")


@lru_cache(maxsize=1)
def _dct_matrix(n: int) -> np.ndarray:
    k, i = np.arange(n)[:, None], np.arange(n)[None, :]
    return np.cos(np.pi * (2 * i + 1) * k / (2 * n))


def low_frequencies(image: Image.Image, side: int) -> np.ndarray:
    """The (side, side) lowest 2-D DCT-II coefficients of a grey image reduced to 32×32."""
    small = image.resize((GREY_SIDE, GREY_SIDE), Image.Resampling.LANCZOS, reducing_gap=2.0)
    dct = _dct_matrix(GREY_SIDE)[:side]
    return dct @ np.asarray(small, dtype=np.float64) @ dct.T


def hash_bits_of(low: np.ndarray) -> int:
    """Bit i is set when low frequency i is above their median (pHash), as one uint64."""
    values = low.ravel()
    flags = np.zeros(64, dtype=bool)
    flags[: values.size] = values > np.median(values)
    return int(np.packbits(flags, bitorder="little").view(_DTYPE)[0])


def _crops(image: Image.Image) -> list[Image.Image]:
    w, h = image.size
    dx, dy = round(w * CROP), round(h * CROP)
    boxes = [(dx, dy, w, h), (0, dy, w - dx, h), (dx, 0, w, h - dy), (0, 0, w - dx, h - dy)]
    boxes.append((dx // 2, dy // 2, w - dx // 2, h - dy // 2))  # CROP shared by both sides
    return [image, *(image.crop(box) for box in boxes)]


def image_hashes(image: Image.Image, bits: int) -> bytes:
    """The ``VARIANTS`` hashes of an image, packed as little-endian uint64 (what
    ``ScoredSample.image_hash`` carries): its ``CROPS`` views, then their mirror images."""
    side = math.isqrt(bits)
    lows = [low_frequencies(view, side) for view in _crops(image.convert("L"))]
    # Mirroring a row of N pixels multiplies its DCT coefficient k by (-1)^k: no second pass.
    mirror = (-1.0) ** np.arange(side)
    views = lows + [low * mirror for low in lows]
    return np.array([hash_bits_of(low) for low in views], dtype=_DTYPE).tobytes()


def usable_hashes(data: bytes | None) -> bytes | None:
    """``data`` when it has this version's layout, else None: a record from another hash
    layout (or a corrupt one) deduplicates by its embedding alone, never stops the curator."""
    return data if data is not None and len(data) == VARIANTS * _DTYPE.itemsize else None


def unpack_hashes(data: bytes) -> np.ndarray:
    hashes = np.frombuffer(data, dtype=_DTYPE)
    if hashes.size != VARIANTS:
        raise ValueError(f"an image hash holds {VARIANTS} uint64, got {len(data)} bytes")
    return hashes


@dataclass(frozen=True)
class HashMatch:
    id: str
    bits: int  # Hamming distance of the closest variant pair


class HashStore:
    """The hashes of the kept images, in insertion order, with a vectorised nearest search.

    Ties go to the earliest kept image, so a replay that inserts and removes the same ids in
    the same order finds the same matches."""

    def __init__(self) -> None:
        self._ids: list[str] = []
        self._position: dict[str, int] = {}
        self._buffer = np.zeros((64, CROPS), dtype=_DTYPE)  # rows past len(self) are spare

    def __len__(self) -> int:
        return len(self._ids)

    def __contains__(self, sample_id: object) -> bool:
        return sample_id in self._position

    @property
    def ids(self) -> list[str]:
        return list(self._ids)

    @property
    def _rows(self) -> np.ndarray:
        return self._buffer[: len(self._ids)]

    def add(self, sample_id: str, hashes: bytes) -> None:
        if sample_id in self._position:
            return  # a redelivered sample is kept once
        row = unpack_hashes(hashes)[:CROPS]
        if len(self._ids) == len(self._buffer):  # amortised growth: no copy per sample
            self._buffer = np.concatenate([self._buffer, np.zeros_like(self._buffer)])
        self._buffer[len(self._ids)] = row
        self._position[sample_id] = len(self._ids)
        self._ids.append(sample_id)

    def remove(self, ids: Iterable[str]) -> None:
        gone = {sample_id for sample_id in ids if sample_id in self._position}
        if not gone:
            return
        keep = [i for i, sample_id in enumerate(self._ids) if sample_id not in gone]
        self._buffer = self._buffer[keep + list(range(len(self._ids), len(self._buffer)))]
        self._ids = [self._ids[i] for i in keep]
        self._position = {sample_id: i for i, sample_id in enumerate(self._ids)}

    def nearest(self, hashes: bytes) -> HashMatch | None:
        """The kept image whose hashes are closest to ``hashes`` (None when empty)."""
        if not self._ids:
            return None
        bits = variant_distances(unpack_hashes(hashes), self._rows)
        best = int(np.argmin(bits))
        return HashMatch(self._ids[best], int(bits[best]))

    def distance(self, sample_id: str, hashes: bytes) -> int | None:
        """Hamming distance to one kept image; None when it has no hash here."""
        position = self._position.get(sample_id)
        if position is None:
            return None
        row = self._buffer[position : position + 1]
        return int(variant_distances(unpack_hashes(hashes), row)[0])


def variant_distances(query: np.ndarray, stored: np.ndarray) -> np.ndarray:
    """(n,) smallest Hamming distance of ``query`` (one image's ``VARIANTS`` hashes) to each
    stored row ((n, ``CROPS``) kept images): its full and mirrored hash against every stored
    variant, its crops against the stored full hash."""
    fulls = query[[0, CROPS]]
    crops = np.delete(query, [0, CROPS])
    whole = np.bitwise_count(fulls[:, None, None] ^ stored[None]).min(axis=(0, 2))
    cropped = np.bitwise_count(crops[:, None] ^ stored[None, :, 0]).min(axis=0)
    return np.minimum(whole, cropped)


@dataclass(frozen=True)
class DuplicateRule:
    dup_distance: float  # embedding cosine distance at or below which images may be copies
    hash_bits: int  # 0: no hashes, embeddings decide alone
    hash_distance: int  # Hamming distance at or below which hashes alone make a copy
    hash_near: int  # ... and at or below which an image within dup_distance is a copy


@dataclass(frozen=True)
class Duplicate:
    neighbour: Neighbour  # distance: 1 − cos, or hash bits / hash size for a hash match
    detail: str


def find_duplicate(
    rule: DuplicateRule,
    nearest_image: Neighbour | None,
    hash_match: HashMatch | None,
    pair_bits: int | None,
) -> Duplicate | None:
    """The kept image a sample copies, or None.

    ``nearest_image``: the nearest kept image by embedding; ``hash_match``: the kept image
    nearest by hash; ``pair_bits``: the hash distance to ``nearest_image`` (None when either
    has no hash: precomputed rows, hashes off). Embedding-near images are copies when their
    hashes agree loosely (``hash_near``) or are missing, or the embeddings are identical;
    hash-near images (``hash_distance``) are copies whatever their embeddings."""
    near = nearest_image is not None and nearest_image.distance <= rule.dup_distance
    if near:
        assert nearest_image is not None
        why = f"image {nearest_image.distance:.4f} from {nearest_image.id} <= dup_distance="
        why += f"{rule.dup_distance}"
        if nearest_image.distance <= EXACT or pair_bits is None:
            return Duplicate(nearest_image, why)
        if pair_bits <= rule.hash_near:
            return Duplicate(nearest_image, f"{why}, hash {pair_bits} bits <= {rule.hash_near}")
    if hash_match is not None and hash_match.bits <= rule.hash_distance:
        distance = hash_match.bits / rule.hash_bits
        detail = (
            f"image hash {hash_match.bits}/{rule.hash_bits} bits from {hash_match.id} "
            f"<= dup_hash_distance={rule.hash_distance}"
        )
        return Duplicate(Neighbour(hash_match.id, distance), detail)
    return None
