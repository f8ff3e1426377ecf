"""`infogrowth report`: the HTML page from curate output files (real photos) and from topics,
checked in the HTML and, when Chromium is installed, as rendered by headless Chromium."""

from __future__ import annotations

import base64
import io
import re
import shutil
import subprocess
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import skimage.data
from PIL import Image
from pipeline_helpers import embedding_rows, write_jsonl

from infogrowth.commands.cli import main
from infogrowth.commands.offline import curate_file
from infogrowth.io.files import RowWriter
from infogrowth.report import report_from_file
from infogrowth.report.thumbs import THUMB_SIZE
from infogrowth.settings import Settings

PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "camera")
DATA_URI = re.compile(r'<img src="data:image/jpeg;base64,([A-Za-z0-9+/=]+)"')


def _save_photo(name: str, path: Path, mirrored: bool = False) -> None:
    img = Image.fromarray(getattr(skimage.data, name)()).convert("RGB")
    img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT) if mirrored else img
    img.save(path, format="JPEG", quality=85)


def _row(sample_id: str, image: str, decision: str = "accepted", **fields: Any) -> dict[str, Any]:
    row = {"id": sample_id, "image": image, "caption": f"a photo of {sample_id}",
           "decision": decision, "reason": None, "detail": None, "gain": 0.3,
           "alignment": 0.5, "caption_source": "original"}  # fmt: skip
    row.update(fields)
    return row


def curated_rows(images: Path) -> list[dict[str, Any]]:
    """Rows as `infogrowth curate` writes them, with the fields later stages add: each photo
    and a mirrored near-duplicate that names it as its neighbour, and one of each other case."""
    rows = []
    for i, name in enumerate(PHOTOS):
        _save_photo(name, images / f"{name}.jpg")
        _save_photo(name, images / f"{name}-dup.jpg", mirrored=True)
        rows.append(_row(name, f"images/{name}.jpg", gain=None if i == 0 else 0.2 + i / 20))
        rows.append(
            _row(
                f"{name}-dup",
                f"images/{name}-dup.jpg",
                "rejected",
                reason="redundant",
                detail="gain 0.0100 < tau=0.05",
                gain=0.01,
                neighbour=name,
                neighbour_distance=0.004 * (i + 1),
            )  # fmt: skip
        )
    rows += [
        _row("camera-again", "images/camera-dup.jpg", "rejected", reason="redundant", gain=0.0),
        _row("orphan", "images/astronaut-dup.jpg", "rejected", reason="redundant", gain=0.02,
             neighbour="crawled-last-year"),
        _row("chelsea-fixed", "images/chelsea.jpg", caption="a photo of a tabby cat",
             caption_source="recaptioned", original_caption="a plate of spaghetti",
             alignment=0.41, original_alignment=0.08),
        _row("rocket-wrong", "images/rocket.jpg", "rejected", reason="misaligned",
             caption="children playing football", alignment=0.11, original_alignment=0.06),
        _row("coffee-label", "images/coffee.jpg", label="espresso", original_label="dog",
             relabelled=True, alignment=None),
        _row("lost", "images/never-downloaded.jpg", "rejected", reason="bad_input", gain=None,
             alignment=None, detail="images/never-downloaded.jpg: no such file"),
    ]  # fmt: skip
    return rows


# Images the page must show per section; placeholders: the missing file, the neighbour that
# was not recorded (camera-again) and the one that is not in this run (orphan).
EXPECTED_IMAGES = {"redundant": 12, "misaligned": 1, "recaptioned": 1, "relabelled": 1,
                   "bad_input": 0, "accepted": 7}  # fmt: skip
EXPECTED_PLACEHOLDERS = {"redundant": 2, "bad_input": 1}


