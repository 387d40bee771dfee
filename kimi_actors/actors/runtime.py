"""What every actor of one supervisor shares, and the one retry policy they all follow.

The decisions come from the pure cores (classify, breaker, backoff, bucket); this module only
applies them: it waits where they say wait, records what happened, and logs it. Every wait
here can be interrupted by shutdown or by a run-fatal error, so queued work fails at once
instead of sleeping out its backoff.
"""

from __future__ import annotations

import asyncio
import copy
import math
import random
from collections.abc import Coroutine, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

from yarl import URL

from ..clock import Clock
from ..errors import (
    CircuitOpenError,
    KimiError,
    TransportError,
)
from ..governance.backoff import RetryBudget
from ..governance.breaker import BreakerState, CircuitBreaker, Transition
from ..governance.decide import AttemptState, Step, Verdict, decide
from ..governance.gate import Gate, Ticket
from ..governance.governor import DEFAULT_WINDOW_MARGIN
from ..governance.interface import GovernorProtocol
from ..observe import emit
from ..policy import (
    AdaptPolicy,
    BreakerPolicy,
    FatalMode,
    FatalPolicy,
    ResumePolicy,
    RetryPolicy,
    SchedulePolicy,
    TelemetryPolicy,
)
from ..protocol.chunks import Usage
from ..protocol.classify import Action, Outcome
from ..protocol.tokens import (
    MAX_CONTEXT_TOKENS,
    prompt_token_ceiling,
    requested_max_tokens,
    sent_max_tokens,
)
from ..telemetry import QUIET_CALL, CallTelemetry, attempt_outcome, attempt_span
from ..telemetry import configured as telemetry_configured
from ..transport import TransportProtocol

__all__ = ["Attempt", "AttemptScope", "CounterStats", "Counters", "Runtime", "settled_tokens"]


class Attempt:
    """One admitted attempt: its gate ticket and the breaker epoch it was let through in.

    Only :meth:`Runtime.attempt` makes one, and it ends each exactly once: ``finish(outcome)``
    releases the slot, records the outcome (breaker, counters, governor reactions) and, on
    success, settles the tokens, in that order; an attempt left without an outcome
    (cancelled, or an error that is not ours) gives everything back instead. ``probe`` is set
    on the one attempt let through to test an account known to be bad.
    """

    __slots__ = ("_runtime", "_scope", "epoch", "finished", "permit", "probe", "span")

    def __init__(self, runtime: Runtime, permit: Ticket, epoch: int, *, probe: bool) -> None:
        self._runtime = runtime
        self.permit = permit
        self.epoch = epoch
        self.probe = probe
        self.finished = False
        #: The attempt's OpenTelemetry span (None without one).
        self.span: Any = None
        self._scope: AbstractContextManager[Any] | None = None

    def close(self, exc_type: type[BaseException] | None = None,
              exc: BaseException | None = None, tb: TracebackType | None = None) -> None:
        """The attempt's block ended (with ``exc`` when it raised): an attempt left without
        an outcome gives everything back, and its span ends."""
        try:
            if not self.finished:
                self._runtime._abandon(self)
        finally:
            if self._scope is not None:
                self._scope.__exit__(exc_type, exc, tb)

    def on_sent(self) -> None:
        """The request is on the wire: its rate units count from now."""
        self._runtime.gate.restamp(self.permit)

    def finish(self, outcome: Outcome, *, usage: Usage | None = None,
               body: Mapping[str, Any] | None = None, payload_size: int = 0) -> None:
        """End the attempt with ``outcome``; on success ``usage`` settles the tokens of
        ``body`` (sent in ``payload_size`` bytes)."""
        if self.finished:
            raise RuntimeError("an attempt is finished once")
        self.finished = True
        rt = self._runtime
        rt.gate.release(self.permit)
        if self.span is not None:
            error = outcome.error
            attempt_outcome(self.span, getattr(error, "status", None) if error else 200, error)
        rt.record(outcome, self)
        if outcome.action is Action.SUCCESS and body is not None:
            rt.settle(self, usage, body, payload_size)


