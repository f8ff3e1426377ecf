"""Curator.select: duplicates whatever the caption, gain against the kept samples only,
and the neighbour each duplicate/redundant rejection names (offline core, no Kafka)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from infogrowth.commands.offline import curate_file, make_curator
from infogrowth.io.avro import AvroSerde
from infogrowth.io.messages import outcome_record
from infogrowth.records import Outcome, Sample
from infogrowth.settings import Settings

DIM = 8


def unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v)


def image_on_arc(i: int, step: float) -> np.ndarray:
    """Point i of an arc in dims 0-1, each ``step`` (1 − cos) from the previous one."""
    angle = np.arccos(1.0 - step) * i
    v = np.zeros(DIM)
    v[0], v[1] = np.cos(angle), np.sin(angle)
    return v


def sample(sample_id: str, image: np.ndarray, caption_axis: int | None = None) -> Sample:
    """Text = the image itself (a perfect caption) or the image plus its own caption axis:
    captions on different axes are far apart, alignment stays 0.71 (> delta)."""
    text = image.copy()
    if caption_axis is not None:
        text = unit(image) + np.eye(DIM)[caption_axis]
    return Sample(
        id=sample_id,
        caption=sample_id,
        image_embedding=image.tolist(),
        text_embedding=text.tolist(),
    )


def curate(samples: list[Sample], **settings: object) -> list[Outcome]:
    curator = make_curator(Settings(encoder="precomputed", **settings))  # type: ignore[arg-type]
    return curator.curate_batch(samples)


def decisions(outcomes: list[Outcome]) -> list[str | None]:
    return [o.reason or o.decision for o in outcomes]


@pytest.mark.parametrize("batch_size", [1, 2, 32])
def test_redundancy_is_measured_against_kept_samples_only(batch_size: int) -> None:
    """The issue's arc: 0.03 steps, tau=0.05, k=1. Before: only p0 was kept."""
    arc = [sample(f"p{i}", image_on_arc(i, 0.03)) for i in range(5)]
    curator = make_curator(
        Settings(encoder="precomputed", tau=0.05, k=1, dup_distance=0, batch_size=batch_size)
    )
    chunks = [arc[s : s + batch_size] for s in range(0, 5, batch_size)]
    out = [o for chunk in chunks for o in curator.curate_batch(chunk)]
    assert decisions(out) == ["accepted", "redundant", "accepted", "redundant", "accepted"]
    assert out[1].neighbour == "p0" and out[1].neighbour_distance == pytest.approx(0.03, abs=1e-5)
    assert out[3].neighbour == "p2"
    assert out[2].gain == pytest.approx(1 - np.cos(2 * np.arccos(0.97)), abs=1e-5)
    assert curator.index.ids == ["p0", "p2", "p4"]


def test_policy_all_indexes_everything() -> None:
    arc = [sample(f"p{i}", image_on_arc(i, 0.03)) for i in range(4)]
    out = curate(arc, policy="all", k=1, dup_distance=0)
    assert decisions(out) == ["accepted"] * 4
    assert [o.gain for o in out][1:] == pytest.approx([0.03, 0.03, 0.03], abs=1e-5)


def test_same_image_with_another_caption_is_a_duplicate() -> None:
    image = image_on_arc(0, 0.03)
    other = unit(image_on_arc(0, 0.03) + np.eye(DIM)[5])  # a different photo (cos 0.71)
    near = unit(image + 0.2 * np.eye(DIM)[1])  # a re-encoded copy: 0.02 away
    out = curate(
        [
            sample("coffee", image, caption_axis=2),
            sample("coffee-wrong", image, caption_axis=3),  # same bytes, new caption
            sample("coffee-small", near, caption_axis=4),
            sample("cup", other, caption_axis=6),
        ],
        policy="all",
    )
    assert decisions(out) == ["accepted", "duplicate", "duplicate", "accepted"]
    assert (out[1].neighbour, out[1].neighbour_distance) == ("coffee", 0.0)
    assert out[2].neighbour == "coffee" and 0 < out[2].neighbour_distance <= 0.15
    assert "dup_distance=0.15" in (out[2].detail or "")


