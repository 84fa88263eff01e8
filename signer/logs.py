"""structlog set-up, done once in `main()`: JSON in production, console on a TTY.

Operational logs are not the audit log. PINs and passphrases are never passed
to a logger (invariant 7). No value of a line is longer than `bounds.MAX_MESSAGE`
characters, whatever a caller sent.
"""

from __future__ import annotations

import logging
import sys

import structlog

from signer.bounds import clip_log_values

__all__ = ["configure"]


def configure(fmt: str = "auto", level: int = logging.INFO) -> None:
    console = fmt == "console" or (fmt == "auto" and sys.stderr.isatty())
    renderer: structlog.typing.Processor = (
        structlog.dev.ConsoleRenderer() if console else structlog.processors.JSONRenderer()
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            clip_log_values,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=False,
    )
