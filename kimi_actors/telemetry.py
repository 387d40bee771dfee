"""OpenTelemetry traces and metrics, through ``opentelemetry-api`` only.

The spans and instruments come from the global tracer and meter providers the application
configured; with none configured (or without the ``otel`` extra installed) every hook here is
a no-op. The names follow OpenTelemetry's GenAI semantic conventions:

- one CLIENT span per call, ``chat {model}``, with ``gen_ai.*`` request and response
  attributes; it ends with status ERROR and ``error.type`` when the call failed;
- one child CLIENT span per HTTP attempt, ``POST``, with ``http.request.resend_count`` on
  retries, so a resumed stream is one call span over several attempt spans;
- span events for what the runtime did in between: every event the library logs (429
  pauses, resumes, restarts, breaker transitions, ...) lands on the span current at the
  time, and ``kimi_actors.admission`` says how long the governor held an attempt;
- histograms ``gen_ai.client.operation.duration`` (s), ``gen_ai.client.token.usage``
  (``gen_ai.token.type`` input and output) and, for streams,
  ``gen_ai.client.operation.time_to_first_chunk`` (s);
- the runtime's own observable instruments, read from each open supervisor's
  ``statistics()`` when the SDK collects: ``kimi_actors.queue.depth``,
  ``kimi_actors.in_flight``, ``kimi_actors.governor.utilization`` (per dimension),
  ``kimi_actors.responses.throttled`` (429s by kind), ``kimi_actors.retries``,
  ``kimi_actors.resumes``, ``kimi_actors.breaker.state`` (0 closed, 1 half-open, 2 open).

Message contents are recorded only with ``TelemetryPolicy(record_content=True)``, as the
conventions' ``gen_ai.input.messages`` and ``gen_ai.output.messages``, redacted. The key is
never recorded: every string passes the redactor.
"""

from __future__ import annotations

import json
import sys
import weakref
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

from .redaction import redact_text

if TYPE_CHECKING:
    from .actors.supervisor import Supervisor
    from .protocol.results import ChatResult, Usage

#: The OpenTelemetry names, loaded on first need: an application that never imported
#: opentelemetry cannot have configured a provider, so it pays no import here.
_otel: Any = None


def _load() -> Any:
    """The OpenTelemetry API's names, or None when it is not installed."""
    global _otel
    if _otel is None:
        try:
            from opentelemetry import context, metrics, trace
            from opentelemetry.metrics import NoOpMeterProvider, Observation
            from opentelemetry.metrics._internal import _ProxyMeterProvider
            from opentelemetry.trace import (
                NoOpTracerProvider,
                ProxyTracerProvider,
                SpanKind,
                Status,
                StatusCode,
            )
        except ImportError:  # pragma: no cover - the otel extra is installed in every test run
            _otel = False
        else:
            _otel = SimpleNamespace(
                context=context, metrics=metrics, trace=trace, Observation=Observation,
                SpanKind=SpanKind, Status=Status, StatusCode=StatusCode,
                quiet_tracers=(ProxyTracerProvider, NoOpTracerProvider),
                quiet_meters=(_ProxyMeterProvider, NoOpMeterProvider))
    return _otel or None


def _imported() -> bool:
    modules = sys.modules
    return "opentelemetry.trace" in modules or "opentelemetry.metrics" in modules


__all__ = ["PROVIDER", "QUIET_CALL", "CallTelemetry", "attempt_span", "configured", "event",
           "register"]

#: ``gen_ai.provider.name`` for Moonshot AI (Kimi), as the conventions spell it.
PROVIDER = "moonshot_ai"
#: The conventions' advisory buckets.
DURATION_BUCKETS = (0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48,
                    40.96, 81.92)
TOKEN_BUCKETS = (1, 4, 16, 64, 256, 1024, 4096, 16384, 65536, 262144, 1048576, 4194304,
                 16777216, 67108864)
_BREAKER_STATES = {"closed": 0, "half_open": 1, "open": 2}


