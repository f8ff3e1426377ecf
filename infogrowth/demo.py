"""The bundled demo set: real photos that ship inside scikit-image / scikit-learn, captions
written for them, generated near-duplicates, deliberately wrong captions and broken inputs."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
from PIL import Image, ImageEnhance, ImageOps

# (file inside the package, caption written for it). Only files that ship in the wheels.
SKIMAGE_PHOTOS = {
    "astronaut.png": "an astronaut in a white space suit posing in front of an american flag",
    "chelsea.png": "a tabby cat sitting and looking to the side",
    "coffee.png": "a cup of coffee on a saucer with a spoon",
    "rocket.jpg": "a rocket standing on the launch pad before liftoff",
    "motorcycle_left.png": "a motorcycle parked in a garage",
    "hubble_deep_field.jpg": "galaxies and stars in the deep night sky seen by a space telescope",
    "coins.png": "old coins laid out on a table",
    "moon.png": "the surface of the moon covered in craters",
    "horse.png": "the black silhouette of a horse",
    "retina.jpg": "a medical image of the retina of a human eye",
    "brick.png": "a wall made of bricks",
    "grass.png": "a close up of green grass",
    "gravel.png": "a close up of small grey gravel stones",
    "camera.png": "a man with a camera on a tripod",
    "page.png": "a scanned page of printed text",
    "clock_motion.png": "a wall clock",
}
SKLEARN_PHOTOS = {
    "china.jpg": "a chinese temple with a pagoda roof among trees",
    "flower.jpg": "a close up of a pink flower",
}
# Captions that belong to none of the images: each is attached to a photo on purpose.
WRONG_CAPTIONS = {
    "chelsea.png": "a plate of spaghetti with tomato sauce",
    "rocket.jpg": "a group of children playing football on a beach",
    "coffee.png": "a red sports car driving on a mountain road",
    "flower.jpg": "a snowy mountain peak under a blue sky",
}


def _package_images() -> dict[str, tuple[Path, str]]:
    import skimage.data
    import sklearn.datasets

    sk = Path(skimage.data.__file__).parent
    sl = Path(sklearn.datasets.__file__).parent / "images"
    photos = {n: (sk / n, c) for n, c in SKIMAGE_PHOTOS.items()}
    photos.update({n: (sl / n, c) for n, c in SKLEARN_PHOTOS.items()})
    return {n: (p, c) for n, (p, c) in photos.items() if p.exists()}


def _variants(img: Image.Image) -> list[Image.Image]:
    """Near-duplicates a crawler would meet: re-encoded, slightly cropped, mirrored, brightened."""
    w, h = img.size
    crop = img.crop((w // 40, h // 40, w - w // 40, h - h // 40)).resize((w, h))
    return [crop, ImageOps.mirror(img), ImageEnhance.Brightness(img).enhance(1.15)]


def _save_jpeg(img: Image.Image, path: Path) -> None:
    buf = io.BytesIO()
    img.convert("RGB").save(buf, format="JPEG", quality=90)
    path.write_bytes(buf.getvalue())


def build_demo_set(out_dir: Path) -> Path:
    """Writes images and ``samples.jsonl`` (paths relative to it) into ``out_dir``."""
    images = out_dir / "images"
    images.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, object]] = []
    for name, (path, caption) in sorted(_package_images().items()):
        stem = Path(name).stem
        img = Image.open(path).convert("RGB")
        _save_jpeg(img, images / f"{stem}.jpg")
        rows.append(_row(stem, f"images/{stem}.jpg", caption, "original"))
        for i, variant in enumerate(_variants(img)[:2]):
            _save_jpeg(variant, images / f"{stem}-dup{i}.jpg")
            rows.append(
                _row(f"{stem}-dup{i}", f"images/{stem}-dup{i}.jpg", caption, "near-duplicate")
            )
        if name in WRONG_CAPTIONS:
            rows.append(
                _row(f"{stem}-wrong", f"images/{stem}.jpg", WRONG_CAPTIONS[name], "wrong caption")
            )
    (images / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not really a jpeg")
    rows.append(_row("corrupt", "images/corrupt.jpg", "a broken download", "undecodable image"))
    rows.append(_row("missing", "images/never-downloaded.jpg", "a lost image", "missing image"))
    rows.append(
        _row(
            "no-caption", f"images/{Path(next(iter(SKIMAGE_PHOTOS))).stem}.jpg", "", "empty caption"
        )
    )
    # Deterministic order that interleaves originals, duplicates and broken rows like a crawl.
    order = np.random.default_rng(7).permutation(len(rows))
    out = out_dir / "samples.jsonl"
    with open(out, "w", encoding="utf-8") as fh:
        for i in order:
            fh.write(json.dumps(rows[i]) + "\n")
    return out


def _row(sample_id: str, image: str, caption: str, kind: str) -> dict[str, object]:
    return {"id": sample_id, "image": image, "caption": caption, "source": "demo", "kind": kind}
