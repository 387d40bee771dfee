"""The batch runner: a JSONL file of chat requests through the actor runtime, into a resumable
JSONL output, as fast as the account's limits allow.

Order of work, and why:

1. Without ``--fake`` the API key is read from the environment first, so a missing key fails
   in a second instead of after a long scan. The key is never printed.
2. The output is opened (:class:`~kimi_actors.batch.io.OutputWriter` locks it and cuts a torn
   last line), then scanned for the custom_ids already final, then the input is scanned whole,
   line by line, skipping those ids. Bad lines and duplicate custom_ids are reported with their
   line numbers before anything is sent; the run stops there unless ``--skip-bad``. This part
   is synchronous, so Ctrl-C during it is an ordinary ``KeyboardInterrupt``.
3. The input is read again, lazily, and fed to ``Supervisor.map``, which keeps a bounded window
   of actors: memory does not grow with the file. Each result is written as one whole line the
   moment it arrives. Only answers and errors that cannot succeed on a re-run are written
   (:func:`~kimi_actors.batch.io.is_final_error`); everything else stays unwritten, so running
   the same command again sends exactly what is missing.

Stopping (signal handlers on the event loop):

* First SIGINT (Ctrl-C) or SIGTERM: stop sending. The supervisor is closed with a drain
  timeout (``drain_timeout``, 30 s by default): requests not yet admitted fail at once and
  stay unwritten, requests in flight get the drain time to finish and are written. Then the
  summary and the command that resumes the run are printed. SIGTERM is treated like the first
  Ctrl-C because process managers send it and then wait a grace period: finishing in-flight
  answers saves their tokens, and a SIGKILL at the end of the grace period loses nothing
  written.
* Second SIGINT or SIGTERM: stop now. Everything in flight is cancelled; every line already
  written stays valid (each is one ``write()``), and a resumed run sends the rest.

A run-fatal API error (wrong key, exhausted quota) stops the runtime at once; the runner
prints one message for it, however many requests were waiting, and exits with
:data:`EXIT_FATAL`.

Exit codes (:data:`EXIT_CODES`)::

    0    every request is answered (lines skipped by --skip-bad do not count)
    1    some requests failed with a final error, or were not finished (a re-run sends them)
    2    usage error or bad input: nothing was sent (bad lines, missing key, locked output)
    3    a run-fatal API error stopped the run (authentication failed, quota exhausted)
    130  interrupted by SIGINT or SIGTERM; run the same command again to resume

Achieved rates in the summary. The governor counts what its rolling windows hold right now
(requests admitted, retries included, and tokens reserved at admission: prompt estimate +
max_tokens), exactly what the server compares with the limits. The runner samples that count
ten times a second and reports its time average over the run: "on average the last minute held
X requests, Y% of the limit". The governor's windows are longer than the server's by a margin
against network jitter (1.5%; with ``--fake`` at least 50 ms, see ``_FAKE_MARGIN_SECONDS``),
so the count is scaled back to the server's window. A run that keeps every window full
scores 100% less the margin, whatever the number of requests; nothing is credited for the
first window's burst (a count like ``N / T * W`` would be), and a run that is not rate-bound
shows how much room it left. Where a dimension has no limit, the governor does not count it,
and the runner counts finished requests and billed tokens over the same window instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import signal
import sys
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, TextIO

from ..actors.supervisor import MapResult, Supervisor, SupervisorStats
from ..clock import Clock, MonotonicClock
from ..errors import (
    AuthenticationError,
    BatchInputError,
    KimiError,
    QuotaExhaustedError,
    SupervisorClosedError,
)
from ..governance.governor import DEFAULT_WINDOW_MARGIN
from ..limits import Limits
from ..policy import FatalMode, FatalPolicy, ResumePolicy
from ..protocol.chunks import ChatResult
from ..redaction import redact_text, redact_url
from ..transport import cleartext_host
from .config import RunConfig
from .console import Console, cli_logging, unreachable_message
from .io import BatchRequest, DoneSet, InputScan, iter_requests, scan_input
from .output import OutputWriter, is_final_error, scan_output
from .plan import plan_run, render_plan
from .progress import (
    ProgressReporter,
    ProgressSnapshot,
    RunSummary,
    format_duration,
    render_problems,
    render_summary,
)
from .rates import RateWindow, TimeAverage
from .report import RunRecorder, render_report

__all__ = [
    "DRAIN_SECONDS",
    "EXIT_CODES",
    "EXIT_FATAL",
    "EXIT_INCOMPLETE",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "EXIT_USAGE",
    "RUN_PROGRAM",
    "RunResult",
    "cli_logging",
    "completion_body",
    "run_batch",
    "unreachable_message",
]

EXIT_OK = 0
EXIT_INCOMPLETE = 1
EXIT_USAGE = 2
EXIT_FATAL = 3
EXIT_INTERRUPTED = 130
#: Every exit code of ``kimi-actors run`` and what it means (the README's table).
EXIT_CODES: Mapping[int, str] = MappingProxyType({
    EXIT_OK: "every request is answered",
    EXIT_INCOMPLETE: "some requests failed with a final error or were not finished; run the "
                     "same command again to send the unfinished ones",
    EXIT_USAGE: "usage error or bad input (bad lines, missing key, output in use): nothing "
                "was sent",
    EXIT_FATAL: "a run-fatal API error (authentication failed, quota exhausted) stopped "
                "the run",
    EXIT_INTERRUPTED: "interrupted by SIGINT (Ctrl-C) or SIGTERM; run the same command again "
                      "to resume",
})
#: Seconds in-flight requests get to finish after the first Ctrl-C.
DRAIN_SECONDS = 30.0
#: The command a resume hint names.
RUN_PROGRAM = "kimi-actors run"

#: The governor's window margin (the Supervisor's default), passed explicitly because the
#: progress line scales the governor's counts back to the server's window with it.
_WINDOW_MARGIN = DEFAULT_WINDOW_MARGIN
#: With ``--fake`` the server shares the runner's event loop, so it reads a request late by
#: however long the loop is busy (writing results, progress): an absolute lag that 1.5% of a
#: one-second test window cannot cover. The margin is at least this many seconds there.
_FAKE_MARGIN_SECONDS = 0.05
_TICK_SECONDS = 0.1


@dataclass(frozen=True, slots=True, kw_only=True)
class RunResult:
    """How a run ended. ``summary`` is ``None`` when nothing was sent (usage error, bad input,
    dry run); ``message`` is the one-line reason for a non-zero exit, already printed."""

    exit_code: int
    summary: RunSummary | None = None
    message: str | None = None
    #: Lines written to the output by this run.
    lines_written: int = 0

    def __post_init__(self) -> None:
        if self.exit_code not in EXIT_CODES:
            raise ValueError(f"RunResult.exit_code must be one of {sorted(EXIT_CODES)}, "
                             f"got {self.exit_code!r}")


def completion_body(result: ChatResult) -> dict[str, Any]:
    """A ``chat.completion`` body for ``result`` (:meth:`ChatResult.to_dict`)."""
    return result.to_dict()


def _limit_text(limits: Limits) -> str:
    def one(value: int | None) -> str:
        return "no limit" if value is None else f"{value:,}"

    text = (f"concurrency {one(limits.concurrency)}, RPM {one(limits.rpm)}, "
            f"TPM {one(limits.tpm)}, TPD {one(limits.tpd)}")
    if limits.minute != 60:
        text += f" (a minute lasts {limits.minute:g} s)"
    return text


def _fatal_message(error: KimiError, config: RunConfig) -> str:
    detail = redact_text(str(error))
    if isinstance(error, AuthenticationError):
        where = "the fake server's key" if config.fake else f"${config.api_key_env}"
        return (f"the server rejected the API key from {where} ({detail}); every request "
                f"would fail the same way, so the run stopped. Check the key (and that it "
                f"belongs to {redact_url(config.base_url)}: a key of api.moonshot.cn is "
                f"rejected by api.moonshot.ai and back), then run the same command again.")
    if isinstance(error, QuotaExhaustedError):
        return (f"the account's quota is exhausted or the account is suspended ({detail}); "
                f"every request would fail the same way, so the run stopped. Recharge, then "
                f"run the same command again.")
    return (f"a run-fatal API error stopped the run ({type(error).__name__}: {detail}); "
            f"fix its cause, then run the same command again.")


@dataclass(slots=True)
class _Tally:
    """What the consumer counted."""

    ok: int = 0
    failed_final: dict[str, int] = field(default_factory=dict)
    not_final: dict[str, int] = field(default_factory=dict)
    fatal: KimiError | None = None

    @property
    def done(self) -> int:
        """Requests finished for good: answered, or failed with an error a re-run repeats."""
        return self.ok + self.failed

    @property
    def failed(self) -> int:
        return sum(self.failed_final.values())

    @property
    def unfinished(self) -> int:
        """Requests that ended without a final outcome (a re-run sends them)."""
        return sum(self.not_final.values())


class _Sender:
    """The asynchronous part of one run: the supervisor (and FakeKimi), the consumer of
    ``Supervisor.map``, the progress ticker and the signal handlers."""

    def __init__(self, config: RunConfig, *, api_key: str | None, writer: OutputWriter,
                 scan: InputScan, skip: DoneSet, console: Console, drain_timeout: float,
                 clock: Clock | None = None) -> None:
        self._config = config
        self._api_key = api_key
        self._writer = writer
        self._scan = scan
        self._skip = skip
        self._console = console
        self._drain_timeout = drain_timeout
        self._limits = config.limits()
        self._margin = _WINDOW_MARGIN
        if config.fake:
            self._margin = min(0.5, max(_WINDOW_MARGIN,
                                        _FAKE_MARGIN_SECONDS / self._limits.minute))
        self.tally = _Tally()
        self._pending: dict[int, BatchRequest] = {}
        self._next_index = 0
        self._feeding = True
        self.signals = 0
        self._interrupt: asyncio.Future[None] | None = None
        self._consumer: asyncio.Task[None] | None = None
        self._sup: Supervisor | None = None
        self._requests_window = RateWindow(self._limits.minute)
        self._tokens_window = RateWindow(self._limits.minute)
        self._clock: Clock = clock or MonotonicClock()
        self.started = self.ended = self._clock.now()
        self.stats: SupervisorStats | None = None
        self.rpm_average = TimeAverage()
        self.tpm_average = TimeAverage()
        #: What the report is drawn from (only with ``--report``).
        self.recorder = RunRecorder() if config.report is not None else None
        self._sent_at: dict[int, float] = {}

    # -- signals -----------------------------------------------------------------------------

    def _on_signal(self, signum: signal.Signals) -> None:
        self.signals += 1
        if self.signals == 1:
            self._feeding = False
            in_flight = self._sup.statistics().in_flight if self._sup is not None else 0
            self._console.say(
                f"{signum.name}: stopping. No new requests are sent; the {in_flight:,} in "
                f"flight get {format_duration(self._drain_timeout)} to finish. Press Ctrl-C "
                f"again to stop now (what is written stays valid).")
            if self._interrupt is not None and not self._interrupt.done():
                self._interrupt.set_result(None)
        else:
            self._console.say(f"{signum.name} again: stopping now.")
            if self._consumer is not None:
                self._consumer.cancel()

    @contextlib.contextmanager
    def _signal_handlers(self, loop: asyncio.AbstractEventLoop) -> Iterator[None]:
        installed: list[signal.Signals] = []
        for signum in (signal.SIGINT, signal.SIGTERM):
            try:
                loop.add_signal_handler(signum, self._on_signal, signum)
            except (NotImplementedError, RuntimeError):  # pragma: no cover - Windows, threads
                continue
            installed.append(signum)
        try:
            yield
        finally:
            for signum in installed:
                loop.remove_signal_handler(signum)

    # -- the run -----------------------------------------------------------------------------

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        self._interrupt = loop.create_future()
        with self._signal_handlers(loop):
            async with contextlib.AsyncExitStack() as stack:
                base_url, api_key = self._config.base_url, self._api_key
                if self._config.fake:
                    from ..testing.server import FakeKimi

                    fake = await stack.enter_async_context(
                        FakeKimi(limits=self._limits, faults=self._config.faults()))
                    base_url, api_key = fake.base_url, fake.api_key
                    self._console.say(f"FakeKimi serving {fake.base_url} (in this process)")
                sup = await stack.enter_async_context(Supervisor(
                    api_key=api_key, base_url=base_url, limits=self._limits, clock=self._clock,
                    retry=self._config.retry_policy(), resume=ResumePolicy(),
                    drain_timeout=self._drain_timeout, window_margin=self._margin,
                    fatal=FatalPolicy(mode=FatalMode.STOP), redis=self._config.redis_config()))
                self._sup = sup
                self.started = self._clock.now()
                ticker = asyncio.create_task(self._tick(sup))
                consumer = self._consumer = asyncio.create_task(self._consume(sup))
                try:
                    await asyncio.wait([consumer, self._interrupt],
                                       return_when=asyncio.FIRST_COMPLETED)
                    if not consumer.done():
                        await sup.aclose(timeout=self._drain_timeout)
                        await self._let_consumer_catch_up(consumer)
                        consumer.cancel()
                    await asyncio.wait([consumer])
                finally:
                    ticker.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await ticker
                    self.stats = sup.statistics()
                    self.ended = self._clock.now()
                if not consumer.cancelled() and consumer.exception() is not None:
                    raise consumer.exception()  # type: ignore[misc]

    async def _let_consumer_catch_up(self, consumer: asyncio.Task[None]) -> None:
        """Once the supervisor is closed no result is still coming, but the consumer may not
        have taken the last ones from the map yet: give it loop turns while it makes
        progress, so nothing answered is left unwritten, then cancel it rather than wait."""
        seen = -1
        while not consumer.done() and seen != self.tally.done:
            seen = self.tally.done
            await asyncio.sleep(0)

    def _bodies(self, requests: Iterator[BatchRequest]) -> Iterator[Mapping[str, Any]]:
        for request in requests:
            if not self._feeding:
                return
            self._pending[self._next_index] = request
            if self.recorder is not None:
                self._sent_at[self._next_index] = self._clock.now()
            self._next_index += 1
            yield request.body

    async def _consume(self, sup: Supervisor) -> None:
        config = self._config
        requests = iter_requests(config.input, default_model=config.model, skip=self._skip,
                                 skip_bad=config.skip_bad,
                                 duplicate_ids=self._scan.duplicate_ids)
        with contextlib.closing(requests):
            results = sup.map(self._bodies(requests), stream=config.stream,
                              tenant=config.tenant_of if config.tenant_field else None)
            try:
                async with contextlib.aclosing(results):
                    async for item in results:
                        self._finish(item)
            except KimiError as exc:
                if exc.fatal_for_run:
                    self.tally.fatal = self.tally.fatal or exc
                elif not (isinstance(exc, SupervisorClosedError) and self.signals):
                    raise

    def _finish(self, item: MapResult) -> None:
        request = self._pending.pop(item.index)
        tally = self.tally
        now = self._clock.now()
        if self.recorder is not None:
            self.recorder.latency(now - self._sent_at.pop(item.index, now))
        self._requests_window.add(now, 1)
        if item.result is not None:
            result = item.result
            self._writer.write_result(request, status_code=200, request_id=result.request_id,
                                      body=completion_body(result))
            tally.ok += 1
            if result.usage is not None:
                self._tokens_window.add(now, result.usage.total_tokens)
            return
        error = item.error
        name = type(error).__name__
        if isinstance(error, KimiError) and is_final_error(error):
            self._writer.write_error(request, error=error)
            tally.failed_final[name] = tally.failed_final.get(name, 0) + 1
            return
        tally.not_final[name] = tally.not_final.get(name, 0) + 1
        if isinstance(error, KimiError) and error.fatal_for_run and tally.fatal is None:
            tally.fatal = error

    # -- progress ----------------------------------------------------------------------------

    def snapshot(self, stats: SupervisorStats, now: float) -> ProgressSnapshot:
        limits = self._limits
        dimensions = stats.governor.dimensions
        # The governor's windows are stretched by the margin: per true window it is less.
        stretch = 1.0 + self._margin
        rpm = (dimensions["rpm"].used / stretch if limits.rpm is not None and "rpm" in dimensions
               else self._requests_window.total(now))
        tpm = (dimensions["tpm"].used / stretch if limits.tpm is not None and "tpm" in dimensions
               else self._tokens_window.total(now))
        rpm, tpm = max(0.0, float(rpm)), max(0.0, float(tpm))
        self.rpm_average.sample(now, rpm)
        self.tpm_average.sample(now, tpm)
        tally = self.tally
        return ProgressSnapshot(
            total=self._scan.requests, done=tally.done, failed=tally.failed,
            unfinished=tally.unfinished, retries=stats.retries,
            rate_limited=stats.rate_limited, overloaded=stats.overloaded,
            server_errors=stats.server_errors, resumes=stats.resumes,
            in_flight=stats.in_flight, elapsed=max(0.0, now - self.started),
            rpm=rpm, tpm=tpm, limits=limits)

    async def _tick(self, sup: Supervisor) -> None:
        reporter = self._console.reporter
        warned = False
        while True:
            now = self._clock.now()
            stats = sup.statistics()
            snapshot = self.snapshot(stats, now)
            reporter.update(snapshot, now)
            if self.recorder is not None:
                self.recorder.sample(snapshot)
            if not warned and self.tally.ok == 0:
                problem = unreachable_message(stats, self._config.base_url)
                if problem is not None:
                    warned = True
                    self._console.say(f"warning: {problem}")
            await self._clock.sleep(_TICK_SECONDS)


def _resolve_key(config: RunConfig, environ: Mapping[str, str]) -> str | None:
    key = environ.get(config.api_key_env, "").strip()
    return key or None


def _dry_run(config: RunConfig, stdout: TextIO, stderr: TextIO) -> RunResult:
    """Scan without locking or repairing (a dry run changes nothing) and print the plan."""
    try:
        output = scan_output(config.output_path) if config.output is not None else None
        scan = scan_input(config.input, default_model=config.model,
                          skip=output.done if output is not None else None)
    except BatchInputError as exc:
        stderr.write(f"error: {exc}\n")
        return RunResult(exit_code=EXIT_USAGE, message=str(exc))
    exit_code = EXIT_OK
    message = None
    if output is not None and output.torn_tail_bytes:
        stderr.write(f"note: the last line of {config.output} is torn "
                     f"({output.torn_tail_bytes:,} bytes); a run cuts it and sends its request "
                     f"again\n")
    if not scan.ok:
        stderr.write(render_problems(scan, str(config.input), skip_bad=config.skip_bad) + "\n")
        if not config.skip_bad:
            exit_code, message = EXIT_USAGE, str(scan.error(str(config.input)))
    limits = config.limits()
    stdout.write(render_plan(plan_run(scan, limits), limits) + "\n")
    stdout.flush()
    return RunResult(exit_code=exit_code, message=message)


def run_batch(config: RunConfig, *, stdout: TextIO | None = None, stderr: TextIO | None = None,
              environ: Mapping[str, str] | None = None, log_file: Path | None = None,
              drain_timeout: float = DRAIN_SECONDS, log_every: float = 10.0,
              is_tty: bool | None = None, program: str = RUN_PROGRAM,
              loop_factory: Callable[[], asyncio.AbstractEventLoop] | None = None
              ) -> RunResult:
    """Run ``config`` from start to end (``kimi-actors run``): see the module docstring.

    Human output goes to ``stderr`` (progress, problems, summary); a dry run's plan to
    ``stdout``. ``environ`` is where the key is looked up (default ``os.environ``);
    ``log_every`` is the interval of plain progress lines when ``stderr`` is not a terminal.
    Returns the exit code and the summary; exceptions other than those documented as exit
    codes (an output that cannot be written, a bug) propagate. ``loop_factory`` makes the
    run's event loop (the command line passes uvloop's when it is installed).
    """
    stdout = stdout if stdout is not None else sys.stdout
    stderr = stderr if stderr is not None else sys.stderr
    if not (math.isfinite(drain_timeout) and drain_timeout >= 0):
        raise ValueError(f"drain_timeout must be a number of seconds >= 0, got {drain_timeout!r}")
    if config.dry_run:
        return _dry_run(config, stdout, stderr)
    api_key: str | None = None
    if not config.fake:
        api_key = _resolve_key(config, environ if environ is not None else os.environ)
        if api_key is None:
            message = (f"no API key: the environment variable {config.api_key_env} is not set "
                       f"(set it, name another variable with --api-key-env, or try --fake to "
                       f"run against the embedded fake server)")
            stderr.write(f"error: {message}\n")
            return RunResult(exit_code=EXIT_USAGE, message=message)
    reporter = ProgressReporter(stderr, is_tty=is_tty, log_every=log_every)
    console = Console(stderr, reporter)
    host = None if config.fake else cleartext_host(config.base_url)
    if host is not None:
        console.say(f"warning: --base-url is plain http:// to {host}: the API key is sent "
                    f"unencrypted; use https://")
    try:
        with cli_logging(log_file, stderr, console.clear_bar), \
                OutputWriter(config.output_path) as writer:
            return _run_locked(config, api_key, writer, console, drain_timeout, program,
                               loop_factory)
    except BatchInputError as exc:
        message = redact_text(str(exc))
        console.say(f"error: {message}")
        return RunResult(exit_code=EXIT_USAGE, message=message)


def _run_locked(config: RunConfig, api_key: str | None, writer: OutputWriter,
                console: Console, drain_timeout: float, program: str,
                loop_factory: Callable[[], asyncio.AbstractEventLoop] | None) -> RunResult:
    if writer.repaired_bytes:
        console.say(f"repaired {config.output_path}: cut a torn last line of "
                    f"{writer.repaired_bytes:,} bytes (its request is sent again)")
    output = scan_output(config.output_path)
    scan = scan_input(config.input, default_model=config.model, skip=output.done)
    if not scan.ok:
        console.say(render_problems(scan, str(config.input), skip_bad=config.skip_bad))
        if not config.skip_bad:
            return RunResult(exit_code=EXIT_USAGE, message=str(scan.error(str(config.input))))
    limits = config.limits()
    plan = plan_run(scan, limits)
    already = f" ({scan.skipped_done:,} already in {config.output_path} are skipped)" \
        if scan.skipped_done else ""
    console.say(f"{scan.requests:,} requests to send{already}; limits: {_limit_text(limits)}")
    if plan.binding is not None:
        console.say(f"at these limits this takes at least "
                    f"{format_duration(plan.estimated_seconds)} ({plan.binding.upper()} binds)")
    for warning in plan.warnings:
        console.say(f"warning: {warning}")
    if scan.requests == 0:
        summary = _summary(scan, _Tally(), None, limits, 0.0, stopped_reason=None,
                           achieved=(0.0, 0.0))
        console.say(render_summary(summary, resume_command=None))
        _say_earlier_failures(console, output.failed_final, config)
        return RunResult(exit_code=EXIT_INCOMPLETE if output.failed_final else EXIT_OK,
                         summary=summary)

    sender = _Sender(config, api_key=api_key, writer=writer, scan=scan, skip=output.done,
                     console=console, drain_timeout=drain_timeout)
    try:
        with asyncio.Runner(loop_factory=loop_factory) as runner:
            runner.run(sender.run())
    except OSError as exc:
        message = f"cannot write {config.output_path}: {exc.strerror or exc}"
        console.say(f"error: {message}")
        return RunResult(exit_code=EXIT_INCOMPLETE, message=message,
                         lines_written=writer.lines_written)
    writer.sync()
    tally = sender.tally
    stats = sender.stats
    wall = max(0.0, sender.ended - sender.started)
    if stats is not None:
        final = sender.snapshot(stats, sender.ended)
        console.reporter.finish(final)
        if sender.recorder is not None:
            sender.recorder.sample(final)
    stopped_reason = None
    if tally.fatal is not None:
        stopped_reason = f"run-fatal API error ({type(tally.fatal).__name__})"
    elif sender.signals:
        stopped_reason = "interrupted" if sender.signals == 1 else "interrupted twice"
    summary = _summary(scan, tally, stats, limits, wall, stopped_reason=stopped_reason,
                       achieved=(sender.rpm_average.mean(), sender.tpm_average.mean()))
    console.say(render_summary(summary, resume_command=config.command_line(program)))
    if config.report is not None and sender.recorder is not None:
        _write_report(config, sender, summary, console)
    if tally.not_final:
        reasons = ", ".join(f"{name} {count:,}" for name, count in
                            sorted(tally.not_final.items(), key=lambda kv: (-kv[1], kv[0])))
        console.say(f"  not finished by error: {reasons} (not written: a re-run sends them)")
    _say_earlier_failures(console, output.failed_final, config)
    if tally.fatal is not None:
        message = _fatal_message(tally.fatal, config)
        console.say(f"error: {message}")
        return RunResult(exit_code=EXIT_FATAL, summary=summary, message=message,
                         lines_written=writer.lines_written)
    if sender.signals:
        return RunResult(exit_code=EXIT_INTERRUPTED, summary=summary,
                         message="interrupted", lines_written=writer.lines_written)
    if summary.failed or summary.not_finished or output.failed_final:
        return RunResult(exit_code=EXIT_INCOMPLETE, summary=summary,
                         message=f"{summary.failed + output.failed_final:,} failed, "
                                 f"{summary.not_finished:,} not finished",
                         lines_written=writer.lines_written)
    return RunResult(exit_code=EXIT_OK, summary=summary, lines_written=writer.lines_written)


def _write_report(config: RunConfig, sender: _Sender, summary: RunSummary,
                  console: Console) -> None:
    """Write the report next to where it goes, then move it into place (a reader never sees
    half a page); a report that cannot be written is said, and the run's result stands."""
    assert config.report is not None
    assert sender.recorder is not None
    where = "FakeKimi (embedded)" if config.fake else redact_url(config.base_url)
    page = render_report(sender.recorder, summary, title=f"kimi-actors run: {config.input.name}",
                         not_final=sender.tally.not_final,
                         details=[("input", str(config.input)),
                                  ("output", str(config.output)), ("server", where)])
    temporary = config.report.with_name(f".{config.report.name}.tmp")
    try:
        temporary.write_text(page, encoding="utf-8")
        os.replace(temporary, config.report)
    except OSError as exc:
        console.say(f"warning: cannot write the report {config.report}: "
                    f"{exc.strerror or exc}")
        return
    console.say(f"  report: {config.report}")


