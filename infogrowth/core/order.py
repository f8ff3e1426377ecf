"""Keeps the gain stage in arrival order while some samples wait for a new caption.

Gains depend on the order samples enter the index. A recaptioned sample comes back later
than its neighbours in the stream, so letting the others overtake it would make the
curated set depend on timing. The gate releases items strictly in arrival order and
holds everything behind a sample that is still being recaptioned (head-of-line), which
makes a streaming run, a replay and an offline run of the same input agree byte for byte.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Generic, TypeVar

T = TypeVar("T")


class _Waiting:
    """The mark of an id that waits for its recaption: one instance, also after pickling
    (a gate restored by the curator's selection process crosses a pipe)."""

    def __reduce__(self) -> str:
        return "_WAITING"


_WAITING = _Waiting()


class OrderedGate(Generic[T]):
    def __init__(self) -> None:
        self._queue: OrderedDict[str, object] = OrderedDict()  # id -> item or _WAITING

    def __len__(self) -> int:
        return len(self._queue)

    def __contains__(self, key: str) -> bool:
        return key in self._queue

    def head(self) -> str | None:
        """The id everything behind waits for (None when nothing is held)."""
        return next(iter(self._queue), None)

    def waiting(self, key: str) -> bool:
        return self._queue.get(key) is _WAITING

    def item(self, key: str) -> T | None:
        """The queued item of ``key``, None while it waits for its recaption (KeyError when
        it is not queued)."""
        item = self._queue[key]
        return None if item is _WAITING else item  # type: ignore[return-value]

    def push(self, key: str, item: T | None) -> list[tuple[str, T]]:
        """Queue ``item``; ``None`` means "waiting for its recaption". Returns what is released."""
        if key in self._queue:
            raise KeyError(f"{key!r} is already queued")
        self._queue[key] = _WAITING if item is None else item
        return self._drain()

    def resolve(self, key: str, item: T) -> list[tuple[str, T]]:
        """The recaption of ``key`` came back; returns what is released."""
        if self._queue.get(key) is not _WAITING:
            raise KeyError(f"{key!r} is not waiting for a recaption")
        self._queue[key] = item
        return self._drain()

    def _drain(self) -> list[tuple[str, T]]:
        released: list[tuple[str, T]] = []
        while self._queue:
            key, item = next(iter(self._queue.items()))
            if item is _WAITING:
                break
            del self._queue[key]
            released.append((key, item))  # type: ignore[arg-type]
        return released
