"""The bundled demo set: real photos that ship inside scikit-image / scikit-learn, captions
written for them, generated near-duplicates, deliberately wrong captions and broken inputs."""

from __future__ import annotations

import io
import json
import time
from collections import Counter
from dataclasses import fields, replace
from pathlib import Path

import numpy as np
from PIL import Image, ImageEnhance, ImageOps

from infogrowth.core.clean import CAPTION_SOURCE_LABEL, NO_CAPTIONER
from infogrowth.records import REASON_MISALIGNED
from infogrowth.settings import Settings

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


# --- the streaming demo (`infogrowth demo`, the README's main command) --------------------
# ~60 samples are too few for k=4 to tell a near-duplicate from a sparse neighbourhood, so
# each sample is compared with its single nearest neighbour. The packaged encoder is a
# stand-in for CLIP that scores lower: on this set wrong captions score 0.04-0.22 and right
# ones 0.19-0.75, so the demo cleans at δ=0.25 (keep the paper's 0.4 with a real CLIP).
DEMO_DEFAULTS = {"k": 1, "delta": 0.25}


def demo_settings(settings: Settings, tag: str) -> Settings:
    """Topics and consumer groups of their own per run, so runs never see each other."""
    topics = {
        f.name: f"demo-{tag}.{getattr(settings, f.name)}"
        for f in fields(Settings)
        if f.name.startswith("topic_") and f.name != "topic_runs"  # shared, keyed by run
    }
    return replace(settings, app_id=f"infogrowth-demo-{tag}", **topics)


def run_demo(settings: Settings, timeout_s: float = 900.0) -> int:
    from infogrowth.commands.export import export_dataset
    from infogrowth.commands.ingest import ingest_file
    from infogrowth.commands.pipeline import (
        ensure_pipeline_topics,
        start_worker,
        stop_worker,
        wait_for_outcomes,
    )
    from infogrowth.report import rows_from_outcomes, topics_source, write_report
    from infra.__main__ import cmd_up

    cmd_up(settings)  # local broker + S3 (no-op when already running)
    tag = time.strftime("%Y%m%d-%H%M%S")
    run = demo_settings(settings, tag)
    work = Path(settings.data_dir).resolve() / "demo"
    samples = build_demo_set(work)
    ensure_pipeline_topics(run)
    log_path = work / f"worker-{tag}.log"
    print(f"demo {tag}: worker log in {log_path}")
    worker = start_worker(run, log_path=str(log_path))
    try:
        ingested = ingest_file(samples, run, prefix="demo/images/", progress=False)
        print(ingested.line())
        expected = {json.loads(line)["id"] for line in samples.read_text().splitlines()}
        started = time.monotonic()
        outcomes = wait_for_outcomes(run, expected, timeout_s=timeout_s, worker=worker)
        elapsed = time.monotonic() - started
    finally:
        stop_worker(worker)
    kinds = {r["id"]: r["kind"] for r in map(json.loads, samples.read_text().splitlines())}
    print_report(outcomes, kinds, elapsed, run)
    exported = export_dataset(f"s3://{run.s3_bucket}/datasets/demo-{tag}", run, progress=False)
    print(exported.line())
    report = write_report(
        rows_from_outcomes(outcomes), work / f"report-{tag}.html", run, topics_source(run)
    )
    print(f"curation report: {report.path.resolve()}")
    print("the broker and S3 keep running for you: `make down` stops them")
    return 0


def print_report(
    outcomes: dict[str, dict], kinds: dict[str, str], seconds: float, run: Settings
) -> None:
    print(
        f"\n{len(outcomes)} samples curated in {seconds:.0f} s (δ={run.delta}, k={run.k}, "
        f"policy={run.policy}, tau={run.tau}, encoder={run.encoder}, "
        f"captioner={run.captioner})"
    )
    columns = ("id", 24), ("what it is", 18), ("decision", 9), ("why", 12), ("because of", 22)
    header = " ".join(f"{name:<{width}}" for name, width in columns)
    header += f" {'gain':>6} {'align':>6}  caption"
    print(header)
    print("-" * len(header))
    for sample_id in sorted(
        outcomes, key=lambda i: (outcomes[i]["decision"], outcomes[i].get("reason") or "", i)
    ):
        r = outcomes[sample_id]
        caption = r.get("caption") or ""
        if r.get("caption_source") in ("recaptioned", CAPTION_SOURCE_LABEL):
            caption = f"[{r['caption_source']}] {caption}"
        reason, neighbour = r.get("reason") or "", r.get("neighbour") or ""
        cells = sample_id, kinds.get(sample_id, ""), r["decision"], reason, neighbour
        line = " ".join(f"{cell:<{width}}" for cell, (_, width) in zip(cells, columns, strict=True))
        print(f"{line} {_num(r.get('gain')):>6} {_num(r.get('alignment')):>6}  {caption[:48]}")
    counts = Counter(
        r["decision"] if not r.get("reason") else f"rejected ({r['reason']})"
        for r in outcomes.values()
    )
    recaptioned = sum(1 for r in outcomes.values() if r.get("caption_source") != "original")
    print(
        "\n"
        + ", ".join(f"{n} {k}" for k, n in counts.most_common())
        + f"; {recaptioned} got a new caption"
    )
    if run.captioner == "none" and counts[f"rejected ({REASON_MISALIGNED})"]:
        print(
            f"misaligned samples were rejected, not recaptioned: {NO_CAPTIONER}, e.g. "
            "--captioner openai --captioner-url http://127.0.0.1:8000/v1 --captioner-model NAME"
        )


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"