def _scalar(value: Any) -> Any:
    """An attribute value OpenTelemetry takes: a primitive, or its redacted text."""
    if isinstance(value, bool | int | float):
        return value
    if isinstance(value, str):
        return redact_text(value)
    if isinstance(value, list | tuple) and all(isinstance(item, str) for item in value):
        return [redact_text(item) for item in value]
    return redact_text(str(value))


class _Instruments:
    """The tracer and the call instruments, made once (the API hands out proxies that follow
    providers set later)."""

    def __init__(self) -> None:
        from . import __version__

        otel = _load()
        self.tracer = otel.trace.get_tracer("kimi_actors", __version__)
        meter = otel.metrics.get_meter("kimi_actors", __version__)
        self.duration = meter.create_histogram(
            "gen_ai.client.operation.duration", unit="s",
            description="GenAI operation duration",
            explicit_bucket_boundaries_advisory=list(DURATION_BUCKETS))
        self.tokens = meter.create_histogram(
            "gen_ai.client.token.usage", unit="{token}",
            description="Number of input and output tokens used",
            explicit_bucket_boundaries_advisory=list(TOKEN_BUCKETS))
        self.first_chunk = meter.create_histogram(
            "gen_ai.client.operation.time_to_first_chunk", unit="s",
            description="Time from the start of a streamed call to its first chunk",
            explicit_bucket_boundaries_advisory=list(DURATION_BUCKETS))
        meter.create_observable_gauge("kimi_actors.queue.depth", [_observe("queued")],
                                      unit="{request}",
                                      description="Attempts waiting for admission")
        meter.create_observable_gauge("kimi_actors.in_flight", [_observe("in_flight")],
                                      unit="{request}", description="Attempts admitted")
        meter.create_observable_gauge("kimi_actors.governor.utilization", [_utilization],
                                      unit="1",
                                      description="Share of each limit in use")
        meter.create_observable_counter("kimi_actors.responses.throttled", [_throttled],
                                        unit="{response}", description="429 answers by kind")
        meter.create_observable_counter("kimi_actors.retries", [_observe("retries")],
                                        unit="{attempt}", description="Retries sent")
        meter.create_observable_counter("kimi_actors.resumes", [_observe("resumes")],
                                        unit="{stream}",
                                        description="Streams continued through Partial Mode")
        meter.create_observable_gauge("kimi_actors.breaker.state", [_breaker],
                                      description="0 closed, 1 half-open, 2 open")


_instruments: _Instruments | None = None
_supervisors: weakref.WeakValueDictionary[int, Supervisor] = weakref.WeakValueDictionary()
_numbers = iter(range(1, 1 << 62))


def _get() -> _Instruments | None:
    global _instruments
    if _load() is None:
        return None
    if _instruments is None:
        _instruments = _Instruments()
    return _instruments


def configured() -> bool:
    """Whether the application set a tracer or a meter provider: without one, a call skips
    every span and measurement (each would be a no-op, at a cost per call)."""
    if not _imported():
        return False
    otel = _load()
    if otel is None:
        return False
    return not (isinstance(otel.trace.get_tracer_provider(), otel.quiet_tracers)
                and isinstance(otel.metrics.get_meter_provider(), otel.quiet_meters))


def register(supervisor: Supervisor) -> None:
    """Observe an open supervisor in the runtime instruments (made on the first call that
    finds a provider) until it closes or is gone."""
    _supervisors[next(_numbers)] = supervisor


def unregister(supervisor: Supervisor) -> None:
    for number, known in list(_supervisors.items()):
        if known is supervisor:
            del _supervisors[number]


def _attributes(number: int, supervisor: Supervisor) -> dict[str, Any]:
    return {"kimi_actors.supervisor": number, "server.address": supervisor.server_address}


def _observe(field: str) -> Any:
    def callback(options: Any) -> Iterator[Any]:
        for number, supervisor in list(_supervisors.items()):
            stats = supervisor.statistics()
            yield _otel.Observation(getattr(stats, field), _attributes(number, supervisor))

    return callback


