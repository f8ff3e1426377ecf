"""The cleaner: which captions are misaligned, new captions for them, and label cleaning.

Multimodal (the paper's cleaner): a sample whose alignment = cos(image, caption) is below δ
gets a new caption from a ``Captioner``; it is kept only if the new caption scores ≥ δ.

A new caption counts only when a scorer that did not produce it rates it ≥ δ. Without a
captioning model (``captioner=none``, the default) misaligned samples are rejected as
``misaligned`` (filter mode, as DataComp does).

Captioners:
* ``LabelCaptioner`` (explicit opt-in only): "a photo of a {label}" from the encoder's top
  ImageNet label. The packaged encoder's alignment compares a caption with those same label
  prompts, so the label caption would always pass its own re-score: it is therefore not
  re-scored at all. Its samples carry ``caption_source="label_fallback"`` and no alignment,
  and are kept only because the user asked for it, not because anything confirmed them.
* ``TransformersCaptioner``: a local image-to-text model (see its docstring for the
  architectures supported).
* ``OpenAICaptioner``: any OpenAI-compatible chat endpoint with vision (vLLM, llama.cpp
  server, Ollama, OpenAI).

Single-modal (classification): a label is doubtful when the evidence gives it less than
``label_confidence`` and prefers another of the user's labels. The evidence is a classifier
(``classifier_vote``) only when the classifier knows the label by name, else the labels of
the k nearest earlier samples (``knn_vote``). ``entropy_gain`` scores a label against its
neighbours' labels.
"""

from __future__ import annotations

import base64
import io
import json
import os
import urllib.error
import urllib.request
from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from infogrowth.core.encode import (
    LABEL_PROMPT,
    Encoder,
    ImagePreprocessor,
    chunks,
    resolve_device,
)
from infogrowth.settings import Settings

CAPTION_PROMPT = "Describe this image in one sentence."
CAPTION_SOURCE_LABEL = "label_fallback"  # caption_source of the (unscored) label captions
NO_CAPTIONER = "recaptioning needs a captioning model (--captioner transformers or openai)"
NO_ENCODER = "precomputed embeddings cannot be recaptioned (no encoder to score a new caption)"


def needs_recaption(alignment: float | None, delta: float) -> bool:
    """True when the caption is misaligned (alignment < δ); a missing score counts as 0."""
    return alignment is None or not alignment >= delta  # NaN also needs a new caption


class CaptionError(RuntimeError):
    """A captioner could not produce captions; the caller rejects the samples concerned."""


class Captioner(ABC):
    name: str = "captioner"
    caption_source: str = "recaptioned"  # what records with its captions say

    @abstractmethod
    def caption(self, images: Sequence[Image.Image], top_labels: Sequence[str | None]) -> list[str]:
        """One caption per image, in order; raises ``CaptionError`` when it cannot."""


class LabelCaptioner(Captioner):
    """ "a photo of a {label}" from the classifier's top label (needs an encoder with classes)."""

    name = "label"
    caption_source = CAPTION_SOURCE_LABEL

    def __init__(self, template: str = LABEL_PROMPT):
        self.template = template

    def caption(self, images: Sequence[Image.Image], top_labels: Sequence[str | None]) -> list[str]:
        if len(top_labels) != len(images):
            raise ValueError(f"{len(images)} images but {len(top_labels)} labels")
        missing = sum(1 for label in top_labels if not label)
        if missing:
            raise CaptionError(f"label captioner: {missing} image(s) have no predicted label")
        return [self.template.format(label=label) for label in top_labels]


# --- local transformers models ------------------------------------------------------------
SUPPORTED_CAPTIONERS = ("vision-encoder-decoder", "blip", "git")


@lru_cache(maxsize=2)
def _captioning_model(model_path: str, device: str) -> tuple[Any, Any, ImagePreprocessor]:
    import torch
    from transformers import (
        AutoConfig,
        AutoModelForImageTextToText,
        AutoTokenizer,
        VisionEncoderDecoderModel,
    )

    config = AutoConfig.from_pretrained(model_path)
    if config.model_type not in SUPPORTED_CAPTIONERS:
        raise ValueError(
            f"{model_path}: model_type {config.model_type!r} is not a supported captioner "
            f"(supported: {', '.join(SUPPORTED_CAPTIONERS)})"
        )
    if config.model_type == "vision-encoder-decoder":
        model = VisionEncoderDecoderModel.from_pretrained(model_path)
    else:
        model = AutoModelForImageTextToText.from_pretrained(model_path)
    dtype = torch.float16 if device.startswith("cuda") else torch.float32
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    preprocess = ImagePreprocessor.from_config(Path(model_path) / "preprocessor_config.json")
    return model.eval().to(device, dtype=dtype), tokenizer, preprocess


