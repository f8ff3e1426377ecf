"""Captioning worker: misaligned samples from `recaption` get a new caption and go back to
scoring through `recaptioned`. A captioner failure, or no captioner configured (the default),
sends the old caption back with the reason, so the curator rejects the sample as misaligned
instead of waiting for it forever, with the same detail as an offline run."""

from __future__ import annotations

import logging
from typing import Any

import faust
from faust.types import TP

from agents.context import Context
from infogrowth.core.curate import Scored
from infogrowth.io.messages import NOT_A_SAMPLE, scored_from_record

STAGE = "captioner"
log = logging.getLogger("infogrowth.agents")


def register(ctx: Context) -> None:
    s = ctx.settings

    @ctx.app.agent(ctx.topic(s.topic_recaption), name="captioner")
    async def captioner(stream: faust.StreamT) -> None:
        async for events in stream.take_events(s.batch_size, within=s.take_within):
            async with ctx.batch():
                await _recaption(ctx, events)


async def _recaption(ctx: Context, events: list[faust.EventT]) -> None:
    requests, samples, bad = [], [], []
    for ev in events:
        try:
            request = ctx.serde["RecaptionRequest"].decode(ev.value)
            samples.append(scored_from_record(request["sample"]))
            requests.append((ev.message.tp, request))
        except NOT_A_SAMPLE as exc:
            bad.append((ev, str(exc)))
    _log_batch(events)
    captions, error = await _caption(ctx, samples)
    async with ctx.atomic(events):  # the model ran outside: commits wait only for the sends
        for ev, reason in bad:
            await ctx.dead_letter(ev, STAGE, reason)
        for (source, request), caption in zip(requests, captions, strict=True):
            await _send_back(ctx, request, caption, error, source)


def _log_batch(events: list[faust.EventT]) -> None:
    """One line a batch: which requests were read (a request never answered shows here)."""
    offsets = [ev.message.offset for ev in events]
    log.info(
        "captioner: %d requests from %s, offsets %d-%d",
        len(events),
        events[0].message.tp,
        min(offsets),
        max(offsets),
    )


async def _caption(ctx: Context, items: list[Scored]) -> tuple[list[str | None], str | None]:
    if not items:
        return [], None
    if ctx.curator.captioner is None:
        return [None] * len(items), ctx.curator.no_captioner_detail()
    try:
        return list(await ctx.run_while_store_down(ctx.curator.new_captions, items)), None
    except Exception as exc:  # remote endpoints time out, local models run out of memory...
        return [None] * len(items), f"recaption failed: {exc}"


async def _send_back(
    ctx: Context, request: dict[str, Any], caption: str | None, error: str | None, source: TP
) -> None:
    """The sample with its new caption (or, on failure, its old one and the reason)."""
    sample = dict(request["sample"])
    sample.update(
        attempt=1,
        original_caption=sample["caption"],
        original_alignment=request["alignment"],
        caption=caption if caption is not None else sample["caption"],
        caption_source="original" if caption is None else ctx.curator.captioner.caption_source,
    )
    if error is not None:
        sample["extra"] = {**sample.get("extra", {}), "recaption_error": error}
    await ctx.send(ctx.settings.topic_recaptioned, "ScoredSample", sample, source)
