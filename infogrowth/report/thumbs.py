"""Inline thumbnails: each image reference read once, shrunk and embedded as base64 JPEG."""

from __future__ import annotations

import base64
import io
from collections.abc import Callable
from dataclasses import dataclass

from PIL import Image, UnidentifiedImageError

from infogrowth.records import BadInput

THUMB_SIZE = 120  # longest side, in pixels
JPEG_QUALITY = 80


@dataclass(frozen=True)
class Thumb:
    """A data: URI and its size, or why there is no picture."""

    data_uri: str | None = None
    width: int = 0
    height: int = 0
    problem: str | None = None


class Thumbnails:
    """Thumbnails by image reference, cached (near-duplicates often share one image).

    A reference that cannot be read or decoded gives a Thumb with a ``problem``; so do all
    later s3:// references once the store itself failed (one outage, not one wait per image).
    """

    def __init__(self, read_bytes: Callable[[str], bytes], size: int = THUMB_SIZE) -> None:
        self.read_bytes = read_bytes
        self.size = size
        self._cache: dict[str, Thumb] = {}
        self._store_down: str | None = None

    def get(self, ref: str | None) -> Thumb:
        if not ref:
            return Thumb(problem="no image reference")
        if ref not in self._cache:
            self._cache[ref] = self._make(ref)
        return self._cache[ref]

    @property
    def loaded(self) -> int:
        return sum(1 for t in self._cache.values() if t.data_uri)

    @property
    def failed(self) -> int:
        return len(self._cache) - self.loaded

    def _make(self, ref: str) -> Thumb:
        s3 = ref.startswith("s3://")
        if s3 and self._store_down:
            return Thumb(problem=self._store_down)
        try:
            data = self.read_bytes(ref)
        except BadInput as exc:
            return Thumb(problem=str(exc))
        except Exception as exc:  # an unreachable store: a placeholder, never a crash
            problem = f"cannot read: {' '.join(str(exc).split())[:160] or type(exc).__name__}"
            if s3:
                self._store_down = problem
            return Thumb(problem=problem)
        return self._encode(data)

    def _encode(self, data: bytes) -> Thumb:
        try:
            with Image.open(io.BytesIO(data)) as img:
                img.thumbnail((self.size, self.size))
                rgb = img.convert("RGB")
        except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as exc:
            return Thumb(problem=f"not a readable image ({type(exc).__name__})")
        out = io.BytesIO()
        rgb.save(out, format="JPEG", quality=JPEG_QUALITY, optimize=True)
        encoded = base64.b64encode(out.getvalue()).decode("ascii")
        return Thumb(f"data:image/jpeg;base64,{encoded}", rgb.width, rgb.height)