def _utilization(options: Any) -> Iterator[Any]:
    for number, supervisor in list(_supervisors.items()):
        attributes = _attributes(number, supervisor)
        for name, dimension in supervisor.statistics().governor.dimensions.items():
            if dimension.limit:
                yield _otel.Observation(dimension.used / dimension.limit,
                                  {**attributes, "kimi_actors.dimension": name})


def _throttled(options: Any) -> Iterator[Any]:
    for number, supervisor in list(_supervisors.items()):
        stats = supervisor.statistics()
        attributes = _attributes(number, supervisor)
        yield _otel.Observation(stats.rate_limited,
                                {**attributes, "kimi_actors.kind": "rate_limit"})
        yield _otel.Observation(stats.overloaded,
                                {**attributes, "kimi_actors.kind": "overloaded"})


def _breaker(options: Any) -> Iterator[Any]:
    for number, supervisor in list(_supervisors.items()):
        yield _otel.Observation(_BREAKER_STATES.get(supervisor.statistics().breaker_state, 0),
                          _attributes(number, supervisor))


def event(name: str, fields: Mapping[str, Any]) -> None:
    """Add a logged event to the current span (its fields already redacted)."""
    if not _imported():
        return
    otel = _load()
    if otel is None:
        return
    span = otel.trace.get_current_span()
    if span.is_recording():
        span.add_event(name, {key: _scalar(value) for key, value in fields.items()
                              if value is not None})


def _max_tokens(body: Mapping[str, Any]) -> Any:
    value = body.get("max_completion_tokens")
    return body.get("max_tokens") if value is None else value


