"""Builders for tiny random-weight models (CLIP, ViT+GPT-2 captioner, ViT classifier) and
bundled photos.

Everything here is built offline from configs and a hand-written vocabulary, then saved with
``save_pretrained`` so that the production loaders read it through their normal code path.
"""

from __future__ import annotations

import json
import os
from functools import lru_cache
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests must never reach the hub

import numpy as np
from PIL import Image

# Byte-level BPE alphabets without merges: every character is one token. Enough for tests.
_CHARS = [chr(c) for c in range(ord("a"), ord("z") + 1)] + list("0123456789.,!?'-")
CLIP_PROJECTION_DIM = 16


def build_tiny_clip(directory: Path) -> Path:
    """A 2-layer CLIP (32 hidden, 16-d projection, 32-px images) saved to ``directory``."""
    from transformers import CLIPConfig, CLIPModel, CLIPTokenizer

    directory.mkdir(parents=True, exist_ok=True)
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for ch in _CHARS:
        vocab.setdefault(ch, len(vocab))
        vocab.setdefault(ch + "</w>", len(vocab))
    CLIPTokenizer(vocab=vocab, merges=[]).save_pretrained(directory)
    layers = {"hidden_size": 32, "intermediate_size": 37, "num_hidden_layers": 2}
    config = CLIPConfig(
        text_config={
            **layers,
            "num_attention_heads": 4,
            "vocab_size": len(vocab),
            "max_position_embeddings": 77,
            "bos_token_id": 0,
            "eos_token_id": 1,
            "pad_token_id": 1,
        },
        vision_config={**layers, "num_attention_heads": 4, "image_size": 32, "patch_size": 8},
        projection_dim=CLIP_PROJECTION_DIM,
    )
    _seeded()
    CLIPModel(config).save_pretrained(directory)
    _write_preprocessor(directory, shortest_edge=32, crop=32, kind="CLIPImageProcessor")
    return directory


def build_tiny_captioner(directory: Path) -> Path:
    """A ViT encoder + 2-layer GPT-2 decoder (VisionEncoderDecoderModel) saved to ``directory``."""
    import torch
    from transformers import (
        GPT2Config,
        GPT2Tokenizer,
        VisionEncoderDecoderConfig,
        VisionEncoderDecoderModel,
        ViTConfig,
    )

    directory.mkdir(parents=True, exist_ok=True)
    vocab = {"<|endoftext|>": 0, "<pad>": 1}
    for ch in _CHARS:
        vocab.setdefault(ch, len(vocab))
        vocab.setdefault("Ġ" + ch, len(vocab))  # byte-level BPE's marker for a leading space
    tokenizer = GPT2Tokenizer(vocab=vocab, merges=[], pad_token="<pad>")
    tokenizer.save_pretrained(directory)
    encoder = ViTConfig(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=37,
        image_size=32,
        patch_size=8,
    )
    decoder = GPT2Config(
        vocab_size=len(vocab), n_embd=32, n_layer=2, n_head=4, n_positions=64,
        bos_token_id=0, eos_token_id=0, add_cross_attention=True, is_decoder=True,
    )  # fmt: skip
    config = VisionEncoderDecoderConfig.from_encoder_decoder_configs(encoder, decoder)
    config.decoder_start_token_id, config.pad_token_id, config.eos_token_id = 0, 1, 0
    _seeded()
    model = VisionEncoderDecoderModel(config=config)
    with torch.no_grad():  # random weights would end every caption at once: mute end/pad
        model.decoder.get_output_embeddings().weight[:2] = 0
    generation = model.generation_config
    generation.decoder_start_token_id, generation.pad_token_id, generation.eos_token_id = 0, 1, 0
    model.save_pretrained(directory)
    _write_preprocessor(directory, height=32, kind="ViTImageProcessor")
    return directory


def build_tiny_classifier(directory: Path, labels: list[str], favoured: str) -> Path:
    """A 2-layer ViT image classifier over ``labels`` that always prefers ``favoured``
    (its head has no weights, only a bias), saved to ``directory``."""
    import torch
    from transformers import ViTConfig, ViTForImageClassification

    directory.mkdir(parents=True, exist_ok=True)
    config = ViTConfig(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37,
        image_size=32, patch_size=8, num_labels=len(labels),
        id2label=dict(enumerate(labels)), label2id={n: i for i, n in enumerate(labels)},
    )  # fmt: skip
    _seeded()
    model = ViTForImageClassification(config)
    with torch.no_grad():
        model.classifier.weight.zero_()
        model.classifier.bias.copy_(torch.tensor([8.0 if n == favoured else 0.0 for n in labels]))
    model.save_pretrained(directory)
    _write_preprocessor(directory, height=32, kind="ViTImageProcessor")
    return directory


def _seeded() -> None:
    import torch

    torch.manual_seed(0)


def _write_preprocessor(
    directory: Path,
    kind: str,
    shortest_edge: int | None = None,
    crop: int | None = None,
    height: int | None = None,
) -> None:
    size = (
        {"shortest_edge": shortest_edge} if shortest_edge else {"height": height, "width": height}
    )
    config = {
        "image_processor_type": kind,
        "do_resize": True,
        "size": size,
        "do_center_crop": crop is not None,
        "do_rescale": True,
        "rescale_factor": 1 / 255,
        "do_normalize": True,
        "image_mean": [0.5, 0.5, 0.5],
        "image_std": [0.5, 0.5, 0.5],
        "resample": 3,
    }
    if crop is not None:
        config["crop_size"] = {"height": crop, "width": crop}
    (directory / "preprocessor_config.json").write_text(json.dumps(config, indent=2))


# --- real photos bundled with scikit-image ------------------------------------------------
PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "horse", "camera")


@lru_cache(maxsize=1)
def photos() -> dict[str, Image.Image]:
    """Bundled scikit-image photos as RGB PIL images (chelsea is a cat)."""
    from skimage import data

    out = {}
    for name in PHOTOS:
        arr = np.asarray(getattr(data, name)())
        if arr.dtype == bool:
            arr = arr.astype(np.uint8) * 255
        out[name] = Image.fromarray(arr).convert("RGB")
    return out


def jpeg_bytes(image: Image.Image) -> bytes:
    import io

    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=90)
    return buf.getvalue()


@lru_cache(maxsize=1)
def packaged_encoder():  # noqa: ANN201 - imported lazily to keep collection fast
    """One PackagedEncoder per test session (its weights are cached per process anyway)."""
    from infogrowth.core.encode import PackagedEncoder

    return PackagedEncoder("cpu", batch_size=32)
