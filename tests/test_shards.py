"""Sharded curation without Kafka: centroid files, routing, per-shard curation, `shards fit`."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from infogrowth.commands.cli import main
from infogrowth.commands.offline import make_curator
from infogrowth.commands.shards import load, save, settings_centroids
from infogrowth.core.curate import Curator
from infogrowth.core.dedup import VARIANTS
from infogrowth.core.shards import Centroids, ShardedCurator, fit, shard_settings
from infogrowth.records import Outcome, Sample
from infogrowth.settings import Settings

DIM = 16


def clustered(n: int, clusters: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``n`` unit vectors around ``clusters`` far-apart centres (orthogonal axes), and the
    cluster of each."""
    rng = np.random.default_rng(seed)
    which = rng.integers(0, clusters, n)
    vectors = np.eye(DIM)[which] * 4 + rng.normal(size=(n, DIM))
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True), which


def samples_of(vectors: np.ndarray) -> list[Sample]:
    return [
        Sample(id=f"s{i}", caption=f"s{i}", image_embedding=v.tolist(), text_embedding=v.tolist())
        for i, v in enumerate(vectors)
    ]


def settings(**values: object) -> Settings:
    base = {"encoder": "precomputed", "tau": 0.9, "k": 2, "dup_distance": 0.3, "batch_size": 7}
    return Settings(**{**base, **values})  # type: ignore[arg-type]


def as_rows(outcomes: list[Outcome]) -> list[tuple]:
    return [(o.id, o.decision, o.reason, o.gain, o.neighbour) for o in outcomes]


def test_centroid_file_round_trip_and_version() -> None:
    centres = np.random.default_rng(1).normal(size=(3, DIM)).astype(np.float32)
    centroids = Centroids(centres, seed=5, fitted_on=40)
    again = Centroids.from_bytes(centroids.to_bytes())
    assert np.array_equal(again.centres, centres) and (again.seed, again.fitted_on) == (5, 40)
    assert again.version == centroids.version and len(centroids.version) == 16
    other = Centroids(centres + np.float32(1e-3), seed=5, fitted_on=40)
    assert other.version != centroids.version
    with pytest.raises(ValueError, match="not a centroid file"):
        Centroids.from_bytes(b"hello\n")
    with pytest.raises(ValueError, match="truncated"):
        Centroids.from_bytes(centroids.to_bytes()[:-4])


def test_fit_is_deterministic_and_routes_by_nearest_centre() -> None:
    vectors, which = clustered(300, 3)
    first, second = fit(vectors, 3, seed=0), fit(vectors, 3, seed=0)
    assert first.version == second.version and first.shards == 3 and first.fitted_on == 300
    routes = np.array([first.route(v) for v in vectors])
    # Each true cluster maps to one shard, and different clusters to different shards.
    mapping = {c: set(routes[which == c]) for c in range(3)}
    assert all(len(s) == 1 for s in mapping.values())
    assert len(set.union(*mapping.values())) == 3
    # Unnormalised input routes as its unit vector would.
    assert first.route(vectors[0] * 7) == routes[0]
    with pytest.raises(ValueError, match="8-d embedding"):
        first.route(np.ones(8))


def test_budget_shares_add_up_to_the_budget() -> None:
    shares = [shard_settings(Settings(budget=10), s, 4).budget for s in range(4)]
    assert shares == [3, 3, 2, 2]


def test_each_shard_curates_its_own_subsequence() -> None:
    """Sharded selection = an unsharded curator per shard over that shard's samples, in
    input order; outcomes come back in input order."""
    vectors, _ = clustered(120, 2, seed=3)
    centroids = fit(vectors, 2, seed=0)
    samples = samples_of(vectors)
    sharded = ShardedCurator(make_curator(settings()), centroids)
    got = sharded.curate_batch(samples[:50]) + sharded.curate_batch(samples[50:])
    assert [o.id for o in got] == [s.id for s in samples]
    expected: dict[str, Outcome] = {}
    for shard in range(2):
        mine = [s for s, v in zip(samples, vectors, strict=True) if centroids.route(v) == shard]
        alone = make_curator(settings()).curate_batch(mine)
        expected.update({o.id: o for o in alone})
    assert as_rows(got) == as_rows([expected[s.id] for s in samples])
    assert as_rows(got) != as_rows(make_curator(settings()).curate_batch(samples))
    assert sum(len(c.index) for c in sharded.shards) == sum(o.decision == "accepted" for o in got)
    fresh = sharded.reset_shard(1)  # what a streaming worker that gains shard 1 restores into
    assert type(fresh) is Curator and len(fresh.index) == 0 and sharded.shards[1] is fresh