class CallTelemetry:
    """The span and measurements of one call (``chat`` or ``stream``): entered by the actor
    for the whole call, so every attempt's span is its child."""

    __slots__ = ("_base", "_extra", "_instruments", "_record_content", "_span", "_started",
                 "_token", "_ttfc", "body", "now", "quiet")

    def __init__(self, body: Mapping[str, Any], *, stream: bool, now: Callable[[], float],
                 server: str, port: int | None, tenant: str | None, priority: int,
                 record_content: bool, quiet: bool | None = None) -> None:
        self.body = body
        self.now = now
        #: No provider is configured: nothing is recorded, at no cost. (``quiet=None`` asks
        #: :func:`configured`.)
        self.quiet = not configured() if quiet is None else quiet
        self._instruments = None if self.quiet else _get()
        self._span: Any = None
        self._token: Any = None
        self._ttfc = not stream
        self._started = 0.0
        self._record_content = record_content
        if self.quiet:
            return
        model = body.get("model")
        self._base: dict[str, Any] = {"gen_ai.operation.name": "chat",
                                      "gen_ai.provider.name": PROVIDER,
                                      "server.address": server}
        if port is not None:
            self._base["server.port"] = port
        if isinstance(model, str):
            self._base["gen_ai.request.model"] = model
        self._extra: dict[str, Any] = {"kimi_actors.stream": stream,
                                       "kimi_actors.priority": priority}
        if tenant is not None:
            self._extra["kimi_actors.tenant"] = tenant

    def __enter__(self) -> CallTelemetry:
        instruments = self._instruments
        if instruments is None:
            return self
        self._started = self.now()
        model = self._base.get("gen_ai.request.model", "")
        attributes = {**self._base, **self._extra}
        max_tokens = _max_tokens(self.body)
        if isinstance(max_tokens, int) and not isinstance(max_tokens, bool):
            attributes["gen_ai.request.max_tokens"] = max_tokens
        otel = _otel
        span = instruments.tracer.start_span(f"chat {model}".strip(),
                                             kind=otel.SpanKind.CLIENT,
                                             attributes=attributes)
        if self._record_content and span.is_recording():
            span.set_attribute("gen_ai.input.messages", redact_text(json.dumps(
                self.body.get("messages"), ensure_ascii=False, default=str)))
        self._span = span
        self._token = otel.context.attach(otel.trace.set_span_in_context(span))
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: Any) -> None:
        instruments = self._instruments
        if instruments is None:
            return
        span = self._span
        _otel.context.detach(self._token)
        if exc is not None:
            error_type = type(exc).__qualname__
            span.set_status(_otel.Status(_otel.StatusCode.ERROR, redact_text(str(exc))))
            span.set_attribute("error.type", error_type)
            span.record_exception(exc, escaped=True)
            instruments.duration.record(self.now() - self._started,
                                        {**self._base, "error.type": error_type})
        span.end()

    def succeeded(self, result: ChatResult, attempts: int) -> None:
        """Record the answer on the span and in the histograms."""
        instruments = self._instruments
        if instruments is None:
            return
        span = self._span
        attributes = dict(self._base)
        if result.model:
            attributes["gen_ai.response.model"] = result.model
        instruments.duration.record(self.now() - self._started, attributes)
        usage: Usage | None = result.usage
        if usage is not None:
            instruments.tokens.record(usage.prompt_tokens,
                                      {**attributes, "gen_ai.token.type": "input"})
            instruments.tokens.record(usage.completion_tokens,
                                      {**attributes, "gen_ai.token.type": "output"})
        if not span.is_recording():
            return
        if result.id:
            span.set_attribute("gen_ai.response.id", result.id)
        if result.model:
            span.set_attribute("gen_ai.response.model", result.model)
        span.set_attribute("gen_ai.response.finish_reasons",
                           [choice.finish_reason or "" for choice in result.choices])
        if usage is not None:
            span.set_attribute("gen_ai.usage.input_tokens", usage.prompt_tokens)
            span.set_attribute("gen_ai.usage.output_tokens", usage.completion_tokens)
        span.set_attribute("kimi_actors.attempts", attempts)
        if self._record_content:
            span.set_attribute("gen_ai.output.messages", redact_text(json.dumps(
                [{"role": choice.role, "finish_reason": choice.finish_reason,
                  "parts": [{"type": "text", "content": choice.content}]}
                 for choice in result.choices], ensure_ascii=False)))

    def first_chunk(self) -> None:
        """A stream's first delta reached its consumer's channel."""
        if self._ttfc:
            return
        self._ttfc = True
        instruments = self._instruments
        if instruments is not None:
            instruments.first_chunk.record(self.now() - self._started, self._base)

    def admitted(self, waited: float) -> None:
        """An attempt was let through after ``waited`` seconds in breaker, gate and governor."""
        span = self._span
        if span is not None and span.is_recording():
            span.add_event("kimi_actors.admission", {"kimi_actors.wait_s": waited})


#: The telemetry of every call while no provider is configured: it records nothing and holds
#: nothing of a call, so one instance serves them all (no object per call).
QUIET_CALL = CallTelemetry({}, stream=False, now=lambda: 0.0, server="", port=None, tenant=None,
                           priority=0, record_content=False, quiet=True)


@contextmanager
def attempt_span(call: CallTelemetry, number: int) -> Iterator[Any]:
    """The span of one HTTP attempt, current while it runs (``None`` without OpenTelemetry)."""
    instruments = call._instruments
    if instruments is None:
        yield None
        return
    attributes: dict[str, Any] = {"http.request.method": "POST",
                                  "server.address": call._base["server.address"]}
    if number > 1:
        attributes["http.request.resend_count"] = number - 1
    otel = _otel
    span = instruments.tracer.start_span("POST", kind=otel.SpanKind.CLIENT,
                                         attributes=attributes)
    token = otel.context.attach(otel.trace.set_span_in_context(span))
    try:
        yield span
    finally:
        otel.context.detach(token)
        span.end()


def attempt_outcome(span: Any, status: int | None, error: BaseException | None) -> None:
    """Record one attempt's answer on its span."""
    if span is None or not span.is_recording():
        return
    if status is not None:
        span.set_attribute("http.response.status_code", status)
    if error is not None:
        span.set_attribute("error.type", type(error).__qualname__)
        span.set_status(_otel.Status(_otel.StatusCode.ERROR, redact_text(str(error))))