class TransformersCaptioner(Captioner):
    """Unconditional image captioning with a local transformers model.

    Supported (``config.model_type``): ``vision-encoder-decoder`` (e.g. ViT + GPT-2 such as
    nlpconnect/vit-gpt2-image-captioning), ``blip`` (BlipForConditionalGeneration, e.g.
    Salesforce/blip-image-captioning-base) and ``git`` (e.g. microsoft/git-base-coco): the
    models that caption from pixels alone. ``model_path`` must be a local directory holding
    the model, its tokenizer and ``preprocessor_config.json``. Greedy decoding; fp16 on CUDA.
    """

    name = "transformers"

    def __init__(
        self,
        model_path: str,
        device: str = "auto",
        batch_size: int = 8,
        max_new_tokens: int = 30,
    ):
        if not model_path:
            raise ValueError("TransformersCaptioner needs a model directory (captioner_model)")
        self.model_path = str(model_path)
        self.device = resolve_device(device)
        self.batch_size = batch_size
        self.max_new_tokens = max_new_tokens

    def caption(self, images: Sequence[Image.Image], top_labels: Sequence[str | None]) -> list[str]:
        import torch

        model, tokenizer, preprocess = _captioning_model(self.model_path, self.device)
        out: list[str] = []
        with torch.inference_mode():
            for part in chunks(list(images), self.batch_size):
                x = torch.from_numpy(preprocess(part)).to(self.device, dtype=model.dtype)
                ids = model.generate(
                    pixel_values=x, max_new_tokens=self.max_new_tokens, do_sample=False
                )
                texts = tokenizer.batch_decode(ids, skip_special_tokens=True)
                out.extend(text.strip() for text in texts)
        return out


# --- OpenAI-compatible endpoint -----------------------------------------------------------
class OpenAICaptioner(Captioner):
    """Captions from an OpenAI-compatible ``/chat/completions`` endpoint with image input.

    Each image is sent as a JPEG ``data:`` URL in an ``image_url`` content part, with the
    prompt "Describe this image in one sentence.". ``api_key`` defaults to $OPENAI_API_KEY
    (local servers usually need none). Any transport/HTTP/format problem raises
    ``CaptionError`` naming the endpoint.
    """

    name = "openai"

    def __init__(
        self,
        base_url: str,
        model: str,
        api_key: str | None = None,
        timeout: float = 60.0,
        prompt: str = CAPTION_PROMPT,
        max_tokens: int = 60,
        concurrency: int = 4,
        max_side: int = 768,
    ):
        if not base_url:
            raise ValueError("OpenAICaptioner needs a base URL (captioner_url)")
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.model = model
        self.api_key = api_key if api_key is not None else os.environ.get("OPENAI_API_KEY")
        self.timeout = timeout
        self.prompt = prompt
        self.max_tokens = max_tokens
        self.concurrency = max(1, concurrency)
        self.max_side = max_side  # downscale before upload: captions don't need full resolution

    def caption(self, images: Sequence[Image.Image], top_labels: Sequence[str | None]) -> list[str]:
        if len(images) <= 1 or self.concurrency == 1:
            return [self.caption_one(im) for im in images]
        # Requests are latency-bound, so a few in flight keep a remote GPU busy.
        with ThreadPoolExecutor(max_workers=min(self.concurrency, len(images))) as pool:
            return list(pool.map(self.caption_one, images))

    def caption_one(self, image: Image.Image) -> str:
        body = json.dumps(self.request_body(image)).encode()
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        request = urllib.request.Request(self.url, data=body, headers=headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                payload = response.read()
        except urllib.error.HTTPError as exc:
            detail = exc.read(300).decode("utf-8", "replace").strip().replace("\n", " ")
            raise CaptionError(f"captioner {self.url} answered HTTP {exc.code}: {detail}") from exc
        except (urllib.error.URLError, TimeoutError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise CaptionError(f"captioner {self.url} unreachable: {reason}") from exc
        return _caption_from_response(payload, self.url)

    def request_body(self, image: Image.Image) -> dict[str, Any]:
        return {
            "model": self.model,
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": self.prompt},
                        {"type": "image_url", "image_url": {"url": self.data_url(image)}},
                    ],
                }
            ],
            "max_tokens": self.max_tokens,
            "temperature": 0,
        }

    def data_url(self, image: Image.Image) -> str:
        image = image.convert("RGB")
        image.thumbnail((self.max_side, self.max_side))
        buf = io.BytesIO()
        image.save(buf, format="JPEG", quality=90)
        return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _caption_from_response(payload: bytes, url: str) -> str:
    try:
        content = json.loads(payload)["choices"][0]["message"]["content"]
    except (ValueError, KeyError, IndexError, TypeError) as exc:
        raise CaptionError(f"captioner {url} returned an unexpected response: {exc!r}") from exc
    if isinstance(content, list):  # some servers answer with content parts
        content = " ".join(p.get("text", "") for p in content if isinstance(p, dict))
    if not isinstance(content, str) or not content.strip():
        raise CaptionError(f"captioner {url} returned an empty caption")
    return " ".join(content.split())


