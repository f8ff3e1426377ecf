"""The paper's claims in miniature, on data that ships in packages (nothing is downloaded).

Every number comes from the engine's own code path: a ``Curator`` built from ``Settings``
(as ``infogrowth curate`` builds it) runs over rows through ``curate_outcomes``, and the
tables read the outcomes' ``reason``, ``alignment``, ``relabelled`` and ``label`` fields.

a. duplicate detection per transform (JPEG q70, resize 90%, crop 5%, brightness, flip) on the
   demo photos (scikit-image + scikit-learn) and conformal-clip-data textiles, packaged
   encoder, default ``dup_distance``;
b. wrong-caption detection: ROC-AUC of the alignment score, right vs swapped captions;
c. label-noise detection (kNN label vote) on sklearn digits and the textiles, 20% flipped;
d. data efficiency on digits with injected near-duplicates and 20% label noise: logistic
   regression trained on the curated 50% (budget policy) vs a random 50% vs the full stream.

    .venv/bin/python bench/quality_bench.py                  # ~7 min on two CPU cores
    .venv/bin/python bench/quality_bench.py --textiles-per-class 50 --seeds 2
"""

from __future__ import annotations

import argparse
import hashlib
import io
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageEnhance, ImageOps

from infogrowth.commands.offline import curate_outcomes, make_curator
from infogrowth.core.dedup import CROPS, image_hashes, unpack_hashes, variant_distances
from infogrowth.core.encode import Encoder, ImageFeatures, PackagedEncoder
from infogrowth.records import REASON_DUPLICATE, Outcome
from infogrowth.settings import Settings

DEFAULTS = Settings()
LABEL_NOISE = 0.2
DEMO_DELTA = 0.25  # the demo's δ for the packaged encoder (README, "Two commands")


# --- the engine, as `infogrowth curate` runs it -------------------------------------------
def curate_rows(
    rows: Sequence[dict[str, Any]], settings: Settings, encoder: Encoder | None = None
) -> list[Outcome]:
    """One Outcome per row, from a Curator assembled like ``offline.make_curator`` (the
    encoder is passed in so that one loaded model serves every run)."""
    curator = make_curator(settings, encoder=encoder)
    return curate_outcomes(iter(rows), curator, len(rows), progress=False)


class CachedEncoder(Encoder):
    """An encoder that computes each distinct image once: the five duplicate runs and the
    textile label run see the same originals. Embeddings are the wrapped encoder's."""

    def __init__(self, inner: Encoder) -> None:
        self.inner = inner
        self.name, self.class_names = inner.name, inner.class_names
        self.image_dim, self.text_dim = inner.image_dim, inner.text_dim
        self.batch_size, self.device = inner.batch_size, inner.device
        self.explicit = inner.explicit
        self.cache: dict[bytes, tuple[np.ndarray, np.ndarray, np.ndarray | None]] = {}

    def encode_images(self, images: Sequence[Image.Image]) -> ImageFeatures:
        keys = [_pixels_key(im) for im in images]
        todo = {k: im for k, im in zip(keys, images, strict=True) if k not in self.cache}
        if todo:
            feats = self.inner.encode_images(list(todo.values()))
            for i, key in enumerate(todo):
                probs = None if feats.probs is None else feats.probs[i]
                self.cache[key] = (feats.emb[i], feats.anchor[i], probs)
        rows = [self.cache[k] for k in keys]
        probs = None if rows[0][2] is None else np.stack([r[2] for r in rows])
        return ImageFeatures(np.stack([r[0] for r in rows]), np.stack([r[1] for r in rows]), probs)

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        return self.inner.encode_texts(texts)


def _pixels_key(image: Image.Image) -> bytes:
    digest = hashlib.blake2b(image.tobytes(), digest_size=16)
    digest.update(repr((image.size, image.mode)).encode())
    return digest.digest()


# --- data that ships in packages ----------------------------------------------------------
@dataclass(frozen=True)
class Photo:
    name: str
    path: Path
    caption: str
    label: str = ""


