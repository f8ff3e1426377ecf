"""The worker's log never shows a secret, whichever logger writes it."""

from __future__ import annotations

import logging

import pytest

from agents.redact import mask_log_records

SECRET = "s3cr3t-value-42"


def test_log_records_of_any_logger_are_masked_with_their_tracebacks(
    caplog: pytest.LogCaptureFixture,
) -> None:
    mask_log_records([SECRET, ""])
    with caplog.at_level(logging.INFO):
        logging.getLogger("aiokafka.some.module").info("connecting with key %s", SECRET)
        try:
            raise ValueError(f"endpoint refused {SECRET}")
        except ValueError:
            logging.getLogger("faust.worker").exception("agent crashed")
    text = caplog.text
    assert SECRET not in text
    assert "connecting with key ***" in text and "endpoint refused ***" in text
    assert "Traceback" in text  # the traceback is kept, masked
