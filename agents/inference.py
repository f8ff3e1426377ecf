"""Inference agent: raw samples and new captions → embeddings + alignment → `scored`.

Bad input (missing/undecodable image, empty caption, NaN embedding) becomes a `rejected`
record with its reason; bytes that are not a valid record go to `dead-letter`.
"""

from __future__ import annotations

from dataclasses import replace

import faust

from agents.context import Context
from infogrowth.avro import MalformedMessage, decode_any
from infogrowth.curate import Scored
from infogrowth.messages import outcome_record, sample_from_raw, scored_from_record, scored_record
from infogrowth.records import REASON_MISALIGNED, Outcome, Sample

STAGE = "inference"


def register(ctx: Context) -> None:
    s = ctx.settings
    source = ctx.topic(s.topic_raw, s.topic_recaptioned)

    @ctx.app.agent(source, name="inference")
    async def inference(stream: faust.StreamT) -> None:
        async for events in stream.take_events(s.batch_size, within=s.take_within):
            batch = [item for ev in events if (item := await _parse(ctx, ev)) is not None]
            if batch:
                await _score_and_route(ctx, batch)


class _Item:
    """One message to score; ``previous`` is the attempt-0 record of a recaptioned sample."""

    def __init__(self, sample: Sample, previous: dict | None) -> None:
        self.sample = sample
        self.previous = previous


async def _parse(ctx: Context, event: faust.EventT) -> _Item | None:
    try:
        name, record = decode_any(event.value)
    except MalformedMessage as exc:
        await ctx.dead_letter(event, STAGE, str(exc))
        return None
    if name == "RawSample":
        if not record["id"]:
            await ctx.dead_letter(event, STAGE, "RawSample without an id")
            return None
        return _Item(sample_from_raw(record), None)
    if name == "ScoredSample" and record.get("attempt", 0) > 0:
        return _Item(scored_from_record(record).sample, record)
    await ctx.dead_letter(event, STAGE, f"unexpected {name} record on {event.message.topic}")
    return None


async def _score_and_route(ctx: Context, batch: list[_Item]) -> None:
    results = await ctx.run(ctx.curator.score, [it.sample for it in batch])
    for item, res in zip(batch, results, strict=True):
        if item.previous is not None:
            res = _recaptioned(item.previous, res)
        if isinstance(res, Outcome):
            await ctx.send(
                ctx.settings.topic_rejected,
                "RejectedSample",
                outcome_record(res, item.sample, None),
            )
        else:
            original = item.previous.get("original_caption") if item.previous else None
            record = scored_record(
                res, attempt=1 if item.previous else 0, original_caption=original
            )
            await ctx.send(ctx.settings.topic_scored, "ScoredSample", record)


def _recaptioned(previous: dict, res: Scored | Outcome) -> Scored:
    """A re-scored sample always goes back to the curator, which holds its place in line.

    If the new caption could not even be scored, the old embeddings travel on with the
    original low alignment and the reason, so the curator rejects it as misaligned.
    """
    if isinstance(res, Scored):
        res.caption_source = "recaptioned"
        res.original_alignment = previous.get("original_alignment")
        return res
    old = scored_from_record(previous)
    old.sample = replace(old.sample, caption=previous.get("original_caption"))
    old.encoded.alignment = previous.get("original_alignment")
    extra = dict(old.sample.extra.get("extra") or {})
    extra["recaption_error"] = f"{REASON_MISALIGNED}: new caption unusable ({res.detail})"
    old.sample.extra["extra"] = extra
    return old
