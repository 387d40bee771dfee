"""Structured events and secret redaction.

kimi_actors is a library, so it does not configure global logging. Its events go through a
structlog logger wrapped around the stdlib logger ``kimi_actors`` (so unconfigured programs see
warnings and errors only, on stderr), unless the application hands its own structlog logger to
``set_logger``. Every event passes through ``emit``, which redacts first: any registered
secret (the API key) and every credential shape in any value is masked
(:mod:`kimi_actors.redaction`), so no key reaches a log whatever a server echoes back.
"""

from __future__ import annotations

import logging
from collections.abc import MutableMapping
from typing import Any

import structlog

from .redaction import REDACTED, redact_text, register_secret

__all__ = [
    "REDACTED",
    "emit",
    "get_logger",
    "redact",
    "redact_text",
    "register_secret",
    "set_logger",
]


def _redact_value(value: Any) -> Any:
    if isinstance(value, str):
        return redact_text(value)
    if isinstance(value, dict):
        return {key: _redact_value(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(_redact_value(item) for item in value)
    if isinstance(value, BaseException):
        return redact_text(f"{type(value).__name__}: {value}")
    return value


def redact(_: Any, __: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """A structlog processor; add it to your own chain to redact kimi_actors' secrets there."""
    for key, value in event_dict.items():
        event_dict[key] = _redact_value(value)
    return event_dict


def _default_logger() -> Any:
    return structlog.wrap_logger(
        logging.getLogger("kimi_actors"),
        processors=[
            redact,
            structlog.stdlib.filter_by_level,
            structlog.stdlib.add_log_level,
            structlog.processors.format_exc_info,
            structlog.processors.KeyValueRenderer(key_order=["event"], sort_keys=True),
        ],
        wrapper_class=structlog.stdlib.BoundLogger,
    )


_logger: Any = None


def set_logger(logger: Any | None) -> None:
    """Send kimi_actors' events to ``logger`` (a structlog logger); ``None`` restores the
    default. Keep ``redact`` in that logger's processor chain."""
    global _logger
    _logger = logger


def get_logger() -> Any:
    global _logger
    if _logger is None:
        _logger = _default_logger()
    return _logger


def emit(level: str, event: str, **fields: Any) -> None:
    """Log one event at ``level`` ("debug", "info", "warning", "error"), secrets redacted."""
    logger = get_logger()
    fields = {key: _redact_value(value) for key, value in fields.items()}
    getattr(logger, level)(event, **fields)