def demo_photos() -> list[Photo]:
    """The demo's 18 scikit-image / scikit-learn photos with the captions written for them."""
    from infogrowth.commands.demo import _package_images

    return [Photo(n, p, c) for n, (p, c) in sorted(_package_images().items())]


TEXTILE_CAPTION = "a close up of woven fabric"


def textile_images(per_class: int) -> list[Photo]:
    """The first ``per_class`` textiles of each conformal-clip-data class (nominal, local
    defect, global defect; 1000 / 500 / 500 ship)."""
    try:
        import conformal_clip_data as ccd
    except ImportError as exc:
        raise SystemExit(
            "conformal-clip-data is missing: pip install -e '.[bench]' (or make bench)"
        ) from exc
    out = []
    for label, folder in (
        ("nominal", ccd.nominal_dir()),
        ("local", ccd.local_dir()),
        ("global", ccd.global_dir()),
    ):
        for path in sorted(Path(folder).glob("*.jpg"))[:per_class]:
            out.append(Photo(f"{label}/{path.stem}", path, TEXTILE_CAPTION, label))
    return out


# --- tables -------------------------------------------------------------------------------
@dataclass
class Table:
    title: str
    target: str
    columns: list[str]
    rows: list[list[str]]

    def render(self) -> str:
        lines = [f"### {self.title}", "", f"Target: {self.target}", ""]
        lines.append("| " + " | ".join(self.columns) + " |")
        lines.append("|" + "---|" * len(self.columns))
        lines += ["| " + " | ".join(row) + " |" for row in self.rows]
        return "\n".join(lines) + "\n"


def met(ok: bool) -> str:
    return "yes" if ok else "**no**"


def ratio(num: int, den: int) -> str:
    return f"{num / den:.3f}" if den else "-"


# --- a. duplicate detection ---------------------------------------------------------------
def _jpeg_q70(img: Image.Image) -> Image.Image:
    buf = io.BytesIO()
    img.convert("RGB").save(buf, format="JPEG", quality=70)
    return Image.open(io.BytesIO(buf.getvalue()))


def _resize_90(img: Image.Image) -> Image.Image:
    w, h = img.size
    return img.resize((max(1, round(w * 0.9)), max(1, round(h * 0.9))), Image.Resampling.BICUBIC)


def _crop_5(img: Image.Image) -> Image.Image:
    w, h = img.size
    return img.crop((round(w * 0.05), round(h * 0.05), w, h))  # 5% off the top and left


