"""Faust transaction patches of agents/atomic.py that need no broker."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

from agents import atomic


class _Manager:
    def __init__(self, open_: bool) -> None:
        self.open = open_

    def is_in_transaction(self) -> bool:
        return self.open


def test_a_transaction_still_open_at_a_rebalance_is_not_begun_again(monkeypatch) -> None:  # noqa: ANN001
    """Faust begins the transaction of every assigned partition at a rebalance; one that
    stayed open (kept partition, nothing committed) goes on instead of being begun again
    (aiokafka refuses, and Faust logged a WARNING for each)."""
    begun: list[str] = []

    async def faust_begin(self: object, transactional_id: str) -> None:
        begun.append(transactional_id)

    monkeypatch.setattr(atomic, "_faust_begin_transaction", faust_begin)
    producer = SimpleNamespace(
        _transaction_producers={
            "kept-0": SimpleNamespace(_txn_manager=_Manager(open_=True)),
            "ended-1": SimpleNamespace(_txn_manager=_Manager(open_=False)),
        }
    )

    async def rebalance() -> None:
        for tid in ("kept-0", "ended-1", "new-2"):
            await atomic._begin_unless_open(producer, tid)  # type: ignore[arg-type]

    asyncio.run(rebalance())
    assert begun == ["ended-1", "new-2"]