class AttemptScope:
    """``async with rt.attempt(...) as attempt``: :meth:`Runtime.admit_attempt` on entry,
    :meth:`Attempt.close` on exit."""

    __slots__ = ("_admit", "_attempt")

    def __init__(self, admit: Coroutine[Any, Any, Attempt]) -> None:
        self._admit: Coroutine[Any, Any, Attempt] | None = admit
        self._attempt: Attempt | None = None

    async def __aenter__(self) -> Attempt:
        admit, self._admit = self._admit, None  # a finished coroutine: not kept for the attempt
        assert admit is not None
        attempt = self._attempt = await admit
        return attempt

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        attempt = self._attempt
        assert attempt is not None
        attempt.close(exc_type, exc, tb)


@dataclass(slots=True)
class Counters:
    """Mutable running totals; ``Supervisor.statistics()`` copies them into a frozen view."""

    submitted: int = 0
    completed: int = 0
    failed: int = 0
    attempts: int = 0
    retries: int = 0
    resumes: int = 0
    restarts: int = 0
    length_continuations: int = 0
    rate_limited: int = 0
    overloaded: int = 0
    server_errors: int = 0
    transport_errors: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    usage_anomalies: int = 0
    budget_waits: int = 0
    failures_by_type: dict[str, int] = field(default_factory=dict)

    def count(self, name: str) -> None:
        """Add one to the counter ``name`` (an error class's ``counter``)."""
        setattr(self, name, getattr(self, name) + 1)

    def snapshot(self) -> CounterStats:
        """A frozen copy of the totals now."""
        values = {name: getattr(self, name) for name in _COUNTER_NAMES}
        return CounterStats(**values, failures_by_type=dict(self.failures_by_type))


@dataclass(frozen=True, slots=True, kw_only=True)
class CounterStats:
    """The running totals of one runtime at one moment (see :class:`Counters`)."""

    submitted: int
    completed: int
    failed: int
    attempts: int
    retries: int
    resumes: int
    restarts: int
    length_continuations: int
    rate_limited: int
    overloaded: int
    server_errors: int
    transport_errors: int
    prompt_tokens: int
    completion_tokens: int
    usage_anomalies: int
    budget_waits: int
    failures_by_type: Mapping[str, int]


_COUNTER_NAMES = tuple(name for name in CounterStats.__dataclass_fields__
                       if name != "failures_by_type")


