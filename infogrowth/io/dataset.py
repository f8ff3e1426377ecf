"""A PyTorch ``IterableDataset`` over the curated stream, correct with ``num_workers > 1``.

Each DataLoader worker (and each rank of a distributed job) owns a disjoint share of the
`accepted` partitions: partition ``p`` goes to shard ``p % shards`` where shard =
``rank * num_workers + worker_id``. The assignment is static (``assign()``, no consumer
group rebalancing), so no sample is read by two workers and none is lost; because
`accepted` is keyed by id, a duplicate id can only appear inside one worker's share, where
``CuratedStream`` drops it. A shard with no partition yields nothing: use at most as many
workers × ranks as `accepted` has partitions (setting ``accepted_partitions``, default 4).

```python
loader = DataLoader(CuratedDataset(settings, transform=decode), batch_size=64, num_workers=4)
```
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from typing import Any

from torch.utils.data import IterableDataset, get_worker_info

from infogrowth.io.consume import CuratedSample, CuratedStream, topic_partitions
from infogrowth.settings import Settings

log = logging.getLogger("infogrowth.io.dataset")


def default_transform(sample: CuratedSample) -> dict[str, Any]:
    """The record's fields (``image`` is its S3 URI), ``image_bytes`` (None if not fetched),
    and where it was read: ``partition`` and ``offset``."""
    where = {"partition": sample.partition, "offset": sample.offset}
    return {**sample.record, "image_bytes": sample.image, **where}


def owned_partitions(partitions: list[int], shard: int, shards: int) -> list[int]:
    return [p for p in partitions if p % shards == shard]


class CuratedDataset(IterableDataset):
    """Accepted samples as a dataset; ``follow=True`` makes it an endless live stream.

    ``stream_options`` go to ``CuratedStream`` (e.g. ``group_id``, ``from_beginning``,
    ``idle_timeout_s``, ``topic``). Samples whose image could not be read are skipped.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        transform: Callable[[CuratedSample], Any] = default_transform,
        fetch_images: bool = True,
        follow: bool = False,
        rank: int = 0,
        world_size: int = 1,
        **stream_options: Any,
    ) -> None:
        super().__init__()
        self.settings = settings
        self.transform = transform
        self.fetch_images = fetch_images
        self.follow = follow
        self.rank = rank
        self.world_size = world_size
        self.stream_options = stream_options

    def shard(self) -> tuple[int, int]:
        """(this worker's shard, number of shards)."""
        info = get_worker_info()
        workers, worker_id = (info.num_workers, info.id) if info is not None else (1, 0)
        return self.rank * workers + worker_id, self.world_size * workers

    def __iter__(self) -> Iterator[Any]:
        shard, shards = self.shard()
        topic = self.stream_options.get("topic")
        mine = owned_partitions(topic_partitions(self.settings, topic), shard, shards)
        if not mine:
            log.warning("shard %d of %d owns no partition of the accepted topic", shard, shards)
            return
        stream = CuratedStream(
            self.settings,
            partitions=mine,
            follow=self.follow,
            fetch_images=self.fetch_images,
            **self.stream_options,
        )
        with stream:
            for sample in stream:
                if sample.image_error is None:
                    yield self.transform(sample)