def _crop_centre_5(img: Image.Image) -> Image.Image:
    """The demo's crop: 2.5% off every side, resized back (a 5% zoom)."""
    w, h = img.size
    return img.crop((w // 40, h // 40, w - w // 40, h - h // 40)).resize((w, h))


TRANSFORMS: dict[str, Callable[[Image.Image], Image.Image]] = {
    "JPEG quality 70": _jpeg_q70,
    "resize to 90%": _resize_90,
    "crop 5% (top-left)": _crop_5,
    "crop 5% (centre, resized)": _crop_centre_5,
    "brightness +10%": lambda img: ImageEnhance.Brightness(img).enhance(1.1),
    "horizontal flip": ImageOps.mirror,
}
DUP_TARGET = 0.95


def dup_settings() -> Settings:
    """Duplicates only: single-modal with one label for all (no caption to misalign, no
    label to doubt), τ=0 so no gain rejects a sample; every kept image enters the index
    (threshold policy) and ``dup_distance`` keeps its default."""
    return replace(DEFAULTS, mode="single", tau=0.0, policy="threshold", encoder="packaged")


def _row(item: Photo, image: Path, sample_id: str) -> dict[str, Any]:
    return {"id": sample_id, "image": str(image), "label": "image"}


@dataclass
class DupCounts:
    copies: int
    copies_flagged: int
    own_original: int  # flagged copies whose named neighbour is their own original
    distinct_flagged: int  # originals flagged as a duplicate of another original

    def row(self) -> list[str]:
        tp, fp = self.copies_flagged, self.distinct_flagged
        precision, recall = (tp / (tp + fp) if tp + fp else 0.0), tp / self.copies
        ok = precision >= DUP_TARGET and recall >= DUP_TARGET
        return [f"{tp}/{self.copies}", str(self.own_original), str(fp)] + [
            f"{precision:.3f}",
            f"{recall:.3f}",
            met(ok),
        ]


def duplicate_run(
    items: Sequence[Photo], transform: str, encoder: Encoder, work: Path, seed: int = 0
) -> DupCounts:
    """Every original arrives first, then a copy of each, shuffled."""
    make_copy = TRANSFORMS[transform]
    folder = work / transform.split()[0].lower()
    folder.mkdir(parents=True, exist_ok=True)
    rows = [_row(it, it.path, f"orig:{it.name}") for it in items]
    copies = []
    for i, it in enumerate(items):
        copy = make_copy(Image.open(it.path).convert("RGB"))
        path = folder / f"{i}.png"  # lossless: the JPEG copy keeps its q70 artefacts
        copy.convert("RGB").save(path)
        copies.append(_row(it, path, f"copy:{it.name}"))
    order = np.random.default_rng(seed).permutation(len(copies))
    rows += [copies[i] for i in order]
    outcomes = curate_rows(rows, dup_settings(), encoder)
    flagged = [o for o in outcomes if o.reason == REASON_DUPLICATE]
    copies_flagged = [o for o in flagged if o.id.startswith("copy:")]
    return DupCounts(
        copies=len(items),
        copies_flagged=len(copies_flagged),
        own_original=sum(1 for o in copies_flagged if o.neighbour == "orig:" + o.id[5:]),
        distinct_flagged=len(flagged) - len(copies_flagged),
    )


def duplicate_table(sets: dict[str, Sequence[Photo]], encoder: Encoder) -> Table:
    rows = []
    with tempfile.TemporaryDirectory(prefix="quality-bench-") as tmp:
        for set_name, items in sets.items():
            for transform in TRANSFORMS:
                counts = duplicate_run(items, transform, encoder, Path(tmp) / set_name)
                rows.append([set_name, str(len(items)), transform] + counts.row())
    return Table(
        title=(
            f"a. Duplicate detection (packaged encoder, dup_distance={DEFAULTS.dup_distance}, "
            f"dup_hash_bits={DEFAULTS.dup_hash_bits}, dup_hash_distance="
            f"{DEFAULTS.dup_hash_distance}, dup_hash_near={DEFAULTS.dup_hash_near})"
        ),
        target=f"precision ≥ {DUP_TARGET} and recall ≥ {DUP_TARGET} per transform",
        columns=["images", "originals", "copy", "copies flagged", "… against their own original"]
        + ["distinct images flagged"]
        + ["precision", "recall", "met"],
        rows=rows,
    )


def _embed(encoder: Encoder, images: Sequence[Image.Image]) -> np.ndarray:
    return np.asarray(encoder.encode_images(list(images)).emb, dtype=float)


def distance_table(sets: dict[str, Sequence[Photo]], encoder: Encoder) -> Table:
    """Why table a reads as it does: image distances (1 − cos) of each copy to its own
    original against those between distinct originals, from the same encoder."""
    rows = []
    for set_name, items in sets.items():
        originals = [Image.open(it.path).convert("RGB") for it in items]
        base = _embed(encoder, originals)
        copy_dist = np.concatenate(
            [
                1 - (base * _embed(encoder, [f(im).convert("RGB") for im in originals])).sum(1)
                for f in TRANSFORMS.values()
            ]
        )
        pairs = (1 - base @ base.T)[np.triu_indices(len(base), 1)]
        separable = copy_dist.max() <= DEFAULTS.dup_distance < pairs.min()
        rows.append(
            [set_name, f"{copy_dist.max():.3f}", f"{np.median(copy_dist):.3f}"]
            + [f"{pairs.min():.3f}", f"{np.percentile(pairs, 1):.3f}", f"{np.median(pairs):.3f}"]
            + [met(bool(separable))]
        )
    return Table(
        title="a′. Image distances behind table a (1 − cos, packaged encoder)",
        target=(
            f"every copy ≤ dup_distance={DEFAULTS.dup_distance} < every pair of distinct images"
        ),
        columns=["images", "copy → original: max", "median", "distinct pairs: min"]
        + ["1st percentile", "median", "met"],
        rows=rows,
    )


def _hashes(images: Sequence[Image.Image]) -> np.ndarray:
    bits = DEFAULTS.dup_hash_bits
    return np.stack([unpack_hashes(image_hashes(im, bits)) for im in images])


def _copy_bits(
    originals: Sequence[Image.Image], stored: np.ndarray, transform: Callable[..., Image.Image]
) -> np.ndarray:
    """Hash distance (bits) of each original's copy to that original alone."""
    copies = _hashes([transform(im).convert("RGB") for im in originals])
    return np.array([variant_distances(q, stored[i : i + 1])[0] for i, q in enumerate(copies)])


def hash_table(sets: dict[str, Sequence[Photo]], encoder: Encoder) -> Table:
    """The perceptual-hash distances (bits) behind table a: each copy to its own original,
    every later original to each earlier one, and those of them the embedding calls near."""
    rows = []
    for set_name, items in sets.items():
        originals = [Image.open(it.path).convert("RGB") for it in items]
        base, emb = _hashes(originals), _embed(encoder, originals)
        stored = base[:, :CROPS]
        copy_bits = np.concatenate([_copy_bits(originals, stored, f) for f in TRANSFORMS.values()])
        later, earlier = np.tril_indices(len(base), -1)
        pairs = np.stack([variant_distances(q, stored) for q in base])[later, earlier]
        near = (1 - emb @ emb.T)[later, earlier] <= DEFAULTS.dup_distance
        near_min = f"{pairs[near].min()} ({int(near.sum())} pairs)" if near.any() else "-"
        ok = copy_bits.max() <= DEFAULTS.dup_hash_distance < pairs.min()
        ok = ok and (not near.any() or DEFAULTS.dup_hash_near < pairs[near].min())
        rows.append(
            [set_name, str(copy_bits.max()), f"{np.percentile(copy_bits, 99):.0f}"]
            + [str(pairs.min()), f"{np.percentile(pairs, 1):.0f}", f"{np.median(pairs):.0f}"]
            + [near_min, met(bool(ok))]
        )
    bits, limit, near_limit = (
        DEFAULTS.dup_hash_bits,
        DEFAULTS.dup_hash_distance,
        DEFAULTS.dup_hash_near,
    )
    return Table(
        title=f"a″. Perceptual-hash distances behind table a (bits of {bits}, flip/crop variants)",
        target=(
            f"every copy ≤ dup_hash_distance={limit} < every distinct pair, and "
            f"dup_hash_near={near_limit} < every distinct pair within dup_distance"
        ),
        columns=["images", "copy → original: max", "99th percentile", "distinct pairs: min"]
        + ["1st percentile", "median", "distinct within dup_distance: min", "met"],
        rows=rows,
    )


# --- b. wrong captions --------------------------------------------------------------------
AUC_TARGET = 0.9


def caption_table(photos: Sequence[Photo], encoder: Encoder) -> Table:
    """Every photo with its own caption (positive) and with each other photo's (negative)."""
    from sklearn.metrics import roc_auc_score

    rows = [
        {"id": f"{p.name}|{q.name}", "image": str(p.path), "caption": q.caption}
        for p in photos
        for q in photos
    ]
    settings = replace(DEFAULTS, delta=0.0, tau=0.0, dup_distance=0.0, encoder="packaged")
    outcomes = curate_rows(rows, settings, encoder)
    right = np.array([a == b for a, b in (o.id.split("|") for o in outcomes)])
    score = np.array([o.alignment for o in outcomes], dtype=float)
    auc = float(roc_auc_score(right, score))
    kept_right = int((score[right] >= DEMO_DELTA).sum())
    caught_wrong = int((score[~right] < DEMO_DELTA).sum())
    return Table(
        title="b. Wrong-caption detection (alignment of the packaged encoder)",
        target=f"ROC-AUC ≥ {AUC_TARGET}",
        columns=["photos", "right pairs", "swapped pairs", "ROC-AUC"]
        + [f"right kept at δ={DEMO_DELTA}", f"swapped rejected at δ={DEMO_DELTA}", "met"],
        rows=[
            [str(len(photos)), str(int(right.sum())), str(int((~right).sum())), f"{auc:.3f}"]
            + [ratio(kept_right, int(right.sum())), ratio(caught_wrong, int((~right).sum()))]
            + [met(auc >= AUC_TARGET)]
        ],
    )


# --- c. label noise -----------------------------------------------------------------------
LABEL_TARGET = 0.8


def flip_labels(labels: Sequence[str], share: float, rng: np.random.Generator) -> list[str]:
    """``share`` of the labels replaced by another label of the set, chosen at random."""
    classes = sorted(set(labels))
    out = list(labels)
    for i in rng.choice(len(out), size=round(share * len(out)), replace=False):
        out[i] = str(rng.choice([c for c in classes if c != out[i]]))
    return out


def label_settings(**changes: Any) -> Settings:
    """Single-modal kNN label vote over every earlier sample (``--policy all``), exact image
    copies only as duplicates (``--dup-distance 0``)."""
    return replace(DEFAULTS, **{"mode": "single", "policy": "all", "dup_distance": 0.0, **changes})


@dataclass
class LabelScore:
    flipped: int
    flagged: int
    caught: int  # flipped and relabelled
    restored: int  # relabelled back to the true label
    clean_untouched: int
    clean: int

    def row(self, name: str, n: int) -> list[str]:
        precision, recall = ratio(self.caught, self.flagged), ratio(self.caught, self.flipped)
        ok = self.flagged > 0 and min(float(precision), float(recall)) >= LABEL_TARGET
        return [name, str(n), str(self.flipped), str(self.flagged), precision, recall] + [
            ratio(self.restored, self.flipped),
            ratio(self.clean_untouched, self.clean),
            met(ok),
        ]


def score_labels(
    outcomes: Sequence[Outcome], given: Sequence[str], true: Sequence[str]
) -> LabelScore:
    flipped = [g != t for g, t in zip(given, true, strict=True)]
    flagged = [o.relabelled for o in outcomes]
    return LabelScore(
        flipped=sum(flipped),
        flagged=sum(flagged),
        caught=sum(f and r for f, r in zip(flipped, flagged, strict=True)),
        restored=sum(
            o.relabelled and f and o.label == t
            for o, f, t in zip(outcomes, flipped, true, strict=True)
        ),
        clean_untouched=sum(not f and not r for f, r in zip(flipped, flagged, strict=True)),
        clean=len(flipped) - sum(flipped),
    )


def digits_label_run(seed: int = 0, n: int | None = None) -> tuple[LabelScore, int]:
    from sklearn.datasets import load_digits

    digits = load_digits()
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(digits.target))[:n]
    true = [str(digits.target[i]) for i in order]
    given = flip_labels(true, LABEL_NOISE, rng)
    rows = [
        {"id": f"d{i}", "image_embedding": digits.data[i].tolist(), "label": label}
        for i, label in zip(order, given, strict=True)
    ]
    outcomes = curate_rows(rows, label_settings(encoder="precomputed"))
    return score_labels(outcomes, given, true), len(rows)


def textile_label_run(
    textiles: Sequence[Photo], encoder: Encoder, seed: int = 0
) -> tuple[LabelScore, int]:
    rng = np.random.default_rng(seed)
    items = [textiles[i] for i in rng.permutation(len(textiles))]
    true = [t.label for t in items]
    given = flip_labels(true, LABEL_NOISE, rng)
    rows = [
        {"id": t.name, "image": str(t.path), "label": label}
        for t, label in zip(items, given, strict=True)
    ]
    outcomes = curate_rows(rows, label_settings(encoder="packaged"), encoder)
    return score_labels(outcomes, given, true), len(rows)


def label_table(runs: dict[str, tuple[LabelScore, int]]) -> Table:
    return Table(
        title=(
            f"c. Label-noise detection ({LABEL_NOISE:.0%} flipped, kNN vote k={DEFAULTS.k}, "
            f"relabel below confidence {DEFAULTS.label_confidence})"
        ),
        target=f"precision ≥ {LABEL_TARGET} and recall ≥ {LABEL_TARGET}",
        columns=["data", "samples", "flipped", "relabelled", "precision", "recall"]
        + ["restored to the true label", "clean labels untouched", "met"],
        rows=[score.row(name, n) for name, (score, n) in runs.items()],
    )


# --- d. data efficiency -------------------------------------------------------------------
NOISE_SIGMA = 1.0  # pixel noise of an injected near-duplicate (pixels are 0..16)


@dataclass
class Stream:
    x: np.ndarray  # (n, 64) pixels
    given: list[str]  # labels as crawled (20% flipped)
    x_test: np.ndarray
    y_test: np.ndarray
    distinct: int  # training digits behind the stream
    original: np.ndarray  # (n,) bool: the first, noise-free occurrence of its digit


def digit_stream(seed: int, n_train: int | None = None) -> Stream:
    """A held-out clean test split (30%) and a training stream: each training digit 1-3
    times (copies with small pixel noise), shuffled, each item's label flipped with p=0.2."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x_train, x_test, y_train, y_test = train_test_split(
        digits.data, digits.target, test_size=0.3, random_state=seed, stratify=digits.target
    )
    x_train, y_train = x_train[:n_train], y_train[:n_train]
    rng = np.random.default_rng(seed)
    repeats = rng.integers(1, 4, size=len(y_train))
    source = np.repeat(np.arange(len(y_train)), repeats)
    x = x_train[source].astype(float)
    first = np.r_[True, source[1:] != source[:-1]]
    noise = rng.normal(0, NOISE_SIGMA, x.shape)
    x[~first] = np.clip(x[~first] + noise[~first], 0, 16)
    order = rng.permutation(len(x))
    given = flip_labels([str(y) for y in y_train[source][order]], LABEL_NOISE, rng)
    return Stream(x[order], given, x_test, y_test, len(y_train), first[order])


def accuracy(x: np.ndarray, labels: Sequence[str], stream: Stream) -> float:
    from sklearn.linear_model import LogisticRegression

    model = LogisticRegression(max_iter=2000).fit(x / 16, [int(y) for y in labels])
    return 100 * float(model.score(stream.x_test / 16, stream.y_test))


def curated(stream: Stream, settings: Settings) -> tuple[np.ndarray, list[str]]:
    """The samples the engine keeps, with the labels it gives them."""
    rows = [
        {"id": f"s{i}", "image_embedding": v.tolist(), "label": label}
        for i, (v, label) in enumerate(zip(stream.x, stream.given, strict=True))
    ]
    outcomes = curate_rows(rows, settings)
    kept = [i for i, o in enumerate(outcomes) if o.decision == "accepted"]
    return stream.x[kept], [str(outcomes[i].label) for i in kept]


def efficiency_settings(stream: Stream, policy: str, cleaning: bool) -> Settings:
    """Budget policy at half the stream; label cleaning off = no label is ever doubtful."""
    confidence = DEFAULTS.label_confidence if cleaning else 0.0
    return label_settings(
        encoder="precomputed", policy=policy, budget=len(stream.x) // 2, label_confidence=confidence
    )


ARMS: dict[str, Callable[[Stream, int], tuple[np.ndarray, Sequence[str]]]] = {
    "full stream": lambda s, seed: (s.x, s.given),
    "random 50%": lambda s, seed: _random_half(s, seed),
    "each digit once (oracle de-duplication)": lambda s, seed: (
        s.x[s.original],
        [label for label, keep in zip(s.given, s.original, strict=True) if keep],
    ),
    "curated 50%": lambda s, seed: curated(s, efficiency_settings(s, "budget", False)),
    "curated 50% + label cleaning": lambda s, seed: curated(
        s, efficiency_settings(s, "budget", True)
    ),
    "full stream + label cleaning": lambda s, seed: curated(s, efficiency_settings(s, "all", True)),
}


def _random_half(stream: Stream, seed: int) -> tuple[np.ndarray, list[str]]:
    pick = np.random.default_rng(1000 + seed).permutation(len(stream.x))[: len(stream.x) // 2]
    return stream.x[pick], [stream.given[i] for i in pick]


def efficiency_scores(seeds: int, n_train: int | None = None) -> dict[str, list[float]]:
    scores: dict[str, list[float]] = {arm: [] for arm in ARMS}
    for seed in range(seeds):
        stream = digit_stream(seed, n_train)
        for arm, pick in ARMS.items():
            x, labels = pick(stream, seed)
            scores[arm].append(accuracy(x, labels, stream))
    return scores


def efficiency_table(scores: dict[str, list[float]], stream_size: str) -> Table:
    mean = {arm: float(np.mean(v)) for arm, v in scores.items()}
    full, rand = mean["full stream"], mean["random 50%"]
    checks = {
        "curated 50%": mean["curated 50%"] >= rand + 1 and mean["curated 50%"] >= full - 1,
        "curated 50% + label cleaning": mean["curated 50% + label cleaning"] >= full,
    }
    seeds = len(scores["full stream"])
    rows = [
        [arm, f"{mean[arm]:.2f} ± {np.std(v):.2f}", met(checks[arm]) if arm in checks else ""]
        for arm, v in scores.items()
    ]
    return Table(
        title=(
            f"d. Data efficiency: sklearn digits, {stream_size}, logistic regression, "
            f"test accuracy % (clean held-out 30%), mean ± std over {seeds} seeds"
        ),
        target=(
            "curated 50% ≥ random 50% + 1 point and within 1 point of the full stream; "
            "curated 50% + label cleaning ≥ the full stream"
        ),
        columns=["trained on", "accuracy", "met"],
        rows=rows,
    )


# --- main ---------------------------------------------------------------------------------
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument(
        "--textiles-per-class", type=int, default=200, help="textiles per class (default 200)"
    )
    p.add_argument("--seeds", type=int, default=5, help="seeds of the efficiency table (5)")
    p.add_argument(
        "--duplicates-only", action="store_true", help="only tables a, a′ and a″ (duplicates)"
    )
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    started = time.monotonic()
    encoder = CachedEncoder(PackagedEncoder("cpu", batch_size=DEFAULTS.batch_size))
    photos, textiles = demo_photos(), textile_images(args.textiles_per_class)
    print(f"{len(photos)} photos, {len(textiles)} textiles ({args.textiles_per_class} per class)")
    sets = {"photos": photos, "textiles": textiles}
    for make in (duplicate_table, distance_table, hash_table):
        print("\n" + make(sets, encoder).render(), flush=True)
    if args.duplicates_only:
        return
    tables = [
        caption_table(photos, encoder),
        label_table(
            {"digits": digits_label_run(), "textiles": textile_label_run(textiles, encoder)}
        ),
    ]
    for table in tables:
        print("\n" + table.render(), flush=True)
    stream = digit_stream(0)
    size = f"stream of ~{len(stream.x)} ({stream.distinct} training digits, each 1-3×)"
    print("\n" + efficiency_table(efficiency_scores(args.seeds), size).render())
    print(f"total {time.monotonic() - started:.0f} s")


if __name__ == "__main__":
    main()
