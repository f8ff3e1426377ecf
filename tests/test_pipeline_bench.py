"""bench/pipeline_bench.py's summary of repeated rounds: each pipeline against the bare loop
of its own round, and how many rounds meet the throughput target."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"


@pytest.fixture(scope="module")
def pb():  # noqa: ANN201 - the bench script, imported from its path
    sys.path.insert(0, str(BENCH))  # it imports its sibling benches by name
    try:
        spec = importlib.util.spec_from_file_location("pipeline_bench", BENCH / "pipeline_bench.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules["pipeline_bench"] = module  # dataclasses look their module up
        spec.loader.exec_module(module)
        return module
    finally:
        sys.path.remove(str(BENCH))


def test_rounds_are_judged_against_their_own_bare_loop(pb, capsys) -> None:  # noqa: ANN001
    n = 10_000

    def rnd(bare: float, one: float, two: float):  # noqa: ANN202 - rates in records/s
        return pb.Round(n / bare, {"seconds": n / one}, {"seconds": n / two})

    # The second round's two processes beat 2,000/s but not a quarter of its fast bare loop;
    # the third's miss 2,000/s but hold a quarter of its slow one.
    rounds = [rnd(5000, 1500, 2100), rnd(9000, 1200, 2200), rnd(2400, 1000, 1900)]
    pb.print_rounds(rounds, n)
    out = capsys.readouterr().out
    assert "      2    9000/s    1200/s ( 13%)    2200/s ( 24%)" in out
    assert (
        "two processes: min 1900, median 2100, max 2200 samples/s; >= 2000/s in 2 of 3 rounds,"
        " >= 25% of its round's bare loop in 2 of 3" in out
    )
    assert "one worker: min 1000, median 1200, max 1500 samples/s; >= 2000/s in 0 of 3" in out
    assert "round's bare loop in 2 of 3" in out.split("one worker:")[1].splitlines()[0]


def test_rounds_with_the_selection_in_thread_get_a_column_and_a_verdict(pb, capsys) -> None:  # noqa: ANN001
    n = 10_000
    rounds = [
        pb.Round(n / 5000, {"seconds": n / 1500}, {"seconds": n / 1800}, {"seconds": n / 2200}),
        pb.Round(n / 4000, {"seconds": n / 1400}, {"seconds": n / 1700}, {"seconds": n / 1900}),
    ]
    pb.print_rounds(rounds, n)
    out = capsys.readouterr().out
    assert "selection in-thread" in out.splitlines()[2]
    assert "      1    5000/s    1500/s ( 30%)    1800/s ( 36%)    2200/s ( 44%)" in out
    assert (
        "selection in-thread: min 1900, median 2200, max 2200 samples/s; >= 2000/s in 1 of 2"
        " rounds, >= 25% of its round's bare loop in 2 of 2" in out
    )