def make_captioner(settings: Settings, encoder: Encoder | None) -> Captioner | None:
    """The configured captioner, or None (``none``, or a new caption could not be scored).

    Recaptioning needs an encoder to score the new caption, so without one (precomputed
    mode) there is none. The label captioner also needs a classifier (the packaged encoder).
    """
    kind = settings.captioner
    if encoder is None or kind == "none":
        return None
    if kind == "label":
        if encoder.class_names is None:
            raise ValueError(
                f"captioner=label needs an encoder with class names; {encoder.name!r} has none "
                "(use captioner=transformers or captioner=openai)"
            )
        return LabelCaptioner()
    if kind == "transformers":
        return TransformersCaptioner(settings.captioner_model, settings.device)
    if kind == "openai":
        return OpenAICaptioner(settings.captioner_url, settings.captioner_model)
    raise ValueError(f"captioner must be none|label|transformers|openai, got {kind!r}")


# --- single-modal label cleaning ----------------------------------------------------------
@dataclass(frozen=True)
class LabelVerdict:
    """What the evidence says about a given label."""

    confidence: float | None  # P(given label | d): classifier probability or vote share
    winner: str | None = None  # the label the evidence prefers, when it is not the given one

    def doubtful(self, threshold: float) -> bool:
        return (
            self.winner is not None
            and self.confidence is not None
            and (self.confidence < threshold)
        )