@pytest.fixture(params=["jsonl", "parquet"])
def curated(request: pytest.FixtureRequest, tmp_path: Path) -> Path:
    (tmp_path / "images").mkdir()
    path = tmp_path / f"curated.{request.param}"
    with RowWriter(path) as writer:
        for row in curated_rows(tmp_path / "images"):
            writer.write(row)
    return path


def sections(html: str) -> dict[str, str]:
    return dict(re.findall(r'<section id="([a-z_]+)">(.*?)</section>', html, flags=re.DOTALL))


def counts_table(section: str) -> dict[str, int]:
    """The counts table: "accepted" or "rejected:<reason>" -> samples."""
    cells = re.findall(r'<tr><td>(\w+)</td><td>([\w-]+)</td><td class="num">(\d+)</td>', section)
    return {d if r == "-" else f"{d}:{r}": int(n) for d, r, n in cells}


def thumbnails(fragment: str) -> list[Image.Image]:
    """Every inline thumbnail of ``fragment``, decoded (fails if one is not a JPEG)."""
    found = []
    for data in DATA_URI.findall(fragment):
        img = Image.open(io.BytesIO(base64.b64decode(data, validate=True)))
        img.load()
        assert img.format == "JPEG" and max(img.size) <= THUMB_SIZE
        found.append(img)
    return found


def test_report_of_a_curate_file_shows_counts_histograms_and_galleries(curated, tmp_path):
    out = tmp_path / "report.html"
    summary = report_from_file(curated, out, Settings.from_env(delta=0.25, tau=0.05))
    html = out.read_text(encoding="utf-8")

    assert (summary.samples, summary.images, summary.unreadable) == (16, 10, 1)
    assert "://" not in html and not re.search(r'(src|href)="(?!data:|#)', html)
    parts = sections(html)
    assert list(parts) == ["counts", "charts", "redundant", "misaligned", "recaptioned",
                           "relabelled", "bad_input", "accepted"]  # fmt: skip
    for key, n in EXPECTED_IMAGES.items():
        assert len(thumbnails(parts[key])) == n, key
        assert parts[key].count('class="ph"') == EXPECTED_PLACEHOLDERS.get(key, 0), key
    assert list(counts_table(parts["counts"]).items()) == [
        ("accepted", 7), ("rejected:redundant", 7), ("rejected:bad_input", 1),
        ("rejected:misaligned", 1),
    ]  # fmt: skip
    # Both histograms, with their thresholds marked.
    assert parts["charts"].count("<svg") == 2
    assert "τ = 0.05" in parts["charts"] and "δ = 0.25" in parts["charts"]
    # A redundant sample sits beside the earlier one it repeats, with the distance between.
    card = _card(parts["redundant"], "coffee-dup")
    assert "earlier: coffee" in card and "distance <b>0.012</b>" in card
    assert len(thumbnails(card)) == 2
    assert "neighbour not recorded" in _card(parts["redundant"], "camera-again")
    recaptioned = _card(parts["recaptioned"], "chelsea-fixed")
    assert "a plate of spaghetti" in recaptioned and "a photo of a tabby cat" in recaptioned
    assert "0.080 → 0.410" in recaptioned
    assert "<s>dog</s> → <b>espresso</b>" in parts["relabelled"]
    assert "0.060 → 0.110" in parts["misaligned"]
    assert "no such file" in parts["bad_input"]


def _card(section: str, sample_id: str) -> str:
    cards = re.split(r'(?=<figure class="card)', section)
    return next(c for c in cards if f'title="{sample_id}"' in c)


def test_galleries_are_capped_and_say_how_many_were_left_out(curated, tmp_path):
    out = tmp_path / "report.html"
    report_from_file(curated, out, Settings.from_env(), max_per_section=2)
    parts = sections(out.read_text(encoding="utf-8"))
    assert parts["redundant"].count('<figure class="card') == 2
    assert "5 more not shown" in parts["redundant"]
    assert parts["accepted"].count('<figure class="card') == 2
    assert "5 more not shown" in parts["accepted"]
    assert "more not shown" not in parts["misaligned"]


