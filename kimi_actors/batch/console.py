"""What ``kimi-actors run`` tells a person on stderr (internal to the runner): the library's
log records routed around the progress bar, lines that never collide with it, and the
messages for a host out of reach. Every line passes the redactor.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from types import MappingProxyType
from typing import TextIO

from ..actors.supervisor import SupervisorStats
from ..errors import BatchInputError, ConnectionFailedError, RequestTimeoutError
from ..redaction import redact_text, redact_url
from .progress import ProgressReporter

__all__ = ["Console", "ConsoleHandler", "cli_logging", "unreachable_message"]

_LOGGER_NAME = "kimi_actors"
_CLEAR_LINE = "\r\x1b[K"


class ConsoleHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes library log records to the terminal without breaking the progress bar: the
    bar's line is cleared first (it is redrawn on the next update)."""

    def __init__(self, stream: TextIO, before_write: Callable[[], None]) -> None:
        super().__init__(stream)
        self._before_write = before_write

    def emit(self, record: logging.LogRecord) -> None:
        self._before_write()
        super().emit(record)


def _not_run_stopped(record: logging.LogRecord) -> bool:
    """The runner reports a run-fatal error itself, once: the library's event would repeat
    it."""
    return not record.getMessage().startswith("event='run_stopped'")


@contextlib.contextmanager
def cli_logging(log_file: Path | None, stream: TextIO,
                before_write: Callable[[], None] = lambda: None) -> Iterator[None]:
    """Route the library's ``kimi_actors`` logger for a command-line run, restoring it after.

    With ``log_file`` every event from INFO up (retries, resumes, 429s, breaker transitions)
    goes there. On ``stream`` only errors appear, after ``before_write`` (which clears the
    progress bar's line); the progress line counts 429s and retries instead of logging each.
    """
    logger = logging.getLogger(_LOGGER_NAME)
    saved_level, saved_propagate = logger.level, logger.propagate
    console = ConsoleHandler(stream, before_write)
    console.setLevel(logging.ERROR)
    console.addFilter(_not_run_stopped)
    handlers: list[logging.Handler] = [console]
    if log_file is not None:
        try:
            file_handler = logging.FileHandler(log_file, encoding="utf-8")
        except OSError as exc:
            raise BatchInputError(f"cannot open the log file {log_file}: "
                                  f"{exc.strerror or exc}") from exc
        file_handler.setLevel(logging.INFO)
        file_handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        handlers.append(file_handler)
    logger.setLevel(logging.INFO if log_file is not None else logging.ERROR)
    logger.propagate = False
    for handler in handlers:
        logger.addHandler(handler)
    try:
        yield
    finally:
        for handler in handlers:
            logger.removeHandler(handler)
            handler.close()
        logger.setLevel(saved_level)
        logger.propagate = saved_propagate


class Console:
    """stderr for people: messages that do not collide with the progress bar."""

    def __init__(self, stream: TextIO, reporter: ProgressReporter) -> None:
        self.stream = stream
        self.reporter = reporter

    def clear_bar(self) -> None:
        """Erase the bar's line on a terminal (it is redrawn on the next update)."""
        if self.reporter.is_tty:
            self.stream.write(_CLEAR_LINE)

    def say(self, text: str) -> None:
        """One line for people; every line passes the redactor, whatever it quotes."""
        self.clear_bar()
        self.stream.write(redact_text(text) + "\n")
        self.stream.flush()


_REASON_HINTS: Mapping[str | None, str] = MappingProxyType({
    "refused": "nothing accepts connections there: check the port in --base-url and that the "
               "server is up",
    "dns": "the host name does not resolve: check its spelling in --base-url and the DNS",
    "tls": "the TLS handshake failed: check https:// against http:// in --base-url, and the "
           "certificate (a proxy that intercepts TLS needs its CA trusted)",
    "timeout": "the host does not answer: check the network, a firewall or proxy "
               "(HTTPS_PROXY), and the host in --base-url",
    "unreachable": "the host cannot be reached: check the network and the host in --base-url",
})


def unreachable_message(stats: SupervisorStats, base_url: str) -> str | None:
    """What to tell a person once attempts fail to connect at all: which address, how, and
    what to check; ``None`` while nothing says the server is out of reach."""
    error = stats.last_transport_error
    if isinstance(error, ConnectionFailedError) and error.reason is not None:
        where = f"{error.host}:{error.port}" if error.host else redact_url(base_url)
        reason = error.reason
    elif isinstance(error, RequestTimeoutError) and error.phase == "connect":
        where, reason = redact_url(base_url), "timeout"
    else:
        return None
    tries = "attempt" if stats.transport_errors == 1 else "attempts"
    return (f"cannot connect to {where} ({reason}; {stats.transport_errors:,} {tries} so "
            f"far, retrying with backoff): {_REASON_HINTS[reason]}")
