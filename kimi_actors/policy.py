"""Frozen policies: how to retry, when to open the circuit, how to recover a broken stream."""

from __future__ import annotations

import enum
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from .limits import Limits

__all__ = [
    "AdaptPolicy",
    "BreakerPolicy",
    "FatalMode",
    "FatalPolicy",
    "ResumeMode",
    "ResumePolicy",
    "RetryPolicy",
    "SchedulePolicy",
    "TelemetryPolicy",
    "TenantPolicy",
    "TimeoutPhase",
    "Timeouts",
]


def _positive(owner: str, **values: float) -> None:
    for name, value in values.items():
        if not (isinstance(value, int | float) and not isinstance(value, bool)
                and math.isfinite(value) and value > 0):
            raise ValueError(f"{owner}.{name} must be a positive finite number, got {value!r}")


def _non_negative(owner: str, **values: float) -> None:
    for name, value in values.items():
        if not (isinstance(value, int | float) and not isinstance(value, bool)
                and math.isfinite(value) and value >= 0):
            raise ValueError(f"{owner}.{name} must be a finite number >= 0, got {value!r}")


@dataclass(frozen=True, slots=True, kw_only=True)
class RetryPolicy:
    """Full-jitter exponential backoff with a cap, a maximum of attempts and a retry budget.

    The budget allows at most ``budget_ratio`` retries per first attempt over the last
    ``budget_window`` seconds, plus ``budget_floor`` retries, so retries can never multiply the
    request rate whatever fails.
    """

    max_attempts: int = 6
    base: float = 0.5
    cap: float = 60.0
    budget_ratio: float = 0.1
    budget_floor: int = 10
    budget_window: float = 60.0

    def __post_init__(self) -> None:
        if isinstance(self.max_attempts, bool) or not isinstance(self.max_attempts, int) \
                or self.max_attempts < 1:
            raise ValueError(f"RetryPolicy.max_attempts must be an int >= 1, "
                             f"got {self.max_attempts!r}")
        _positive("RetryPolicy", base=self.base, cap=self.cap, budget_window=self.budget_window)
        _non_negative("RetryPolicy", budget_ratio=self.budget_ratio,
                      budget_floor=self.budget_floor)
        if self.base > self.cap:
            raise ValueError(f"RetryPolicy.base ({self.base}) must not exceed cap ({self.cap})")


@dataclass(frozen=True, slots=True, kw_only=True)
class BreakerPolicy:
    """Circuit breaker: trips when failures reach ``failure_rate`` of at least ``min_calls``
    outcomes in the last ``window`` seconds; stays open ``open_for`` seconds (or the server's
    Retry-After when longer), growing by ``growth`` on each consecutive trip up to
    ``max_open_for``; then lets ``half_open_probes`` calls through to test the water."""

    window: float = 30.0
    failure_rate: float = 0.5
    min_calls: int = 20
    open_for: float = 5.0
    max_open_for: float = 60.0
    growth: float = 2.0
    half_open_probes: int = 3
    #: Once the breaker has judged the service down (open or probing, no recovery) this long,
    #: queued work fails instead of waiting on.
    give_up_after: float = 300.0

    def __post_init__(self) -> None:
        _positive("BreakerPolicy", window=self.window, open_for=self.open_for,
                  max_open_for=self.max_open_for, give_up_after=self.give_up_after)
        if not 0 < self.failure_rate <= 1:
            raise ValueError(f"BreakerPolicy.failure_rate must be in (0, 1], "
                             f"got {self.failure_rate!r}")
        if self.min_calls < 1 or self.half_open_probes < 1:
            raise ValueError("BreakerPolicy.min_calls and half_open_probes must be >= 1")
        if self.growth < 1:
            raise ValueError(f"BreakerPolicy.growth must be >= 1, got {self.growth!r}")
        if self.open_for > self.max_open_for:
            raise ValueError("BreakerPolicy.open_for must not exceed max_open_for")


@dataclass(frozen=True, slots=True, kw_only=True)
class AdaptPolicy:
    """How the client lowers its own load when the server pushes back (docs/design.md).

    Overload (429 ``engine_overloaded_error``) lowers the working concurrency to ``decrease``
    of what was in flight, at most once per round of requests, never below ``floor``; each
    success then raises it by one over the working limit (additive increase), never above
    the configured concurrency. Before the first overload, the working concurrency starts at
    ``start`` and doubles every ``ramp`` seconds in which it was reached (``start=None``:
    begin at the configured concurrency). A rate-limit 429 that names nothing makes what the
    server accepted over the trailing minute the working RPM, probed upward at most once a
    minute (by 1, 2, 4, ... while probes succeed) and never above the configured RPM.
    """

    start: int | None = 32
    ramp: float = 0.5
    decrease: float = 0.7
    floor: int = 1

    def __post_init__(self) -> None:
        _positive("AdaptPolicy", ramp=self.ramp)
        if not 0 < self.decrease < 1:
            raise ValueError(f"AdaptPolicy.decrease must be in (0, 1), got {self.decrease!r}")
        for name in ("start", "floor"):
            value = getattr(self, name)
            if value is None and name == "start":
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"AdaptPolicy.{name} must be an int >= 1, got {value!r}")


@dataclass(frozen=True, slots=True, kw_only=True)
class TenantPolicy:
    """One tenant's share: ``weight`` in the weighted fair queue (tokens served in
    proportion while several tenants wait) and optional sub-``limits`` of its own
    (a :class:`~kimi_actors.limits.Limits`; every dimension left ``None`` is unlimited)."""

    weight: float = 1.0
    limits: Limits | None = None

    def __post_init__(self) -> None:
        _positive("TenantPolicy", weight=self.weight)
        if self.limits is not None and not isinstance(self.limits, Limits):
            raise ValueError(f"TenantPolicy.limits must be a Limits, got {self.limits!r}")