def test_exact_copies_are_duplicates_even_at_dup_distance_zero() -> None:
    image = image_on_arc(1, 0.5)
    out = curate([sample("a", image, 2), sample("b", image, 3)], dup_distance=0.0)
    assert decisions(out) == ["accepted", "duplicate"]


def test_budget_evictions_leave_the_index() -> None:
    """budget=2: q2 pushes q1 out; q3, a copy of q1's image, is then compared with the kept
    q0 and q2 only, so it is neither a duplicate nor of zero gain."""
    angles = np.radians([0, 60, 180, 60])
    pts = [np.r_[np.cos(a), np.sin(a), np.zeros(DIM - 2)] for a in angles]
    out = curate([sample(f"q{i}", p) for i, p in enumerate(pts)], policy="budget", budget=2, k=1)
    assert out[2].evicted == ["q1"]
    assert out[3].reason == "over_budget" and out[3].gain == pytest.approx(0.5, abs=1e-5)


def test_output_row_and_topic_record_name_the_neighbour(tmp_path: Path) -> None:
    image = image_on_arc(0, 0.03)
    rows = [
        {"id": s.id, "caption": s.caption, "image_embedding": s.image_embedding,
         "text_embedding": s.text_embedding}
        for s in (sample("a", image, 2), sample("b", image, 3))
    ]  # fmt: skip
    src, dst = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    curate_file(src, dst, Settings(encoder="precomputed"), progress=False)
    out = [json.loads(line) for line in dst.read_text().splitlines()]
    assert out[1]["reason"] == "duplicate" and out[1]["neighbour"] == "a"
    assert out[1]["neighbour_distance"] == 0.0 and out[0]["neighbour"] is None

    outcome = curate([sample("a", image, 2), sample("b", image, 3)])[1]
    record = outcome_record(outcome, Sample(id="b"), None)
    serde = AvroSerde("RejectedSample")
    back = serde.decode(serde.encode(record))
    assert back["reason"] == "duplicate"
    assert (back["neighbour"], back["neighbour_distance"]) == ("a", 0.0)


@pytest.mark.parametrize("out_name", ["out.jsonl", "out.parquet"])
def test_a_row_evicted_after_it_was_written_is_rewritten(tmp_path: Path, out_name: str) -> None:
    """batch_size=1: q1's row is written accepted before q2 pushes it out of the budget."""
    angles = np.radians([0, 60, 180, 60])
    pts = [np.r_[np.cos(a), np.sin(a), np.zeros(DIM - 2)] for a in angles]
    rows = [
        {"id": s.id, "decision": "x", "image_embedding": s.image_embedding,
         "text_embedding": s.text_embedding, "note": i}
        for i, s in enumerate(sample(f"q{i}", p) for i, p in enumerate(pts))
    ]  # fmt: skip
    src, dst = tmp_path / "in.jsonl", tmp_path / out_name
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    settings = Settings(encoder="precomputed", policy="budget", budget=2, k=1, batch_size=1)

    curate_file(src, dst, settings, progress=False)

    out = pq.read_table(dst).to_pylist() if dst.suffix == ".parquet" else [
        json.loads(line) for line in dst.read_text().splitlines()
    ]  # fmt: skip
    assert [(r["id"], r["reason"] or r["decision"]) for r in out] == [
        ("q0", "accepted"), ("q1", "over_budget"), ("q2", "accepted"), ("q3", "over_budget")
    ]  # fmt: skip
    assert out[1]["detail"] == "pushed out of the budget by q2"
    assert list(out[1])[:3] == ["id", "decision", "image_embedding"]  # fields keep their place
    assert out[1]["note"] == 1 and out[1]["image_embedding"] == rows[1]["image_embedding"]
    assert not list(tmp_path.glob("*.partial"))


