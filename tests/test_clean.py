"""Cleaner: recaption rule, captioners (label, tiny transformers, OpenAI-compatible), labels."""

from __future__ import annotations

import base64
import io
import json
import os
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pytest
from model_fixtures import build_tiny_captioner, build_tiny_clip, packaged_encoder, photos
from PIL import Image

from infogrowth.core.clean import (
    CaptionError,
    LabelCaptioner,
    OpenAICaptioner,
    TransformersCaptioner,
    clean_label,
    entropy_gain,
    make_captioner,
    needs_recaption,
)
from infogrowth.core.encode import ClipEncoder, alignment_of
from infogrowth.core.labels import IMAGENET_CLASSES
from infogrowth.settings import Settings


def test_needs_recaption_below_delta_only() -> None:
    assert needs_recaption(0.39, 0.4)
    assert not needs_recaption(0.4, 0.4)
    assert not needs_recaption(0.9, 0.4)
    assert needs_recaption(None, 0.4)
    assert needs_recaption(float("nan"), 0.4)


def test_label_captioner() -> None:
    images = [Image.new("RGB", (4, 4))] * 2
    assert LabelCaptioner().caption(images, ["tabby", "espresso"]) == [
        "a photo of a tabby",
        "a photo of a espresso",
    ]
    with pytest.raises(CaptionError, match="no predicted label"):
        LabelCaptioner().caption(images, ["tabby", None])


# --- TransformersCaptioner on a tiny random ViT + GPT-2 -----------------------------------
@pytest.fixture(scope="module")
def tiny_captioner(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_captioner(tmp_path_factory.mktemp("tiny-captioner"))


def test_transformers_captioner_returns_one_string_per_image(tiny_captioner: Path) -> None:
    captioner = TransformersCaptioner(
        str(tiny_captioner), device="cpu", batch_size=2, max_new_tokens=6
    )
    images = [im.resize((48, 40)) for im in list(photos().values())[:3]]
    captions = captioner.caption(images, [None] * 3)
    assert len(captions) == 3 and all(isinstance(c, str) and c for c in captions)
    assert captioner.caption(images, [None] * 3) == captions  # greedy decoding: deterministic


def test_transformers_captioner_rejects_unsupported_models(tmp_path: Path) -> None:
    clip = build_tiny_clip(tmp_path / "clip")
    with pytest.raises(ValueError, match="not a supported captioner"):
        TransformersCaptioner(str(clip), device="cpu").caption([Image.new("RGB", (8, 8))], [None])


# --- OpenAI-compatible endpoint against a local server ------------------------------------
class _Handler(BaseHTTPRequestHandler):
    status = 200
    seen: list[dict[str, Any]] = []

    def do_POST(self) -> None:  # noqa: N802 - http.server's naming
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.seen.append({"path": self.path, "auth": self.headers.get("Authorization"), **body})
        if self.status != 200:
            self._send(self.status, b'{"error": {"message": "model exploded"}}')
            return
        parts = body["messages"][0]["content"]
        url = next(p["image_url"]["url"] for p in parts if p["type"] == "image_url")
        image = Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1])))
        caption = f"  an image {image.width} pixels\nwide "
        reply = {"choices": [{"message": {"role": "assistant", "content": caption}}]}
        self._send(200, json.dumps(reply).encode())

    def _send(self, status: int, payload: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args: object) -> None:  # keep test output quiet
        pass


@pytest.fixture
def server() -> Iterator[tuple[str, type[_Handler]]]:
    handler = type("Handler", (_Handler,), {"status": 200, "seen": []})
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/v1", handler
    httpd.shutdown()
    httpd.server_close()


def test_openai_captioner_request_shape_and_order(server: tuple[str, type[_Handler]]) -> None:
    url, handler = server
    captioner = OpenAICaptioner(url + "/", "tiny-vlm", api_key="k", timeout=5, concurrency=3)
    images = [Image.new("RGB", (w, 10), "red") for w in (11, 22, 33, 44)]
    assert captioner.caption(images, [None] * 4) == [
        f"an image {w} pixels wide" for w in (11, 22, 33, 44)
    ]
    first = handler.seen[0]
    assert first["path"] == "/v1/chat/completions" and first["auth"] == "Bearer k"
    assert first["model"] == "tiny-vlm"
    (message,) = first["messages"]
    kinds = {part["type"]: part for part in message["content"]}
    assert message["role"] == "user"
    assert kinds["text"]["text"] == "Describe this image in one sentence."
    assert kinds["image_url"]["image_url"]["url"].startswith("data:image/jpeg;base64,")


def test_openai_captioner_errors_are_clear(server: tuple[str, type[_Handler]]) -> None:
    url, handler = server
    handler.status = 500
    captioner = OpenAICaptioner(url, "m", timeout=5)
    with pytest.raises(CaptionError, match="HTTP 500.*model exploded"):
        captioner.caption([Image.new("RGB", (8, 8))], [None])
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}/v1"
    with pytest.raises(CaptionError, match="unreachable"):
        OpenAICaptioner(dead, "m", timeout=2).caption([Image.new("RGB", (8, 8))], [None])