@dataclass(frozen=True, slots=True, kw_only=True)
class TelemetryPolicy:
    """What the OpenTelemetry spans record beyond the conventions' metadata (see
    kimi_actors/telemetry.py). ``record_content`` adds the messages sent and the answers
    received (``gen_ai.input.messages``, ``gen_ai.output.messages``), redacted; off by
    default, since prompts and answers are often personal data."""

    record_content: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.record_content, bool):
            raise ValueError(f"TelemetryPolicy.record_content must be a bool, got "
                             f"{self.record_content!r}")


@dataclass(frozen=True, slots=True, kw_only=True)
class SchedulePolicy:
    """Who goes next. Lower ``priority`` goes first; each ``aging`` seconds of waiting is worth
    one priority level, so lower priorities are never starved. Between tenants of one
    priority, tokens are shared by weight (``tenants`` by name, ``tenant_default`` for any
    other name, and for calls without a tenant)."""

    aging: float = 30.0
    tenants: Mapping[str, TenantPolicy] = field(default_factory=dict)
    tenant_default: TenantPolicy = field(default_factory=TenantPolicy)

    def __post_init__(self) -> None:
        _positive("SchedulePolicy", aging=self.aging)
        for name, policy in self.tenants.items():
            if not isinstance(name, str) or not isinstance(policy, TenantPolicy):
                raise ValueError(f"SchedulePolicy.tenants maps names to TenantPolicy, "
                                 f"got {name!r}: {policy!r}")
        object.__setattr__(self, "tenants", MappingProxyType(dict(self.tenants)))

    def tenant(self, name: str | None) -> TenantPolicy:
        """The policy of tenant ``name``."""
        if name is None:
            return self.tenant_default
        return self.tenants.get(name, self.tenant_default)


class ResumeMode(enum.StrEnum):
    """What a stream actor does when its stream breaks mid-way."""

    #: Continue with Partial Mode from the text received; the consumer sees only new text.
    RESUME = "resume"
    #: Send the request again from scratch; the consumer gets a ``restart`` delta and must
    #: discard what it received.
    RESTART = "restart"
    #: Fail the stream with the error.
    FAIL = "fail"


@dataclass(frozen=True, slots=True, kw_only=True)
class ResumePolicy:
    """How broken streams are recovered.

    ``continue_on_length`` > 0 continues an answer cut by ``max_tokens`` (finish_reason
    "length") through Partial Mode up to that many times.
    """

    mode: ResumeMode = ResumeMode.RESUME
    max_resumes: int = 5
    continue_on_length: int = 0

    def __post_init__(self) -> None:
        if self.max_resumes < 0 or self.continue_on_length < 0:
            raise ValueError("ResumePolicy.max_resumes and continue_on_length must be >= 0")


class FatalMode(enum.StrEnum):
    """What a run-fatal error (a rejected key, an exhausted quota, a suspended account) does."""

    #: Stop for good: every further call fails with the error. Right for a batch run.
    STOP = "stop"
    #: Fail fast with the error while the account is known to be bad, let one probe through
    #: after ``FatalPolicy.cool_down``, and serve again once a probe gets through. Right for a
    #: long-lived process (a web backend) whose key may be fixed or account topped up.
    PROBE = "probe"


@dataclass(frozen=True, slots=True, kw_only=True)
class FatalPolicy:
    """How a supervisor lives through a run-fatal error; see :class:`FatalMode`. Either way,
    queued and backing-off work fails at once with the error instead of being sent."""

    mode: FatalMode = FatalMode.PROBE
    cool_down: float = 30.0

    def __post_init__(self) -> None:
        if not isinstance(self.mode, FatalMode):
            raise ValueError(f"FatalPolicy.mode must be a FatalMode, got {self.mode!r}")
        _positive("FatalPolicy", cool_down=self.cool_down)


class TimeoutPhase(enum.StrEnum):
    """What a :class:`RequestTimeoutError` was waiting for."""

    #: TCP and TLS set-up.
    CONNECT = "connect"
    #: Response headers (a stream's within ``first_byte``, a non-stream answer's within
    #: ``non_stream_first_byte``).
    FIRST_BYTE = "first_byte"
    #: The next complete stream event, or the next read of a body.
    READ_IDLE = "read_idle"
    #: The end of one whole attempt.
    RESPONSE = "response"
    #: The caller's own ``timeout=`` for the whole call, retries included.
    DEADLINE = "deadline"


@dataclass(frozen=True, slots=True, kw_only=True)
class Timeouts:
    """Seconds; each bounds one attempt (the caller's ``timeout=`` bounds the whole call).

    - ``connect``: TCP and TLS set-up.
    - ``first_byte``: a stream's response headers, from sending.
    - ``read_idle``: a stream's longest gap between complete data events. Bytes that complete
      no event (a trickle, ``: keep-alive`` comments) do not count, and neither does time the
      stream waits for a slow consumer. For a non-stream answer: the longest pause between
      reads of its body.
    - ``non_stream_first_byte``: a non-stream answer's headers. Kimi generates the whole answer
      before it answers, so this is longer than ``first_byte``; prefer streams for long answers.
    - ``response``: one whole attempt, stream or not (Kimi itself gives up after two hours).
    """

    connect: float = 10.0
    first_byte: float = 120.0
    read_idle: float = 60.0
    non_stream_first_byte: float = 600.0
    response: float = 7200.0

    def __post_init__(self) -> None:
        _positive("Timeouts", connect=self.connect, first_byte=self.first_byte,
                  read_idle=self.read_idle, non_stream_first_byte=self.non_stream_first_byte,
                  response=self.response)