def test_redundant_samples_without_neighbour_fields_are_shown_alone(tmp_path):
    (tmp_path / "images").mkdir()
    rows = curated_rows(tmp_path / "images")
    for row in rows:
        row.pop("neighbour", None), row.pop("neighbour_distance", None)
    src = write_jsonl(tmp_path / "curated.jsonl", rows)
    report_from_file(src, tmp_path / "report.html", Settings.from_env())
    redundant = sections((tmp_path / "report.html").read_text(encoding="utf-8"))["redundant"]
    assert redundant.count('<figure class="card') == 7
    assert len(thumbnails(redundant)) == 7 and 'class="ph"' not in redundant
    assert "do not name the earlier sample" in redundant


def test_report_of_real_curate_output(tmp_path):
    """The rows `infogrowth curate` writes today (precomputed embeddings, photos attached)."""
    (tmp_path / "images").mkdir()
    for name in PHOTOS:
        _save_photo(name, tmp_path / "images" / f"{name}.jpg")
    rows = embedding_rows(40)
    for i, row in enumerate(rows):
        row["image"] = f"images/{PHOTOS[i % len(PHOTOS)]}.jpg"
    settings = Settings.from_env(encoder="precomputed", k=1, tau=0.05, delta=0.25)
    curated = tmp_path / "curated.parquet"
    result = curate_file(write_jsonl(tmp_path / "in.jsonl", rows), curated, settings, False)

    out = tmp_path / "report.html"
    assert main(["report", str(curated), "--out", str(out), "--encoder", "precomputed"]) == 0
    parts = sections(out.read_text(encoding="utf-8"))
    assert counts_table(parts["counts"]) == result.counts
    for reason in ("redundant", "misaligned", "bad_input"):
        n = result.counts.get(f"rejected:{reason}", 0)
        assert parts.get(reason, "").count('<figure class="card') == n, reason
    assert len(thumbnails(parts["accepted"])) == result.counts["accepted"]


def test_report_refuses_a_file_that_is_not_curate_output(tmp_path, capsys):
    src = write_jsonl(tmp_path / "raw.jsonl", [{"id": "a", "caption": "x"}])
    assert main(["report", str(src), "--out", str(tmp_path / "r.html")]) == 2
    assert "row 1 has no decision" in capsys.readouterr().err
    assert not (tmp_path / "r.html").exists()


# --- rendered by a real browser ---------------------------------------------------------
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
needs_chromium = pytest.mark.skipif(
    CHROMIUM is None,
    reason="headless Chromium is not installed (Debian: apt-get install chromium; "
    "`make test` installs it when run as root)",
)
# Writes what the browser made of the page, once loaded, into the DOM it dumps: the images
# it decoded and the page's width (wider than the window would scroll sideways).
PROBE = (
    "<script>addEventListener('load', () => { const b = document.body;"
    " b.dataset.loaded = [...document.images].filter(i => i.complete && i.naturalWidth > 0)"
    ".length; b.dataset.width = document.documentElement.scrollWidth; });</script>"
)


def _chromium(*args: str) -> subprocess.CompletedProcess[str]:
    assert CHROMIUM is not None
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
           "--virtual-time-budget=5000", *args]  # fmt: skip
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=True)