def test_one_centroid_is_the_unsharded_curation() -> None:
    vectors, _ = clustered(80, 3, seed=4)
    samples = samples_of(vectors)
    one = Centroids(np.ones((1, DIM), dtype=np.float32))
    sharded = ShardedCurator(make_curator(settings(policy="budget", budget=9)), one)
    plain = make_curator(settings(policy="budget", budget=9))
    assert as_rows(sharded.curate_batch(samples)) == as_rows(plain.curate_batch(samples))


def test_settings_name_and_check_the_centroids(tmp_path: Path) -> None:
    centroids = fit(clustered(60, 2)[0], 2)
    ref = save(centroids, str(tmp_path / "c"), Settings())
    assert Path(ref).name == f"centroids-{centroids.version}.bin"
    assert settings_centroids(Settings(centroids=ref)).version == centroids.version
    assert settings_centroids(Settings(centroids=ref, shards=2)) is not None
    assert settings_centroids(Settings()) is None
    with pytest.raises(ValueError, match="shards=3 needs --centroids"):
        settings_centroids(Settings(shards=3))
    with pytest.raises(ValueError, match="has 2 centroids"):
        settings_centroids(Settings(centroids=ref, shards=4))
    tampered = Path(ref).with_name(f"centroids-{'0' * 16}.bin")
    tampered.write_bytes(Path(ref).read_bytes())
    with pytest.raises(ValueError, match="not its name's"):
        load(str(tampered), Settings())


def test_fit_command_then_sharded_curate(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    vectors, _ = clustered(90, 2, seed=6)
    src = tmp_path / "in.jsonl"
    rows = [{"id": s.id, "caption": s.caption, "image_embedding": s.image_embedding,
             "text_embedding": s.text_embedding} for s in samples_of(vectors)]  # fmt: skip
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    fit_args = ["shards", "fit", "--from", str(src), "--shards", "2", "--n", "60"]
    assert main([*fit_args, "--dest", str(tmp_path / "c"), "--encoder", "precomputed"]) == 0
    flag, ref = capsys.readouterr().out.split()
    assert flag == "--centroids" and Path(ref).exists()
    assert load(ref, Settings()).fitted_on == 60
    out = tmp_path / "out.jsonl"
    flags = ["--encoder", "precomputed", "--tau", "0.9", "--k", "2", "--dup-distance", "0.3"]
    assert main(["curate", str(src), "--out", str(out), "--quiet", "--centroids", ref, *flags]) == 0
    got = [json.loads(line)["decision"] for line in out.read_text().splitlines()]
    curator = make_curator(replace(settings(), centroids=ref))
    assert isinstance(curator, ShardedCurator)
    assert got == [o.decision for o in curator.curate_batch(samples_of(vectors))]
    assert main(["shards", "fit", "--from", str(src), "--dest", str(tmp_path)]) == 2
    assert "needs --shards 2 or more" in capsys.readouterr().err


def test_each_shard_keeps_its_own_image_hashes() -> None:
    """A shard deduplicates against the images *it* keeps: the same image hash kept by one
    shard is no duplicate in another (as the streaming curator, which restores each shard's
    hashes from its own changelog partition, decides)."""
    centroids = Centroids(np.eye(2, dtype=np.float32))
    sharded = ShardedCurator(make_curator(Settings(encoder="precomputed")), centroids)
    first, second = sharded.shards
    first.hashes.add("kept-in-shard-0", bytes(8 * VARIANTS))
    assert len(first.hashes) == 1 and len(second.hashes) == 0
    assert sharded.reset_shard(0).hashes is not first.hashes