class Runtime:
    """The shared parts: transport, gate and governor, breaker, retry budget, clock and random
    source."""

    def __init__(self, *, transport: TransportProtocol, governor: GovernorProtocol, clock: Clock,
                 rng: random.Random, retry: RetryPolicy, breaker: BreakerPolicy,
                 resume: ResumePolicy, default_max_tokens: int,
                 fatal: FatalPolicy | None = None, adapt: AdaptPolicy | None = None,
                 schedule: SchedulePolicy | None = None,
                 window_margin: float = DEFAULT_WINDOW_MARGIN,
                 telemetry: TelemetryPolicy | None = None) -> None:
        self.transport = transport
        self.telemetry = telemetry or TelemetryPolicy()
        url = URL(transport.base_url)
        self.server_address = url.host or ""
        self.server_port = url.explicit_port or url.port
        self.governor = governor
        self.gate = Gate(governor, clock=clock, adapt=adapt, schedule=schedule,
                         window_margin=window_margin)
        self.clock = clock
        self.rng = rng
        self.retry = retry
        self.resume = resume
        self.fatal = fatal or FatalPolicy()
        self.breaker = CircuitBreaker(breaker)
        self.budget = RetryBudget(retry)
        self.default_max_tokens = default_max_tokens
        self.counters = Counters()
        #: False once the endpoint showed it ignores Partial Mode: streams restart instead.
        self.partial_mode = True
        #: The latest failure to reach or keep a connection, for diagnosis.
        self.last_transport_error: TransportError | None = None
        self._stopped: KimiError | None = None
        self._account_error: KimiError | None = None
        self._account_error_at = 0.0
        self._probe_at = 0.0
        self._probing = False
        self._waits: set[asyncio.Future[None]] = set()
        self.waiting = 0

    # -- stopping ----------------------------------------------------------------------------

    @property
    def stopped(self) -> KimiError | None:
        """The error every new attempt fails with, once the run is stopped for good."""
        return self._stopped

    @property
    def halted(self) -> KimiError | None:
        """The run-fatal error new work fails with now: the stop, or an account known to be
        bad (``FatalMode.PROBE``) until a probe gets through."""
        return self._stopped or self._account_error

    def stop(self, error: KimiError) -> None:
        """Refuse new attempts and fail every waiting actor with ``error`` now."""
        if self._stopped is None:
            self._stopped = error
        self.gate.close(self._stopped)
        self._fail_waits(self._stopped)

    def _fail_waits(self, error: KimiError) -> None:
        waits, self._waits = self._waits, set()
        for future in waits:
            if not future.done():
                future.set_exception(error)

    def _on_fatal(self, error: KimiError) -> None:
        if self.fatal.mode is FatalMode.STOP:
            emit("error", "run_stopped", error_type=type(error).__name__, message=str(error))
            self.stop(error)
            return
        now = self.clock.now()
        if self._account_error is None:
            emit("error", "account_refused", error_type=type(error).__name__,
                 message=str(error), probe_in=self.fatal.cool_down)
            self._account_error_at = now
        self._account_error = error
        self._probe_at = now + self.fatal.cool_down
        self._probing = False
        self.gate.fail_queued(error)
        self._fail_waits(error)

    def _check_account(self) -> bool:
        """Raise while the account is known to be bad; True when this attempt is the one
        probe let through once the cool-down has passed."""
        error = self._account_error
        if error is None:
            return False
        now = self.clock.now()
        if self._probing or now < self._probe_at:
            raise self._known_bad(error, now)
        self._probing = True
        return True

    def _known_bad(self, error: KimiError, now: float) -> KimiError:
        """A fresh copy of the account's error for one more caller (each raise gets its own
        traceback and notes)."""
        clone = copy.copy(error)
        clone.__traceback__ = None
        clone.__notes__ = [*getattr(error, "__notes__", ()),
                           f"kimi_actors: not sent: the account was refused "
                           f"{now - self._account_error_at:.0f} s ago; the next probe goes "
                           f"in {max(0.0, self._probe_at - now):.0f} s"]
        return clone

    def _account_answered(self, attempt: Attempt, outcome: Outcome) -> None:
        if not attempt.probe:
            return
        attempt.probe = False
        self._probing = False
        if outcome.action is not Action.FATAL_RUN and self._account_error is not None:
            emit("info", "account_recovered",
                 refused_for=round(self.clock.now() - self._account_error_at, 3))
            self._account_error = None

    async def wait(self, seconds: float) -> None:
        """Sleep on the clock; shutdown or a run-fatal error interrupts with that error."""
        if self._stopped is not None:
            raise self._stopped
        if seconds <= 0:
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()

        def wake() -> None:
            if not future.done():
                future.set_result(None)

        timer = self.clock.call_later(seconds, wake)
        self._waits.add(future)
        self.waiting += 1
        try:
            await future
        finally:
            self.waiting -= 1
            self._waits.discard(future)
            timer.cancel()

    # -- one attempt -------------------------------------------------------------------------

    def check(self, tokens: int, tenant: str | None = None) -> None:
        """Raise ``LimitExceededError`` when ``tokens`` can never be admitted."""
        self.gate.check(tokens, tenant)

    def count(self, name: str) -> None:
        """Add one to the counter ``name`` (resumes, restarts, length_continuations)."""
        self.counters.count(name)

    def trace_call(self, body: Mapping[str, Any], *, stream: bool, tenant: str | None,
                   priority: int) -> CallTelemetry:
        """The telemetry of one call, to enter for its whole run."""
        if not telemetry_configured():
            return QUIET_CALL
        return CallTelemetry(body, stream=stream, now=self.clock.now,
                             server=self.server_address, port=self.server_port, tenant=tenant,
                             priority=priority,
                             record_content=self.telemetry.record_content, quiet=False)

    def attempt(self, tokens: int, *, priority: int, first: bool,
                deadline: float | None, tenant: str | None = None,
                since: float | None = None, call: CallTelemetry | None = None,
                number: int = 1) -> AttemptScope:
        """Admit one attempt (breaker, then gate and governor) and own it until the block
        ends: an attempt the block did not ``finish`` gives everything back. ``since`` is when
        the request first arrived: a retry keeps its place in the queue. ``call`` traces the
        attempt as attempt ``number`` of that call."""
        return AttemptScope(self.admit_attempt(tokens, priority=priority, first=first,
                                               deadline=deadline, tenant=tenant, since=since,
                                               call=call, number=number))

    def admit_attempt(self, tokens: int, *, priority: int, first: bool,
                      deadline: float | None, tenant: str | None = None,
                      since: float | None = None, call: CallTelemetry | None = None,
                      number: int = 1) -> Coroutine[Any, Any, Attempt]:
        """What :meth:`attempt` enters, for a caller that ends the attempt itself with
        :meth:`Attempt.close` whatever happens (the request actor: no scope object and no
        coroutine of its own on every call)."""
        if call is None or call.quiet:
            return self._admit(tokens, priority=priority, first=first, deadline=deadline,
                               tenant=tenant, since=since)
        return self._admit_traced(tokens, priority=priority, first=first, deadline=deadline,
                                  tenant=tenant, since=since, call=call, number=number)

    async def _admit_traced(self, tokens: int, *, priority: int, first: bool,
                            deadline: float | None, tenant: str | None, since: float | None,
                            call: CallTelemetry, number: int) -> Attempt:
        asked = self.clock.now()
        attempt = await self._admit(tokens, priority=priority, first=first, deadline=deadline,
                                    tenant=tenant, since=since)
        call.admitted(self.clock.now() - asked)
        scope = attempt._scope = attempt_span(call, number)
        attempt.span = scope.__enter__()
        return attempt

    async def _admit(self, tokens: int, *, priority: int, first: bool,
                     deadline: float | None, tenant: str | None,
                     since: float | None) -> Attempt:
        """Wait for the breaker, then for the gate and the governor. ``deadline`` is on the
        clock."""
        while True:
            if self._stopped is not None:
                raise self._stopped
            probe = self._check_account()
            now = self.clock.now()
            delay = self.breaker.allow(now)
            self._log_transitions()
            if delay <= 0:
                epoch = self.breaker.epoch
                break
            if probe:
                self._probing = False
            if deadline is not None and now + delay > deadline:
                raise CircuitOpenError(
                    f"the circuit breaker is open for {delay:.1f} s more, longer than this "
                    f"request may wait", retry_in=delay)
            down = self.breaker.down_for(now)
            if down > self.breaker.policy.give_up_after:
                raise CircuitOpenError(
                    f"the service has been judged down for {down:.0f} s, longer than "
                    f"BreakerPolicy.give_up_after ({self.breaker.policy.give_up_after:g} s)",
                    retry_in=delay)
            await self.wait(delay)
        try:
            permit = await self.gate.admit(tokens, priority=priority, tenant=tenant,
                                           since=since, deadline=deadline)
        except BaseException:
            self.breaker.record_ignored(self.clock.now(), epoch=epoch)
            if probe:
                self._probing = False
            raise
        if first:
            self.budget.record_attempt(self.clock.now())
        self.counters.attempts += 1
        return Attempt(self, permit, epoch, probe=probe)

    def _abandon(self, attempt: Attempt) -> None:
        """The attempt ended without an outcome (cancelled): free everything it holds."""
        attempt.finished = True
        if attempt.probe:
            attempt.probe = False
            self._probing = False
        self.gate.release(attempt.permit)
        self.breaker.record_ignored(self.clock.now(), epoch=attempt.epoch)

    def record(self, outcome: Outcome, attempt: Attempt | None) -> None:
        """Feed an outcome to the breaker, the governor and the counters; log what matters.
        ``attempt`` is None for ungoverned side calls, which the breaker does not see."""
        now = self.clock.now()
        error = outcome.error
        if error is None and attempt is not None:  # a success: what every answer takes
            self.gate.succeeded()
            closed = self.breaker.record_success(now, epoch=attempt.epoch)
            if closed is not None or self.breaker.transitions_pending:
                self._log_transitions(closed)
            if attempt.probe:
                self._account_answered(attempt, outcome)
            return
        transition: Transition | None = None
        trips = outcome.trips_breaker
        if attempt is not None and error is not None and error.pushback == "overload":
            # The adaptation answers overload while it can still lower the load; at its floor
            # the service is down, and that is the breaker's call.
            at_floor = self.gate.overloaded(attempt.permit)
            trips = trips and at_floor
            emit("warning", "overloaded", working_concurrency=self.gate.adapter.limit,
                 request_id=error.request_id)
        if attempt is not None:
            if outcome.action is Action.SUCCESS:
                self.gate.succeeded()
                transition = self.breaker.record_success(now, epoch=attempt.epoch)
            elif trips:
                transition = self.breaker.record_failure(now, outcome.retry_after,
                                                         epoch=attempt.epoch)
            else:
                self.breaker.record_ignored(now, epoch=attempt.epoch)
        self._log_transitions(transition)
        if attempt is not None:
            self._account_answered(attempt, outcome)
        if error is None:
            return
        if error.counter is not None:
            self.counters.count(error.counter)
        if isinstance(error, TransportError):
            self.last_transport_error = error
        if error.pushback == "rate":  # paced by the governor: tell it what the server said
            adopted = self.gate.on_rate_limited(outcome.dimension,
                                                retry_after=outcome.retry_after,
                                                limit=outcome.limit)
            emit("warning", "rate_limited", dimension=outcome.dimension,
                 retry_after=outcome.retry_after, request_id=error.request_id,
                 scope=getattr(error, "scope", None), message=error.message)
            if adopted is not None:
                emit("warning", "limit_lowered_to_server_limit", dimension=outcome.dimension,
                     limit=adopted, scope=getattr(error, "scope", None))
            if outcome.dimension is None and attempt is not None:
                learned = self.gate.refused_vaguely(attempt.permit)
                emit("warning", "rate_limit_learned", rpm=learned)
        if outcome.action is Action.FATAL_RUN:
            self._on_fatal(error)

    def settle(self, attempt: Attempt, usage: Usage | None, body: Mapping[str, Any],
               payload_size: int) -> None:
        """Settle a successful attempt's token reservation against its usage, bounded by
        what the request could possibly have cost: a server that reports absurd numbers
        cannot stall the windows (an anomaly is logged and counted instead)."""
        settled: int | None = None
        if usage is not None:
            sent = sent_max_tokens(body)
            prompt, completion = self._plausible(usage, body, payload_size, sent)
            self.counters.prompt_tokens += prompt
            self.counters.completion_tokens += completion
            settled = settled_tokens(prompt, sent if sent is not None
                                     else requested_max_tokens(body, self.default_max_tokens))
        self.gate.settle(attempt.permit, settled)

    def _plausible(self, usage: Usage, body: Mapping[str, Any], payload_size: int,
                   sent: int | None) -> tuple[int, int]:
        """The prompt and completion tokens to count: what the server reported, each capped
        at what the request could have cost (``sent``: the completion budget it sent)."""
        completion_cap = MAX_CONTEXT_TOKENS if sent is None else sent
        # The ceiling is at least the payload's size (or the context): below that, it need
        # not be worked out.
        if usage.completion_tokens <= completion_cap \
                and usage.prompt_tokens <= min(payload_size, MAX_CONTEXT_TOKENS):
            return usage.prompt_tokens, usage.completion_tokens
        prompt_cap = prompt_token_ceiling(body, payload_size)
        if usage.prompt_tokens <= prompt_cap and usage.completion_tokens <= completion_cap:
            return usage.prompt_tokens, usage.completion_tokens
        self.counters.usage_anomalies += 1
        emit("warning", "usage_implausible", prompt_tokens=usage.prompt_tokens,
             completion_tokens=usage.completion_tokens, prompt_ceiling=prompt_cap,
             completion_ceiling=completion_cap)
        return min(usage.prompt_tokens, prompt_cap), min(usage.completion_tokens, completion_cap)

    def decide(self, outcome: Outcome, state: AttemptState,
               deadline: float | None) -> Verdict:
        """The pure verdict (governance/decide.py) with this runtime's policies and budget."""
        now = self.clock.now()
        return decide(outcome, state, retry=self.retry, resume=self.resume,
                      budget_available=self.budget.available(now), rng=self.rng,
                      now=now, deadline=deadline, budget_wait=self.budget.wait(now))

    async def follow(self, verdict: Verdict, outcome: Outcome, *, attempts: int) -> None:
        """Apply a verdict: raise the outcome's error for FAIL (with the reason as a note);
        otherwise spend the budget it names, count the retry and wait its delay. Shutdown or
        a run-fatal error interrupts the wait."""
        error = outcome.error
        assert error is not None
        error.attempts = attempts
        if verdict.step is Step.FAIL:
            if verdict.reason:
                error.add_note(f"kimi_actors: {verdict.reason}")
            raise error
        if verdict.step is Step.FINISH_LOCALLY:
            return
        spent = not verdict.spend_budget or self.budget.try_spend(self.clock.now())
        if not spent:
            self.counters.budget_waits += 1
        self.counters.retries += 1
        emit("info", "retry", attempt=attempts, delay=round(verdict.delay, 3), step=verdict.step,
             error_type=type(error).__name__, status=getattr(error, "status", None),
             request_id=error.request_id)
        await self.wait(verdict.delay)
        # A spent budget slows the retry down: it waits until the budget has one for it.
        while not spent:
            spent = self.budget.try_spend(self.clock.now())
            if not spent:
                wait = self.budget.wait(self.clock.now())
                if wait == math.inf:
                    error.add_note("kimi_actors: not retried: the retry budget is spent")
                    raise error
                await self.wait(wait)

    def _log_transitions(self, extra: Transition | None = None) -> None:
        if extra is None and not self.breaker.transitions_pending:
            return
        transitions: list[Transition] = self.breaker.pop_transitions()
        if extra is not None:
            transitions.append(extra)
        for transition in transitions:
            level = "warning" if transition.after is BreakerState.OPEN else "info"
            emit(level, "breaker_transition", before=transition.before.value,
                 after=transition.after.value, open_for=transition.open_for,
                 reason=transition.reason)

    def failed(self, error: BaseException) -> None:
        self.counters.failed += 1
        name = type(error).__name__
        self.counters.failures_by_type[name] = self.counters.failures_by_type.get(name, 0) + 1


def settled_tokens(prompt_tokens: int, requested: int) -> int | None:
    """What Kimi counted at admission, now that the real prompt count is known: the prompt
    and the ``requested`` completion budget (``None`` keeps the estimate: a reported prompt of
    no tokens is no count)."""
    if prompt_tokens <= 0:
        return None
    return prompt_tokens + requested
