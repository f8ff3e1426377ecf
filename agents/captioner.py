"""Captioning worker: misaligned samples from `recaption` get a new caption and go back to
scoring through `recaptioned`. A captioner failure sends the old caption back with the
reason, so the curator rejects the sample as misaligned instead of waiting for it forever."""

from __future__ import annotations

from typing import Any

import faust

from agents.context import Context
from infogrowth.avro import MalformedMessage
from infogrowth.messages import scored_from_record

STAGE = "captioner"


def register(ctx: Context) -> None:
    s = ctx.settings
    serde = ctx.serde["RecaptionRequest"]

    @ctx.app.agent(ctx.topic(s.topic_recaption), name="captioner")
    async def captioner(stream: faust.StreamT) -> None:
        async for events in stream.take_events(s.batch_size, within=s.take_within):
            requests = []
            for ev in events:
                try:
                    requests.append(serde.decode(ev.value))
                except MalformedMessage as exc:
                    await ctx.dead_letter(ev, STAGE, str(exc))
            if requests:
                await _caption(ctx, requests)


async def _caption(ctx: Context, requests: list[dict[str, Any]]) -> None:
    items = [scored_from_record(r["sample"]) for r in requests]
    try:
        captions: list[str | None] = list(await ctx.run(ctx.curator.new_captions, items))
        error = None
    except Exception as exc:  # remote endpoints time out, local models run out of memory...
        captions, error = [None] * len(requests), f"recaption failed: {exc}"
    for request, caption in zip(requests, captions, strict=True):
        sample = dict(request["sample"])
        sample.update(
            attempt=1,
            original_caption=sample["caption"],
            original_alignment=request["alignment"],
            caption=caption if caption is not None else sample["caption"],
        )
        if error is not None:
            sample["extra"] = {**sample.get("extra", {}), "recaption_error": error}
        await ctx.send(ctx.settings.topic_recaptioned, "ScoredSample", sample)