@needs_chromium
@pytest.mark.parametrize("curated", ["jsonl"], indirect=True)
def test_report_renders_in_headless_chromium(curated, tmp_path):
    out = tmp_path / "report.html"
    report_from_file(curated, out, Settings.from_env(delta=0.25))
    html = out.read_text(encoding="utf-8")
    probe = tmp_path / "probe.html"
    probe.write_text(html.replace("</body>", PROBE + "</body>"), encoding="utf-8")

    dom = _chromium("--dump-dom", "--window-size=1280,2000", probe.as_uri()).stdout
    found = re.search(r'<body data-loaded="(\d+)" data-width="(\d+)"', dom)
    assert found is not None, dom[:500]
    assert int(found.group(1)) == sum(EXPECTED_IMAGES.values()) == html.count("<img ")
    assert int(found.group(2)) <= 1280

    shot = tmp_path / "shot.png"
    _chromium(f"--screenshot={shot}", "--window-size=1280,2000", out.as_uri())
    pixels = np.asarray(Image.open(shot).convert("RGB")).astype(np.int64)
    assert pixels.shape[:2] == (2000, 1280)
    packed = (pixels[..., 0] << 16) | (pixels[..., 1] << 8) | pixels[..., 2]
    assert packed.std() > 20  # not a blank page
    # Text and flat boxes stay under ~220 colours per 48 px tile; photo thumbnails do not.
    tiles = [len(np.unique(packed[y : y + 48, x : x + 48]))
             for y in range(0, 2000 - 48, 48) for x in range(0, 1280 - 48, 48)]  # fmt: skip
    assert sum(n > 400 for n in tiles) >= 20
    assert len(np.unique(packed)) > 10_000


# --- from a run's topics, images in S3 ---------------------------------------------------
def _outcome(sample_id: str, image: str, decision: str, **fields: Any) -> dict[str, Any]:
    record = {"id": sample_id, "image": image, "caption": f"a photo of {sample_id}",
              "decision": decision, "gain": 0.3, "alignment": 0.5, **fields}  # fmt: skip
    if decision == "accepted":
        record["image_embedding"] = [1.0, 0.0]
    return record


@pytest.mark.kafka
@pytest.mark.s3
def test_report_of_a_runs_topics_reads_committed_outcomes_and_s3_images(kafka, s3, tmp_path):
    from infogrowth.io.avro import AvroSerde
    from infogrowth.io.kafka_io import ensure_topics, make_producer, produce_records
    from infogrowth.report import report_from_topics

    store = s3.store("report")
    for name in ("astronaut", "coffee"):
        _save_photo(name, tmp_path / f"{name}.jpg")
        store.put_file(tmp_path / f"{name}.jpg", f"images/{name}.jpg")
    tag = uuid.uuid4().hex[:8]
    settings = Settings.from_env(
        kafka_bootstrap=kafka, s3_endpoint=s3.endpoint, s3_access_key=s3.access_key,
        s3_secret_key=s3.secret_key, s3_bucket="report",
        topic_accepted=f"acc-{tag}", topic_rejected=f"rej-{tag}", policy="budget", budget=1,
    )  # fmt: skip
    ensure_topics(kafka, [settings.topic_accepted, settings.topic_rejected])
    accepted, rejected = AvroSerde("AcceptedSample"), AvroSerde("RejectedSample")
    producer = make_producer(kafka)
    produce_records(producer, settings.topic_accepted, accepted, [
        _outcome("astronaut", "s3://report/images/astronaut.jpg", "accepted"),
        _outcome("coffee", "s3://report/images/coffee.jpg", "accepted", gain=0.4),
    ])  # fmt: skip
    produce_records(producer, settings.topic_rejected, rejected, [
        _outcome("astronaut-dup", "s3://report/images/astronaut.jpg", "rejected",
                 reason="redundant", gain=0.01, extra={"neighbour": "astronaut",
                                                       "neighbour_distance": "0.02"}),
        _outcome("gone", "s3://report/images/never-uploaded.jpg", "rejected",
                 reason="bad_input", detail="no such object"),
        _outcome("astronaut", "s3://report/images/astronaut.jpg", "rejected",
                 reason="over_budget", detail="pushed out of the budget by coffee"),
    ])  # fmt: skip
    aborted = make_producer(kafka, **{"transactional.id": f"report-{tag}"})
    aborted.init_transactions()
    aborted.begin_transaction()
    aborted.produce(settings.topic_accepted, accepted.encode(_outcome("ghost", "", "accepted")))
    aborted.abort_transaction()

    out = tmp_path / "report.html"
    summary = report_from_topics(settings, out)
    html = out.read_text(encoding="utf-8")
    assert (summary.samples, summary.images, summary.unreadable) == (4, 2, 1)
    parts = sections(html)
    assert counts_table(parts["counts"]) == {
        "accepted": 1, "rejected:bad_input": 1, "rejected:over_budget": 1, "rejected:redundant": 1,
    }  # fmt: skip
    assert "ghost" not in html  # an aborted transaction's record is never read
    card = _card(parts["redundant"], "astronaut-dup")
    assert len(thumbnails(card)) == 2 and "distance <b>0.020</b>" in card
    assert 'class="ph"' in parts["bad_input"] and "no such object" in parts["bad_input"]
    assert len(thumbnails(parts["accepted"])) == 1


