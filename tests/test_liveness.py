"""The worker's stall watchdog (agents/liveness.py): records waiting in its own partitions
and no batch finished for ``stall_s`` means stuck; recovering, retrying an outage or
records waiting only elsewhere do not."""

from __future__ import annotations

from agents.liveness import Liveness


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def watchdog(stall_s: float = 120) -> tuple[Liveness, Clock]:
    clock = Clock()
    live = Liveness(stall_s, clock)
    live.owned = frozenset({("scored", 0), ("raw", 1)})
    return live, clock


def test_records_waiting_here_and_no_batch_for_the_stall_time_is_stuck() -> None:
    live, clock = watchdog()
    waiting = live.waiting([("scored", 0, 1036), ("raw", 1, 0)])
    assert waiting == 1036
    clock.now += 119
    assert not live.stuck(waiting, busy=False)
    clock.now += 2
    assert live.stuck(waiting, busy=False)


def test_a_finished_batch_restarts_the_count() -> None:
    live, clock = watchdog()
    clock.now += 100
    live.progressed()
    clock.now += 100
    assert not live.stuck(5, busy=False)
    clock.now += 21
    assert live.stuck(5, busy=False)


def test_records_waiting_in_partitions_of_other_workers_are_not_ours() -> None:
    live, clock = watchdog()
    waiting = live.waiting([("scored", 1, 500), ("raw", 0, 70)])
    assert waiting == 0
    clock.now += 1000
    assert not live.stuck(waiting, busy=False)


def test_recovering_or_waiting_out_an_outage_is_progress() -> None:
    live, clock = watchdog()
    clock.now += 1000
    assert not live.stuck(10, busy=True)  # and it restarts the count
    clock.now += 119
    assert not live.stuck(10, busy=False)
    clock.now += 2
    assert live.stuck(10, busy=False)


def test_an_idle_worker_is_not_stuck_and_zero_turns_the_watchdog_off() -> None:
    live, clock = watchdog()
    clock.now += 1000
    assert not live.stuck(0, busy=False)
    off, clock = watchdog(stall_s=0)
    clock.now += 10_000
    assert not off.stuck(99, busy=False)


def test_a_long_model_step_is_work_not_a_stall() -> None:
    """A slow captioner (minutes for a batch of remote calls) must not be restarted."""
    live, clock = watchdog()
    live.steps = 1
    clock.now += 1000
    assert not live.stuck(10, busy=False)
    live.steps = 0
    clock.now += 121
    assert live.stuck(10, busy=False)