def _say_earlier_failures(console: Console, count: int, config: RunConfig) -> None:
    """The exit code speaks for the whole output, so say why it is 1 when an earlier run's
    final errors are what is left."""
    if count:
        what = "1 request" if count == 1 else f"{count:,} requests"
        console.say(f"  {what} failed with a final error in an earlier run (in "
                    f"{config.output_path}); a re-run does not retry final errors: remove those "
                    f"lines to send them again")


def _summary(scan: InputScan, tally: _Tally, stats: SupervisorStats | None, limits: Limits,
             wall: float, *, stopped_reason: str | None,
             achieved: tuple[float, float]) -> RunSummary:
    failed_final = sum(tally.failed_final.values())
    return RunSummary(
        ok=tally.ok, failed_by_type=dict(tally.failed_final),
        not_finished=max(0, scan.requests - tally.ok - failed_final),
        skipped_done=scan.skipped_done,
        retries=stats.retries if stats is not None else 0,
        resumes=stats.resumes if stats is not None else 0,
        rate_limited=stats.rate_limited if stats is not None else 0,
        overloaded=stats.overloaded if stats is not None else 0,
        server_errors=stats.server_errors if stats is not None else 0,
        transport_errors=stats.transport_errors if stats is not None else 0,
        prompt_tokens=stats.prompt_tokens if stats is not None else 0,
        completion_tokens=stats.completion_tokens if stats is not None else 0,
        wall_seconds=wall,
        achieved_rpm=achieved[0], achieved_tpm=achieved[1],
        limits=limits, stopped_reason=stopped_reason)
