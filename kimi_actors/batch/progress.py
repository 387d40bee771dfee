"""What a batch run shows: a progress bar on a terminal, plain log lines elsewhere, a summary.

Everything here but :class:`ProgressReporter` is a pure function from a frozen snapshot to
text, so the runner only has to count, and tests check the figures without a terminal. Output
is ASCII apart from the user's own data, so a terminal with a narrow encoding cannot break it.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TextIO

from ..limits import Limits
from .io import InputScan

__all__ = [
    "ProgressReporter",
    "ProgressSnapshot",
    "RunSummary",
    "eta_seconds",
    "format_count",
    "format_duration",
    "render_bar",
    "render_log_line",
    "render_problems",
    "render_summary",
]

_MIN_BAR = 10
_TTY_INTERVAL = 0.1


def format_duration(seconds: float) -> str:
    """``"0s"``, ``"45s"``, ``"3m 05s"``, ``"2h 03m"``, ``"3d 04h"``; ``"--"`` when unknown."""
    if not math.isfinite(seconds) or seconds < 0:
        return "--"
    total = math.ceil(seconds) if seconds < 60 else round(seconds)
    days, rest = divmod(total, 86_400)
    hours, rest = divmod(rest, 3_600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d {hours:02d}h"
    if hours:
        return f"{hours}h {minutes:02d}m"
    if minutes:
        return f"{minutes}m {secs:02d}s"
    return f"{secs}s"


def format_count(value: float) -> str:
    """A short count for the bar: ``950``, ``12.5k``, ``1.2M``, ``3B``."""
    for scale, suffix in ((1e9, "B"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= scale:
            text = f"{value / scale:.1f}".removesuffix(".0")
            return f"{text}{suffix}"
    return f"{value:.0f}"


def _rate(value: float, limit: int | None, *, compact: bool) -> str:
    shown = format_count(value) if compact else f"{value:,.0f}"
    if limit is None:
        return shown
    return f"{shown}/{format_count(limit) if compact else f'{limit:,}'}"


def _check_counts(owner: str, **values: int) -> None:
    for name, value in values.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"{owner}.{name} must be an int >= 0, got {value!r}")


def _check_amounts(owner: str, **values: float) -> None:
    for name, value in values.items():
        if (isinstance(value, bool) or not isinstance(value, int | float)
                or not math.isfinite(value) or value < 0):
            raise ValueError(f"{owner}.{name} must be a finite number >= 0, got {value!r}")


@dataclass(frozen=True, slots=True, kw_only=True)
class ProgressSnapshot:
    """Where a run stands. ``done`` counts requests finished for good, answered or failed
    with an error a re-run would repeat; ``failed`` is that part of it. ``unfinished`` counts
    requests that ended without a final outcome (a re-run sends them). ``rate_limited``,
    ``overloaded`` and ``server_errors`` count the answers of each kind that were retried;
    ``resumes`` the dropped streams that were resumed. ``rpm`` and ``tpm`` are the rates over
    the last window of ``limits.minute`` seconds, so they compare directly with the limits."""

    total: int
    done: int
    failed: int
    retries: int
    rate_limited: int
    in_flight: int
    elapsed: float
    rpm: float
    tpm: float
    limits: Limits
    unfinished: int = 0
    overloaded: int = 0
    server_errors: int = 0
    resumes: int = 0

    def __post_init__(self) -> None:
        _check_counts("ProgressSnapshot", total=self.total, done=self.done, failed=self.failed,
                      retries=self.retries, rate_limited=self.rate_limited,
                      in_flight=self.in_flight, unfinished=self.unfinished,
                      overloaded=self.overloaded, server_errors=self.server_errors,
                      resumes=self.resumes)
        _check_amounts("ProgressSnapshot", elapsed=self.elapsed, rpm=self.rpm, tpm=self.tpm)
        if self.failed > self.done:
            raise ValueError(f"ProgressSnapshot.failed ({self.failed}) cannot exceed done "
                             f"({self.done})")


def eta_seconds(s: ProgressSnapshot) -> float | None:
    """Seconds left at the current request rate (the average so far before a window has
    passed); ``None`` while nothing has finished."""
    remaining = max(0, s.total - s.done)
    if remaining == 0:
        return 0.0
    if s.rpm > 0:
        return remaining * s.limits.minute / s.rpm
    if s.done > 0 and s.elapsed > 0:
        return remaining * s.elapsed / s.done
    return None


def _percent(s: ProgressSnapshot) -> float:
    return 100.0 * min(s.done, s.total) / s.total if s.total else 100.0


_ETA_WIDTH = 7
_COUNT_WIDTH = 5


def _count(value: int) -> str:
    return format_count(value).rjust(_COUNT_WIDTH)


def render_bar(s: ProgressSnapshot, width: int) -> str:
    """One line of at most ``width`` characters: bar, done/total, ETA, RPM and TPM against the
    limits, then failed, rate-limited, overloaded, 5xx, resumed, unfinished and in flight.
    Every figure has a fixed width for the run (counts right-aligned), so the line does not
    jump as numbers change. Figures are dropped from the end when the line is too narrow for
    them and a bar of 10 (the bar goes before the ETA does); the bar gets what is left."""
    eta = eta_seconds(s)
    total = f"{s.total:,}"
    eta_text = format_duration(eta) if eta is not None else "--"
    figures = [f"{s.done:>{len(total)},}/{total} {_percent(s):>3.0f}%",
               f"ETA {eta_text:>{_ETA_WIDTH}}",
               f"RPM {_rate_fixed(s.rpm, s.limits.rpm)}",
               f"TPM {_rate_fixed(s.tpm, s.limits.tpm)}",
               f"failed {_count(s.failed)}", f"rate-limited {_count(s.rate_limited)}",
               f"overloaded {_count(s.overloaded)}", f"5xx {_count(s.server_errors)}",
               f"resumed {_count(s.resumes)}", f"unfinished {_count(s.unfinished)}",
               f"in flight {_count(s.in_flight)}"]
    for count in range(len(figures), 1, -1):
        text = " | ".join(figures[:count])
        room = width - len(text) - 3
        if room >= _MIN_BAR:
            filled = room * min(s.done, s.total) // s.total if s.total else room
            return f"[{'#' * filled}{'-' * (room - filled)}] {text}"
    for count in range(len(figures), 0, -1):
        text = " | ".join(figures[:count])
        if len(text) <= width:
            return text
    return figures[0][:max(0, width)]


def _rate_fixed(value: float, limit: int | None) -> str:
    shown = format_count(value).rjust(_COUNT_WIDTH)
    return shown if limit is None else f"{shown}/{format_count(limit)}"


def render_log_line(s: ProgressSnapshot) -> str:
    """A self-contained line for logs (no bar, full numbers, elapsed time first)."""
    eta = eta_seconds(s)
    return (f"[{format_duration(s.elapsed)}] {s.done:,}/{s.total:,} done ({_percent(s):.1f}%),"
            f" {s.failed:,} failed, {s.unfinished:,} unfinished, {s.retries:,} retries"
            f" ({s.rate_limited:,} rate-limited, {s.overloaded:,} overloaded,"
            f" {s.server_errors:,} 5xx), {s.resumes:,} resumed, {s.in_flight:,} in flight,"
            f" RPM {_rate(s.rpm, s.limits.rpm, compact=False)},"
            f" TPM {_rate(s.tpm, s.limits.tpm, compact=False)},"
            f" ETA {format_duration(eta) if eta is not None else 'unknown'}")


@dataclass(frozen=True, slots=True, kw_only=True)
class RunSummary:
    """The end of a run. ``not_finished`` counts requests that may succeed on a re-run (never
    sent, stopped, retries exhausted, run-fatal error); they are not in the output."""

    ok: int
    failed_by_type: Mapping[str, int]
    not_finished: int
    skipped_done: int
    retries: int
    resumes: int
    rate_limited: int
    prompt_tokens: int
    completion_tokens: int
    wall_seconds: float
    achieved_rpm: float
    achieved_tpm: float
    limits: Limits
    stopped_reason: str | None = None
    overloaded: int = 0
    server_errors: int = 0
    transport_errors: int = 0

    def __post_init__(self) -> None:
        _check_counts("RunSummary", ok=self.ok, not_finished=self.not_finished,
                      skipped_done=self.skipped_done, retries=self.retries,
                      resumes=self.resumes, rate_limited=self.rate_limited,
                      overloaded=self.overloaded, server_errors=self.server_errors,
                      transport_errors=self.transport_errors,
                      prompt_tokens=self.prompt_tokens,
                      completion_tokens=self.completion_tokens)
        _check_counts("RunSummary", **{f"failed_by_type[{k!r}]": v
                                       for k, v in self.failed_by_type.items()})
        _check_amounts("RunSummary", wall_seconds=self.wall_seconds,
                       achieved_rpm=self.achieved_rpm, achieved_tpm=self.achieved_tpm)

    @property
    def failed(self) -> int:
        return sum(self.failed_by_type.values())


def _share(achieved: float, limit: int | None, *, digits: int) -> str:
    figure = f"{achieved:,.{digits}f}"
    if limit is None:
        return f"{figure} (no limit)"
    return f"{figure} = {100.0 * achieved / limit:.1f}% of {limit:,}"


def render_summary(s: RunSummary, *, resume_command: str | None) -> str:
    """Several lines: outcome counts, failures by error type, retries, tokens, achieved RPM and
    TPM as a share of the limits, wall time, and how to resume when something is left."""
    if s.stopped_reason:
        head = f"Stopped after {format_duration(s.wall_seconds)}: {s.stopped_reason}"
    else:
        head = f"Finished in {format_duration(s.wall_seconds)}"
    lines = [head, f"  ok             {s.ok:>10,}"]
    failures = ", ".join(f"{kind} {count:,}" for kind, count in
                         sorted(s.failed_by_type.items(), key=lambda item: (-item[1], item[0]))
                         if count)
    lines.append(f"  failed         {s.failed:>10,}" + (f"   {failures}" if failures else ""))
    if s.not_finished:
        lines.append(f"  not finished   {s.not_finished:>10,}   may succeed on a re-run")
    if s.skipped_done:
        lines.append(f"  already done   {s.skipped_done:>10,}   in the output from an earlier run")
    lines.append(f"  retries        {s.retries:>10,}   after rate-limited {s.rate_limited:,},"
                 f" overloaded {s.overloaded:,}, 5xx {s.server_errors:,},"
                 f" connection failures {s.transport_errors:,}")
    lines.append(f"  resumed        {s.resumes:>10,}   streams that dropped and went on where "
                 f"they stopped")
    lines.append(f"  tokens         prompt {s.prompt_tokens:,}, completion "
                 f"{s.completion_tokens:,}")
    if s.wall_seconds < s.limits.minute:
        lines.append(f"  achieved       {s.ok + s.failed:,} requests in "
                     f"{format_duration(s.wall_seconds)}: shorter than one "
                     f"{s.limits.minute:g} s window, too short to measure a rate against the "
                     f"limits")
    else:
        lines.append(f"  achieved       RPM {_share(s.achieved_rpm, s.limits.rpm, digits=1)};"
                     f" TPM {_share(s.achieved_tpm, s.limits.tpm, digits=0)}")
    if s.limits.minute != 60:
        lines.append(f"                 (a minute lasts {s.limits.minute:g} s in this run)")
    if s.not_finished:
        noun = "request" if s.not_finished == 1 else "requests"
        lines.append(f"To send the {s.not_finished:,} unfinished {noun}, run the same command "
                     f"again; what is in the output is skipped:")
        if resume_command:
            lines.append(f"  {resume_command}")
    return "\n".join(lines)


def render_problems(scan: InputScan, source: str, *, skip_bad: bool) -> str:
    """The bad lines and duplicates of an input file, with line numbers, and what happens."""
    if scan.ok:
        return f"{source}: no problems"
    lines = [f"{source}: {scan.problem_summary}"]
    problems = scan.problems
    lines.extend(f"  line {line}: {reason}" for line, reason in problems)
    unlisted = scan.bad_total + scan.duplicates_total - len(problems)
    if unlisted:
        lines.append(f"  ... and {unlisted:,} more")
    if skip_bad:
        lines.append("These lines are skipped (--skip-bad); the rest is sent.")
    else:
        lines.append("Nothing was sent. Fix these lines, or pass --skip-bad to send the rest.")
    return "\n".join(lines)


class ProgressReporter:
    """Writes render_bar with \\r on a TTY (at most ~10 times a second) or render_log_line every
    ``log_every`` seconds otherwise, to a text stream (stderr).

    ``width`` defaults to the terminal's width at each write, less one column so the cursor
    never wraps.
    """

    def __init__(self, stream: TextIO, *, is_tty: bool | None = None, log_every: float = 10.0,
                 width: int | None = None) -> None:
        if not (math.isfinite(log_every) and log_every > 0):
            raise ValueError(f"log_every must be a positive number of seconds, got {log_every!r}")
        self._stream = stream
        self._is_tty = _isatty(stream) if is_tty is None else is_tty
        self._interval = _TTY_INTERVAL if self._is_tty else log_every
        self._width = width
        self._last_write: float | None = None
        self._last_length = 0

    @property
    def is_tty(self) -> bool:
        return self._is_tty

    def update(self, s: ProgressSnapshot, now: float) -> None:
        """Show ``s`` unless the last write was less than the interval ago (by ``now``)."""
        if self._last_write is not None and now - self._last_write < self._interval:
            return
        self._last_write = now
        self._emit(s)

    def finish(self, s: ProgressSnapshot) -> None:
        """Show the final state whatever the interval, and end the bar's line."""
        self._emit(s)
        if self._is_tty:
            self._stream.write("\n")
            self._stream.flush()
            self._last_length = 0

    def _emit(self, s: ProgressSnapshot) -> None:
        if self._is_tty:
            line = render_bar(s, self._current_width())
            padding = " " * max(0, self._last_length - len(line))
            self._stream.write(f"\r{line}{padding}")
            self._last_length = len(line)
        else:
            self._stream.write(render_log_line(s) + "\n")
        self._stream.flush()

    def _current_width(self) -> int:
        if self._width is not None:
            return self._width
        try:
            return max(20, os.get_terminal_size(self._stream.fileno()).columns - 1)
        except (AttributeError, OSError, ValueError):
            return 79


def _isatty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False
