"""The Faust application: `faust -A agents.app worker` or `infogrowth worker`.

Topics (names from Settings):
  raw-samples ─▶ inference ─▶ scored ─▶ curator ─▶ accepted / rejected
                    ▲                     │ misaligned
                    └─ recaptioned ◀─ captioner ◀─ recaption
Bad input → rejected (with a reason); undecodable messages → dead-letter.
"""

from __future__ import annotations

import gc
from pathlib import Path

import faust

from agents import captioner, curator, diagnose, flow, hanging, inference, metrics
from agents.atomic import (
    commit_before_revocation,
    commit_in_a_transaction,
    commit_only_settled_partitions,
    gaps_end_before_the_next_record,
    keep_open_transactions,
    name_producers_by_topic,
    no_commits_after_a_failed_batch,
    seek_back_to_the_start_when_nothing_was_committed,
    stop_producers_of_lost_partitions,
)
from agents.context import Context
from agents.redact import mask_log_records
from infogrowth.core.exact import load_torch
from infogrowth.io.schema_registry import use_registry
from infogrowth.settings import Settings

ROLES = {
    "inference": inference.register,
    "captioner": captioner.register,
    "curator": curator.register,
}


def create_app(settings: Settings | None = None) -> tuple[faust.App, Context]:
    settings = settings or Settings.from_env()
    mask_log_records(settings.secret_values())
    use_registry(settings.schema_registry_url)  # "" = the fixed schema ids
    stop_producers_of_lost_partitions()
    seek_back_to_the_start_when_nothing_was_committed()
    commit_before_revocation()
    keep_open_transactions()
    no_commits_after_a_failed_batch()
    commit_in_a_transaction()
    commit_only_settled_partitions()
    gaps_end_before_the_next_record()
    diagnose.install()  # SIGUSR1 logs each task's await chain
    name_producers_by_topic()
    flow.use_fetch_wait(settings.fetch_wait_s)
    flow.deliver_directly()
    datadir = Path(settings.data_dir).resolve() / "faust" / settings.app_id
    datadir.mkdir(parents=True, exist_ok=True)
    app = faust.App(
        settings.app_id,
        broker=f"kafka://{settings.kafka_bootstrap}",
        # Kafka transactions: outputs, curator changelog and offsets commit together, so a
        # killed worker neither loses nor duplicates a curated sample.
        processing_guarantee="exactly_once",
        broker_commit_interval=settings.commit_interval_s,  # outputs become visible then
        store="memory://",  # no Faust tables: the curator reads its own changelog
        topic_partitions=1,  # topics Faust creates; ensure_pipeline_topics makes the others
        topic_replication_factor=1,
        web_enabled=False,
        datadir=str(datadir),
        consumer_auto_offset_reset="earliest",
        broker_session_timeout=10.0,  # a killed worker's partitions move on within ~10 s
        broker_heartbeat_interval=2.0,
        broker_max_poll_records=max(settings.batch_size, 100),
        stream_buffer_maxsize=flow.stream_buffer(settings.batch_size),  # agents/flow.py
        producer_max_batch_size=settings.producer_batch_bytes,  # agents/flow.py
    )
    ctx = Context(app, settings)
    roles = [r.strip() for r in settings.worker_roles.split(",") if r.strip()]
    unknown = sorted(set(roles) - set(ROLES))
    if unknown:
        raise ValueError(f"unknown worker roles {unknown}; choose from {sorted(ROLES)}")
    ctx.curator  # noqa: B018 - a bad model setting stops the worker now, not each batch
    for role in roles:
        ROLES[role](ctx)
    if "curator" in roles and settings.exact_limit > 0 and not settings.curator_process:
        # The exact store's scans: at start, not inside the first batches. With the
        # selection process they run there, and this process need not hold torch (~0.4 GB).
        load_torch()
    metrics.start(ctx)
    hanging.start(ctx)
    # What start-up made (torch, Faust, the models: ~240,000 objects) lives as long as the
    # worker: out of the collector's way, or each full collection stalls the event loop and
    # the gain step for ~0.15 s (about one per 5,000 curated samples).
    gc.freeze()
    return app, ctx


app, context = create_app()