def test_openai_captioner_rejects_malformed_answers() -> None:
    from infogrowth.core.clean import _caption_from_response

    with pytest.raises(CaptionError, match="unexpected response"):
        _caption_from_response(b"<html>", "u")
    with pytest.raises(CaptionError, match="empty caption"):
        _caption_from_response(b'{"choices": [{"message": {"content": " "}}]}', "u")
    parts = {"choices": [{"message": {"content": [{"type": "text", "text": "a dog"}]}}]}
    assert _caption_from_response(json.dumps(parts).encode(), "u") == "a dog"


# --- make_captioner -----------------------------------------------------------------------
def test_make_captioner_kinds(tmp_path: Path) -> None:
    packaged = packaged_encoder()  # constructing it loads nothing
    assert make_captioner(Settings(), None) is None  # precomputed: nothing to re-score with
    assert isinstance(make_captioner(Settings(captioner="label"), packaged), LabelCaptioner)
    openai = make_captioner(
        Settings(captioner="openai", captioner_url="http://h/v1", captioner_model="m"), packaged
    )
    assert isinstance(openai, OpenAICaptioner) and openai.url == "http://h/v1/chat/completions"
    local = make_captioner(Settings(captioner="transformers", captioner_model="/m"), packaged)
    assert isinstance(local, TransformersCaptioner)
    clip = ClipEncoder(str(tmp_path), device="cpu")
    with pytest.raises(ValueError, match="class names"):
        make_captioner(Settings(captioner="label"), clip)
    with pytest.raises(ValueError, match="label\\|transformers\\|openai"):
        make_captioner(Settings(captioner="nope"), packaged)


@pytest.mark.slow
def test_a_label_caption_always_passes_the_packaged_label_anchor() -> None:
    # Why label captions are never re-scored (clean.py): the packaged alignment compares a
    # caption with the same label prompts the label captioner writes, so it always passes.
    enc = packaged_encoder()
    feats = enc.encode_images([photos()["chelsea"]])
    wrong = alignment_of(feats.anchor, enc.encode_texts(["a rocket launching into the sky"]))[0]
    assert needs_recaption(float(wrong), 0.4)
    top = IMAGENET_CLASSES[int(feats.probs[0].argmax())]
    (caption,) = LabelCaptioner().caption([photos()["chelsea"]], [top])
    fixed = alignment_of(feats.anchor, enc.encode_texts([caption]))[0]
    assert not needs_recaption(float(fixed), 0.4)


# --- single-modal label cleaning ----------------------------------------------------------
NAMES = ("cat", "dog", "crane", "crane", "fish")


def test_clean_label_keeps_confident_labels() -> None:
    probs = np.array([0.7, 0.1, 0.1, 0.05, 0.05])
    decision = clean_label("Cat", probs, NAMES, 0.5)
    assert (decision.label, decision.relabelled) == ("Cat", False)
    assert decision.confidence == pytest.approx(0.7)


def test_clean_label_relabels_to_the_argmax() -> None:
    probs = np.array([0.1, 0.6, 0.1, 0.1, 0.1])
    decision = clean_label("cat", probs, NAMES, 0.5)
    assert (decision.label, decision.relabelled) == ("dog", True)
    assert decision.confidence == pytest.approx(0.6)
    assert decision.original_confidence == pytest.approx(0.1)
    by_index = clean_label("0", probs, NAMES, 0.5)  # index labels stay indices
    assert (by_index.label, by_index.relabelled) == ("1", True)
    assert clean_label(1, probs, NAMES, 0.5).label == "1"


def test_clean_label_unknown_or_missing_labels_are_relabelled() -> None:
    probs = np.array([0.1, 0.1, 0.1, 0.1, 0.6])
    for label in ("unicorn", None, "", "99"):
        decision = clean_label(label, probs, NAMES, 0.05)
        assert decision.relabelled and decision.original_confidence == 0.0
        assert decision.label in ("fish", "4")


def test_clean_label_repeated_names_use_the_best_index() -> None:
    probs = np.array([0.1, 0.1, 0.05, 0.7, 0.05])
    assert not clean_label("crane", probs, NAMES, 0.5).relabelled
    with pytest.raises(ValueError, match="probabilities"):
        clean_label("cat", probs[:3], NAMES, 0.5)
    assert IMAGENET_CLASSES.count("crane") == 2


def test_entropy_gain() -> None:
    assert entropy_gain("cat", []) == 1.0
    assert entropy_gain("cat", ["cat"] * 4) == 0.0
    assert entropy_gain("cat", ["cat", "dog", "cat", "dog"]) == pytest.approx(0.5)
    assert entropy_gain("cat", ["cat", None, "fish", "dog"]) == pytest.approx(0.75)
    assert entropy_gain("cat", ["cat", "dog"], weights=[3.0, 1.0]) == pytest.approx(0.25)
    assert entropy_gain("cat", ["cat", "dog"], weights=[0.0, 0.0]) == pytest.approx(0.5)
    assert entropy_gain(None, ["cat"]) == 1.0
    with pytest.raises(ValueError, match="weights"):
        entropy_gain("cat", ["cat"], weights=[1.0, 2.0])
