"""Inference agent: raw samples and new captions → embeddings + alignment → `scored`.

Bad input (missing/undecodable image, empty caption, NaN embedding) becomes a `rejected`
record with its reason; bytes that are not a valid record go to `dead-letter`.
"""

from __future__ import annotations

import logging
from dataclasses import replace

import faust
from faust.types import TP

from agents.context import Context
from infogrowth.core.curate import Curator, Scored, rejected
from infogrowth.core.shards import ShardedCurator
from infogrowth.io.avro import MalformedMessage, decode_any
from infogrowth.io.messages import (
    NOT_A_SAMPLE,
    outcome_record,
    sample_from_raw,
    scored_from_record,
    scored_record,
)
from infogrowth.io.vectors import unpack
from infogrowth.records import REASON_BAD_INPUT, REASON_MISALIGNED, Outcome, Sample

STAGE = "inference"
log = logging.getLogger("infogrowth.agents")


def register(ctx: Context) -> None:
    s = ctx.settings
    source = ctx.topic(s.topic_raw, s.topic_recaptioned)

    @ctx.app.agent(source, name="inference")
    async def inference(stream: faust.StreamT) -> None:
        async for events in stream.take_events(s.batch_size, within=s.take_within):
            async with ctx.batch():
                await _infer(ctx, events)


async def _infer(ctx: Context, events: list[faust.EventT]) -> None:
    parsed = [(ev, _parse(ev)) for ev in events]
    batch = [(ev, it) for ev, it in parsed if isinstance(it, _Item)]
    items = [it for _, it in batch]
    results = await _score(ctx, items) if items else []
    async with ctx.atomic(events):  # the model ran outside: commits wait only for the sends
        for ev, it in parsed:
            if isinstance(it, str):
                await ctx.dead_letter(ev, STAGE, it)
        for (ev, item), res in zip(batch, results, strict=True):
            await _route(ctx, item, res, ev.message.tp)


async def _score(ctx: Context, items: list[_Item]) -> list[Scored | Outcome]:
    """The model step. Should it fail on a batch, its rows are scored one at a time, and a
    row the model fails on alone is rejected as bad input, instead of a worker that stops
    and meets the same row again after every restart. When every row fails alone, the
    fault is not in the rows (a model or device gone): raise, and the batch waits for a
    restarted worker."""
    try:
        return await ctx.run_while_store_down(score, ctx.curator, items)
    except Exception as exc:
        if len(items) == 1:
            raise
        log.warning("the model step failed on %d samples (%r): one at a time", len(items), exc)
    results: list[Scored | Outcome] = []
    errors: list[Exception] = []
    for item in items:
        try:
            results += await ctx.run_while_store_down(score, ctx.curator, [item])
        except Exception as exc:
            log.warning("the model step fails on sample %r alone: %r", item.sample.id, exc)
            errors.append(exc)
            results.append(rejected(item.sample, REASON_BAD_INPUT, f"model step failed: {exc!r}"))
    if len(errors) == len(items):
        raise errors[-1]
    return results


class _Item:
    """One message to score; ``previous`` is the attempt-0 record of a recaptioned sample."""

    def __init__(self, sample: Sample, previous: dict | None) -> None:
        self.sample = sample
        self.previous = previous


def score(curator: Curator, items: list[_Item]) -> list[Scored | Outcome]:
    """New samples pass the filters first (as offline), new captions only the encoder."""
    fresh = [it.sample for it in items if it.previous is None]
    recaptioned = [it.sample for it in items if it.previous is not None]
    new = iter(curator.score_new(fresh) if fresh else [])
    again = iter(curator.score(recaptioned) if recaptioned else [])
    return [next(new if it.previous is None else again) for it in items]


def _parse(event: faust.EventT) -> _Item | str:
    """The sample to score, or why the message goes to the dead-letter topic."""
    try:
        name, record = decode_any(event.value)
    except MalformedMessage as exc:
        return str(exc)
    try:
        if name == "RawSample":
            if not record["id"]:
                return "RawSample without an id"
            return _Item(sample_from_raw(record), None)
        if name == "ScoredSample" and record.get("attempt", 0) > 0:
            return _Item(scored_from_record(record).sample, record)
    except NOT_A_SAMPLE as exc:  # valid Avro, no sample
        return f"{name}: {exc}"
    return f"unexpected {name} record on {event.message.topic}"


async def _route(ctx: Context, item: _Item, res: Scored | Outcome, source: TP) -> None:
    if item.previous is not None:
        res = _recaptioned(ctx, item.previous, res)
    if isinstance(res, Outcome):
        record = outcome_record(res, item.sample, None)
        await ctx.send(ctx.settings.topic_rejected, "RejectedSample", record, source)
    else:
        original = item.previous.get("original_caption") if item.previous else None
        record = scored_record(res, attempt=1 if item.previous else 0, original_caption=original)
        shard = _shard(ctx.curator, item, res)
        await ctx.send(ctx.settings.topic_scored, "ScoredSample", record, source, shard)


def _shard(curator: Curator, item: _Item, res: Scored) -> int | None:
    """Sharded: the `scored` partition of the sample's shard. A recaptioned sample goes by
    its first embedding, so its whole life stays in one shard (and one curator)."""
    if not isinstance(curator, ShardedCurator):
        return None
    if item.previous is not None:
        return curator.centroids.route(unpack(item.previous["image_embedding"]))
    return curator.route(res)


def _recaptioned(ctx: Context, previous: dict, res: Scored | Outcome) -> Scored:
    """A re-scored sample always goes back to the curator, which holds its place in line.

    If the new caption could not even be scored, the old embeddings travel on with the
    original low alignment and the reason, so the curator rejects it as misaligned.
    """
    if isinstance(res, Scored):
        source = previous.get("caption_source") or "recaptioned"
        ctx.curator.adopt_caption(res, source, previous.get("original_alignment"))
        return res
    old = scored_from_record(previous)
    old.sample = replace(old.sample, caption=previous.get("original_caption"))
    old.encoded.alignment = previous.get("original_alignment")
    extra = dict(old.sample.extra.get("extra") or {})
    extra["recaption_error"] = f"{REASON_MISALIGNED}: new caption unusable ({res.detail})"
    old.sample.extra["extra"] = extra
    return old