def knn_vote(label: str | None, neighbour_labels: Sequence[str | None]) -> LabelVerdict:
    """The share of the neighbours that carry ``label``, and the label most of them carry
    when it beats ``label`` (ties go to the given label, then to the smallest name).
    No neighbours (the first samples): no evidence, confidence None."""
    if not neighbour_labels:
        return LabelVerdict(None)
    counts = Counter(str(n) for n in neighbour_labels if n is not None)
    given = counts.get(str(label), 0) if label is not None else 0
    share = given / len(neighbour_labels)
    if not counts:
        return LabelVerdict(share)
    best, votes = min(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    return LabelVerdict(share, best if votes > given else None)


def classifier_vote(
    label: str | None,
    probs: np.ndarray,
    class_names: Sequence[str],
    user_labels: Mapping[str, str],
) -> LabelVerdict | None:
    """The classifier's view of ``label``, or None when it does not know the label by name
    (a classifier never judges a label it cannot name: digit "3" is not ImageNet class 3).

    A replacement is only ever one of ``user_labels`` (casefolded name → the user's spelling,
    the labels seen so far), never a class the user does not use.
    """
    if label is None:
        return None
    names = [n.casefold() for n in class_names]
    wanted = str(label).strip().casefold()
    p = np.asarray(probs, dtype=np.float64).reshape(-1)
    own = [i for i, n in enumerate(names) if n == wanted]
    if not own or p.shape[0] != len(names):
        return None
    given = float(p[own].max())
    candidates = [i for i, n in enumerate(names) if n in user_labels and n != wanted]
    best = max(candidates, key=lambda i: p[i], default=None)
    if best is None or not p[best] > given:
        return LabelVerdict(given)
    return LabelVerdict(given, user_labels[names[best]])


@lru_cache(maxsize=2)
def _classifier_model(model_path: str, device: str) -> tuple[Any, ImagePreprocessor]:
    from transformers import AutoModelForImageClassification

    model = AutoModelForImageClassification.from_pretrained(model_path)
    preprocess = ImagePreprocessor.from_config(Path(model_path) / "preprocessor_config.json")
    return model.eval().to(device), preprocess


class ImageClassifier:
    """A user's image-classification model (transformers ``AutoModelForImageClassification``
    in a local directory with ``preprocessor_config.json``); class names from ``id2label``."""

    def __init__(self, model_path: str, device: str = "auto", batch_size: int = 32):
        from transformers import AutoConfig

        self.model_path = str(model_path)
        self.device = resolve_device(device)
        self.batch_size = batch_size
        id2label = AutoConfig.from_pretrained(self.model_path).id2label
        self.class_names = tuple(str(id2label[i]) for i in sorted(id2label, key=int))

    def probs(self, images: Sequence[Image.Image]) -> np.ndarray:
        import torch

        model, preprocess = _classifier_model(self.model_path, self.device)
        out = []
        with torch.inference_mode():
            for part in chunks(list(images), self.batch_size):
                x = torch.from_numpy(preprocess(part)).to(self.device)
                out.append(torch.softmax(model(pixel_values=x).logits.float(), -1).cpu().numpy())
        return np.concatenate(out) if out else np.zeros((0, len(self.class_names)), np.float32)


@dataclass(frozen=True)
class LabelDecision:
    label: str  # the final label (the original one unless relabelled)
    relabelled: bool
    confidence: float  # P(final label | image) according to the classifier
    original_confidence: float = 0.0  # P(original label | image); 0 for unknown labels


def clean_label(
    label: str | int | None,
    probs: np.ndarray,
    class_names: Sequence[str],
    threshold: float,
) -> LabelDecision:
    """Keep ``label`` if the classifier gives it ≥ ``threshold``, else relabel to the argmax.

    ``label`` is a class name (case-insensitive) or a class index ("281" or 281). A name that
    repeats in ``class_names`` (ImageNet's two "crane"s) takes its most probable index. An
    unknown or missing label has confidence 0 and is relabelled. The new label keeps the
    input's form: an index when the label was given as an index, else a class name.
    """
    p = np.asarray(probs, dtype=np.float64).reshape(-1)
    if p.shape[0] != len(class_names):
        raise ValueError(f"{p.shape[0]} probabilities for {len(class_names)} classes")
    indices = _label_indices(label, class_names)
    original = float(p[indices].max()) if indices else 0.0
    if indices and original >= threshold:
        return LabelDecision(str(label), False, original, original)
    best = int(np.argmax(p))
    as_index = isinstance(label, int) or (isinstance(label, str) and label.strip().isdigit())
    new = str(best) if as_index else class_names[best]
    return LabelDecision(new, True, float(p[best]), original)


def _label_indices(label: str | int | None, class_names: Sequence[str]) -> list[int]:
    if label is None:
        return []
    text = str(label).strip()
    if text.isdigit():
        i = int(text)
        return [i] if i < len(class_names) else []
    wanted = text.casefold()
    return [i for i, name in enumerate(class_names) if name.casefold() == wanted]


def entropy_gain(
    label: str | None,
    neighbour_labels: Sequence[str | None],
    weights: Sequence[float] | None = None,
) -> float:
    """1 − p, p = (weighted) share of the neighbours that carry the same label.

    High when the neighbourhood disagrees with the label (new or uncertain information), 0
    when every neighbour agrees. No neighbours (an empty index) → 1.0: nothing similar has
    been seen yet. Neighbours without a label count as disagreeing; weights that sum to 0
    fall back to equal weights.
    """
    if not neighbour_labels:
        return 1.0
    w = np.ones(len(neighbour_labels)) if weights is None else np.asarray(weights, float)
    if w.shape != (len(neighbour_labels),):
        raise ValueError(f"{len(w)} weights for {len(neighbour_labels)} neighbours")
    if not w.sum() > 0:
        w = np.ones(len(neighbour_labels))
    same = np.array(
        [n is not None and label is not None and str(n) == str(label) for n in neighbour_labels]
    )
    return float(1.0 - (w * same).sum() / w.sum())