def test_select_rejects_a_sample_of_other_sizes_as_bad_input_in_its_place() -> None:
    """`scored` may hold embeddings of another size (anyone may write there; inference
    processes each fix the size from their own first row): rejected, not a failed batch."""
    arc = [sample(f"p{i}", image_on_arc(i, 0.2)) for i in range(4)]
    small = Sample(id="small", caption="s", image_embedding=[1.0, 0.0], text_embedding=[1.0, 0.0])
    curator = make_curator(Settings(encoder="precomputed", k=1, dup_distance=0))
    elsewhere = make_curator(Settings(encoder="precomputed"))  # another inference process
    scored = curator.score(arc[:2]) + elsewhere.score([small]) + curator.score(arc[2:])
    out = curator.select(scored)
    assert [o.id for o in out] == ["p0", "p1", "small", "p2", "p3"]
    assert (out[2].decision, out[2].reason) == ("rejected", "bad_input")
    assert (
        out[2].detail
        == "image embedding of 2 dims, this run's are 8, text embedding of 2 dims, this run's are 8"
    )
    assert decisions(out[:2] + out[3:]) == decisions(curate(arc, k=1, dup_distance=0))
    nan = curator.score([sample("nan", image_on_arc(9, 0.2))])[0]
    nan.encoded.text_emb = nan.encoded.text_emb * np.nan  # as a record written to `scored` may
    (rejected,) = curator.select([nan])
    assert (rejected.reason, rejected.detail) == (
        "bad_input",
        "text embedding is zero or not finite",
    )
    zero = curator.score([sample("zero", image_on_arc(8, 0.2))])[0]
    zero.encoded.image_emb = zero.encoded.image_emb * 0
    good = curator.score([sample("good", image_on_arc(7, 0.2))])
    out = curator.select([zero, *good, nan])  # each in its place, among fitting rows
    assert [(o.id, o.reason, o.detail) for o in out] == [
        ("zero", "bad_input", "image embedding is zero or not finite"),
        ("good", None, None),
        ("nan", "bad_input", "text embedding is zero or not finite"),
    ]
    # the first sample of a run sets the sizes, as in inference
    first = make_curator(Settings(encoder="precomputed")).select(
        elsewhere.score([small]) + scored[:1]
    )
    assert [o.reason or o.decision for o in first] == ["accepted", "bad_input"]


def test_select_rejects_a_sample_without_the_text_embedding_a_pair_run_indexes() -> None:
    """`scored` allows a null text embedding (single-modal runs write them): in a run that
    indexes text it is bad input, in its place, even as the run's first sample."""
    arc = [sample(f"p{i}", image_on_arc(i, 0.2)) for i in range(3)]
    curator = make_curator(Settings(encoder="precomputed", k=1, dup_distance=0))
    scored = curator.score(arc)
    scored[0].encoded.text_emb = None
    out = curator.select(scored)
    assert [(o.id, o.reason) for o in out] == [("p0", "bad_input"), ("p1", None), ("p2", None)]
    assert out[0].detail == "no text embedding, which this run indexes"
    assert curator.index.dims == {"image": 8, "text": 8}
    single = make_curator(Settings(encoder="precomputed", mode="single", k=1))
    assert [o.reason for o in single.select(scored)] == [None, None, None]


def test_select_of_more_than_a_thousand_samples_decides_each_in_its_place() -> None:
    """The curator's gate can release more than 1,024 samples at once (a long wait for one
    recaption, or a restart with that many queued): the gain stage walks them in chunks of
    1,024, and the outcomes of the second chunk went to the first chunk's samples (1,094
    released in a kill loop: 64 of them rejected as "misaligned" at alignment 0.97, others
    indexed but reported rejected). Each outcome must be its own sample's, as in batches."""
    rng = np.random.default_rng(3)
    centres = rng.normal(size=(40, DIM))
    rows = [
        sample(f"s{i}", unit(centres[i % 40] + 0.4 * rng.normal(size=DIM))) for i in range(1200)
    ]
    settings = Settings(encoder="precomputed", policy="threshold", tau=0.3, dup_distance=0.02)
    at_once = make_curator(settings)
    out = at_once.select(at_once.score(rows))
    assert [o.id for o in out] == [r.id for r in rows]
    batched = make_curator(settings)
    scored = batched.score(rows)
    in_batches = [o for s in range(0, len(rows), 256) for o in batched.select(scored[s : s + 256])]
    assert [(o.id, o.decision, o.reason, o.gain) for o in out] == [
        (o.id, o.decision, o.reason, o.gain) for o in in_batches
    ]
    assert len(at_once.index) == sum(o.decision == "accepted" for o in out)
