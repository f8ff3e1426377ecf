"""Secrets never reach the worker's log: every log record is masked when it is created.

A filter on one logger would miss records of other loggers (Faust, aiokafka, minio, the
OpenAI client) and handlers that Faust installs later, so the mask sits in the log record
factory, before any handler sees the record; exception text is masked there too.
"""

from __future__ import annotations

import logging
import traceback
from collections.abc import Callable, Iterable

from infogrowth.settings import mask_secrets

_SECRETS: set[str] = set()


def mask_log_records(secrets: Iterable[str]) -> None:
    """Masks ``secrets`` in every log record from now on (once per process; later calls
    add values)."""
    if not _SECRETS:
        logging.setLogRecordFactory(_masking(logging.getLogRecordFactory()))
    _SECRETS.update(s for s in secrets if s)


def _masking(make_record: Callable[..., logging.LogRecord]) -> Callable[..., logging.LogRecord]:
    def masked_record(*args: object, **kwargs: object) -> logging.LogRecord:
        record = make_record(*args, **kwargs)
        message = record.getMessage()
        masked = mask_secrets(message, _SECRETS)
        if masked != message:
            record.msg, record.args = masked, None
        if record.exc_info and record.exc_info[1] is not None:
            text = "".join(traceback.format_exception(*record.exc_info)).rstrip("\n")
            record.exc_text, record.exc_info = mask_secrets(text, _SECRETS), None
        return record

    return masked_record