def test_duplicates_are_shown_beside_the_kept_image_they_repeat(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    _save_photo("coffee", images / "coffee.jpg")
    _save_photo("coffee", images / "coffee-copy.jpg", mirrored=True)
    rows = [
        _row("coffee", "images/coffee.jpg"),
        _row("coffee-wrong", "images/coffee-copy.jpg", "rejected", reason="duplicate",
             caption="a red sports car", neighbour="coffee", neighbour_distance=0.02),
    ]  # fmt: skip
    source = write_jsonl(tmp_path / "curated.jsonl", rows)
    out = tmp_path / "report.html"
    report_from_file(source, out, Settings.from_env())
    part = sections(out.read_text(encoding="utf-8"))["duplicate"]
    assert "earlier: coffee" in part and "a red sports car" in part
    assert len(thumbnails(part)) == 2  # the duplicate and the kept image, side by side
    assert "distance <b>0.020</b>" in part


def test_a_duplicate_found_by_image_hash_shows_bits_not_a_cosine_distance(tmp_path):
    rows = [
        _row("coffee", "images/coffee.jpg"),
        _row("copy", "images/coffee.jpg", "rejected", reason="duplicate", neighbour="coffee",
             neighbour_distance=0.047, detail="image hash 3/64 bits from coffee <= 8"),
    ]  # fmt: skip
    out = tmp_path / "report.html"
    report_from_file(write_jsonl(tmp_path / "curated.jsonl", rows), out, Settings.from_env())
    part = sections(out.read_text(encoding="utf-8"))["duplicate"]
    assert "3/64 bits" in part and "distance" not in part


@pytest.mark.kafka
def test_report_of_topics_marks_the_thresholds_of_the_run_that_decided(kafka, tmp_path):
    """The reader's own settings (δ default) must not be what the page marks: the run's
    recorded δ and policy are."""
    from dataclasses import replace

    from infogrowth.io.avro import AvroSerde
    from infogrowth.io.kafka_io import ensure_topics, make_producer, produce_records
    from infogrowth.io.runs import record_run
    from infogrowth.report import report_from_topics

    tag = uuid.uuid4().hex[:8]
    reader = Settings.from_env(
        kafka_bootstrap=kafka, topic_accepted=f"acc-{tag}", topic_rejected=f"rej-{tag}",
        topic_runs=f"runs-{tag}", app_id=f"app-{tag}",
    )  # fmt: skip
    worker = replace(reader, delta=0.31, policy="threshold", tau=0.07)
    ref = record_run(worker, "worker")
    ensure_topics(kafka, [reader.topic_accepted, reader.topic_rejected])
    produce_records(make_producer(kafka), reader.topic_accepted, AvroSerde("AcceptedSample"),
                    [_outcome("a", "", "accepted", run=ref)])  # fmt: skip
    out = tmp_path / "report.html"
    report_from_topics(reader, out)
    html = out.read_text(encoding="utf-8")
    assert reader.delta != 0.31
    assert "δ=0.31" in html and "threshold τ=0.07" in html and f"run {ref}" in html
