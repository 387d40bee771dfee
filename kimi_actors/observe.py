"""Structured events and secret redaction.

kimi_actors is a library, so it configures no logging. Every event goes through ``emit``, which
redacts first: any registered secret (the API key) and every credential shape in any value is
masked (:mod:`kimi_actors.redaction`), so no key reaches a log whatever a server echoes back.
Then the event goes to the first of these that applies:

1. the structlog logger the application handed to ``set_logger``;
2. the application's own structlog configuration, when it configured structlog
   (``structlog.get_logger("kimi_actors")``): the event name and its fields as keyword
   arguments, for the application's processors to render;
3. the stdlib logger ``kimi_actors``: a LogRecord whose fields are attributes of the record
   (what ``extra=`` sets: ``record.event``, ``record.request_id``, ...; a field named like a
   LogRecord attribute gets a ``kimi_`` prefix), so JSON formatters see them as fields, and
   whose message renders them as sorted ``key=value`` text only when a handler formats it.
   Unconfigured programs see warnings and errors on stderr, as stdlib logging does.

Each event is also added to the current OpenTelemetry span (kimi_actors/telemetry.py).
"""

from __future__ import annotations

import logging
import sys
import traceback
from collections.abc import MutableMapping
from typing import Any

from . import telemetry
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
    """A structlog logger that renders like the stdlib path (for ``get_logger()`` callers)."""
    import structlog

    return structlog.wrap_logger(
        _stdlib,
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
_fallback: Any = None
_stdlib = logging.getLogger("kimi_actors")
_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING,
           "error": logging.ERROR, "critical": logging.CRITICAL}
#: Names a field may not take on a LogRecord (``makeRecord`` refuses them).
_RESERVED = frozenset(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {
    "message", "asctime"}


def _configured_structlog() -> Any:
    """structlog, when the application configured it. An application that never imported it
    cannot have, so structlog is not imported for stdlib-logging users."""
    module = sys.modules.get("structlog")
    return module if module is not None and module.is_configured() else None


def set_logger(logger: Any | None) -> None:
    """Send kimi_actors' events to ``logger`` (a structlog logger); ``None`` restores the
    default. Keep ``redact`` in that logger's processor chain."""
    global _logger
    _logger = logger


def get_logger() -> Any:
    """The logger events go to: the one given to ``set_logger``, the application's
    structlog configuration, or a structlog wrapper of the stdlib ``kimi_actors`` logger."""
    global _fallback
    if _logger is not None:
        return _logger
    configured = _configured_structlog()
    if configured is not None:
        return configured.get_logger("kimi_actors")
    if _fallback is None:
        _fallback = _default_logger()
    return _fallback


class _Rendered:
    """An event's ``key=value`` text, rendered only when a handler formats the record."""

    __slots__ = ("fields",)

    def __init__(self, fields: dict[str, Any]) -> None:
        self.fields = fields

    def __str__(self) -> str:
        fields = self.fields
        return " ".join(f"{key}={fields[key]!r}" for key in
                        ["event", *sorted(key for key in fields if key != "event")])


def _log_stdlib(level: str, event: str, fields: dict[str, Any]) -> None:
    number = _LEVELS.get(level, logging.INFO)
    if not _stdlib.isEnabledFor(number):
        return
    if fields.pop("exc_info", None):
        fields["exception"] = redact_text(traceback.format_exc().rstrip("\n"))
    shown = {"event": event, **fields, "level": level}
    extra = {(f"kimi_{key}" if key in _RESERVED else key): value for key, value in shown.items()}
    _stdlib.log(number, "%s", _Rendered(shown), extra=extra, stacklevel=3)


def emit(level: str, event: str, **fields: Any) -> None:
    """Log one event at ``level`` ("debug", "info", "warning", "error"), secrets redacted;
    it is also an event of the current OpenTelemetry span, when one records."""
    fields = {key: _redact_value(value) for key, value in fields.items()}
    telemetry.event(event, fields)
    logger = _logger
    if logger is None:
        configured = _configured_structlog()
        if configured is not None:
            logger = configured.get_logger("kimi_actors")
    if logger is not None:
        getattr(logger, level)(event, **fields)
    else:
        _log_stdlib(level, event, fields)
