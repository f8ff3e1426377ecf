"""Ends the transactions Kafka decided but left open on the pipeline's partitions, from a
thread of every worker (``infogrowth/io/hanging.py`` says how a broker restart leaves them).

Left open, one stops every ``read_committed`` reader of its partition for good: the curator
held 244 samples behind a re-scored record that never became readable, while the consumer
lag, counted to the stable offset, said nothing waits. Every ``CHECK_S`` one request per
leader lists the open transactions; the coordinator's log is read only for one open longer
than its timeout. Workers that find the same one write the same marker, which is harmless.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time

from agents.context import Context
from agents.metrics import LEFT_OPEN
from infogrowth.commands.pipeline import transactional_topics
from infogrowth.io.hanging import close_hanging

log = logging.getLogger("infogrowth.agents")
CHECK_S = 30.0


def start(ctx: Context) -> None:
    s = ctx.settings
    args = (s.kafka_bootstrap, transactional_topics(s))
    threading.Thread(target=_watch, args=args, name="infogrowth-txn", daemon=True).start()


def _watch(bootstrap: str, topics: list[str]) -> None:
    checked = False
    while True:
        time.sleep(CHECK_S)
        try:
            for found in asyncio.run(close_hanging(bootstrap, topics)):  # each one logged
                LEFT_OPEN.labels(found.end).inc()
        except Exception as exc:  # the broker may be away for a while: ask again later
            log.info("open transactions not checked (%s)", exc)
            continue
        if not checked:
            checked = True
            log.info("checking %d topics for transactions left open every %.0f s",
                     len(topics), CHECK_S)  # fmt: skip
