"""The dry run: how many requests and tokens a file holds and how long it takes at the limits.

A rolling window that admits at most ``L`` units in any ``W`` seconds lets the first ``L`` go at
once and then at most ``L`` more per ``W``: if units go at times ``t_1 <= ... <= t_N``, every
half-open window ``[t_i, t_i + W)`` holds at most ``L`` of them, so ``t_{i+L} >= t_i + W``, and
by induction the last unit cannot go before::

    seconds(N, L, W) = (ceil(N / L) - 1) * W        (0 when N == 0)

which a sender that fills every window exactly reaches. It is computed for RPM (requests,
``limits.minute``), TPM and TPD (tokens reserved at admission, prompt + max_tokens, over
``limits.minute`` and ``limits.day``). The file cannot be sent faster than the largest of the
three; that dimension *binds*. It is a lower bound: the answers' own time, and concurrency
(which bounds requests in flight, not per window), come on top.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

from ..limits import Dimension, Limits
from .io import InputScan
from .progress import format_duration

__all__ = ["RunPlan", "plan_run", "render_plan", "rolling_window_seconds"]

_TIMED = (Dimension.RPM, Dimension.TPM, Dimension.TPD)


def rolling_window_seconds(amount: int, limit: int | None, window: float) -> float:
    """The least time in which ``amount`` units fit under ``limit`` per rolling ``window``
    seconds: ``(ceil(amount / limit) - 1) * window``; 0 when unlimited or nothing to send."""
    if amount < 0:
        raise ValueError(f"amount must be >= 0, got {amount!r}")
    if limit is None or amount == 0:
        return 0.0
    return (math.ceil(amount / limit) - 1) * window


@dataclass(frozen=True, slots=True, kw_only=True)
class RunPlan:
    """What a dry run reports. ``seconds_by_dimension`` holds lower bounds on the wall time
    for ``"rpm"``, ``"tpm"`` and ``"tpd"``; ``binding`` names the largest (``None`` when all
    are 0: everything fits in the first window)."""

    requests: int
    estimated_prompt_tokens: int
    estimated_admission_tokens: int
    seconds_by_dimension: Mapping[str, float]
    estimated_seconds: float
    binding: str | None
    skipped_done: int = 0
    warnings: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        for name in ("requests", "estimated_prompt_tokens", "estimated_admission_tokens",
                     "skipped_done"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"RunPlan.{name} must be an int >= 0, got {value!r}")
        seconds = dict(self.seconds_by_dimension)
        for name, value in seconds.items():
            if name not in {d.value for d in _TIMED}:
                raise ValueError(f"RunPlan.seconds_by_dimension has unknown key {name!r}")
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"RunPlan.seconds_by_dimension[{name!r}] must be >= 0")
        if not (math.isfinite(self.estimated_seconds) and self.estimated_seconds >= 0):
            raise ValueError("RunPlan.estimated_seconds must be a finite number >= 0")
        if self.binding is not None and self.binding not in seconds:
            raise ValueError(f"RunPlan.binding {self.binding!r} is not a timed dimension")
        object.__setattr__(self, "seconds_by_dimension", MappingProxyType(seconds))


def plan_run(scan: InputScan, limits: Limits) -> RunPlan:
    """The plan for the requests ``scan`` counted (already-done ones excluded) at ``limits``."""
    seconds = {
        Dimension.RPM.value: rolling_window_seconds(scan.requests, limits.rpm, limits.minute),
        Dimension.TPM.value: rolling_window_seconds(scan.estimated_admission_tokens, limits.tpm,
                                                    limits.minute),
        Dimension.TPD.value: rolling_window_seconds(scan.estimated_admission_tokens, limits.tpd,
                                                    limits.day),
    }
    longest = max(seconds.values())
    binding = next((name for name, value in seconds.items() if value == longest), None) \
        if longest > 0 else None
    warnings = []
    for name, limit in (("TPM", limits.tpm), ("TPD", limits.tpd)):
        if limit is not None and scan.max_admission_tokens > limit:
            warnings.append(f"the largest request reserves {scan.max_admission_tokens:,} tokens "
                            f"at admission (prompt + max_tokens), more than the {name} limit of "
                            f"{limit:,}: it can never be sent; lower its max_tokens")
    return RunPlan(requests=scan.requests, estimated_prompt_tokens=scan.estimated_prompt_tokens,
                   estimated_admission_tokens=scan.estimated_admission_tokens,
                   seconds_by_dimension=seconds, estimated_seconds=longest, binding=binding,
                   skipped_done=scan.skipped_done, warnings=tuple(warnings))


def _limit(value: int | None) -> str:
    return "no limit" if value is None else f"{value:,}"


def _bound(seconds: float, limits: Limits, name: str) -> str:
    """One dimension's lower bound: a duration, or that the file fits in its first window."""
    if seconds > 0:
        return format_duration(seconds)
    limit = limits.limit(Dimension(name))
    if limit is None:
        return "no limit"
    window = limits.window(Dimension(name))
    span = "day" if name == Dimension.TPD.value and window == 86_400 else \
        f"{format_duration(window)} window"
    return f"fits in one {span}"


def render_plan(plan: RunPlan, limits: Limits) -> str:
    """The dry run for a person: counts, tokens, time at each limit and which limit binds."""
    lines = ["Dry run: nothing was sent."]
    requests = f"  requests       {plan.requests:>14,}"
    if plan.skipped_done:
        requests += f"   ({plan.skipped_done:,} already in the output are skipped)"
    lines.append(requests)
    lines.append(f"  prompt tokens  {plan.estimated_prompt_tokens:>14,}   estimated")
    lines.append(f"  reserved       {plan.estimated_admission_tokens:>14,}   tokens counted by "
                 f"the limits (prompt + max_tokens)")
    window = "" if limits.minute == 60 else f" (a minute lasts {limits.minute:g} s)"
    lines.append(f"  limits         concurrency {_limit(limits.concurrency)}, RPM "
                 f"{_limit(limits.rpm)}, TPM {_limit(limits.tpm)}, TPD {_limit(limits.tpd)}"
                 f"{window}")
    lines.append("  at the limits  " + ", ".join(
        f"{name.upper()} {_bound(value, limits, name)}"
        for name, value in plan.seconds_by_dimension.items()))
    if plan.binding is None:
        lines.append("  estimated time everything fits in the first window: no rate limit binds;"
                     " the answers' own time decides")
    else:
        lines.append(f"  estimated time at least {format_duration(plan.estimated_seconds)}: "
                     f"{plan.binding.upper()} binds")
    if limits.concurrency is not None:
        lines.append(f"                 plus answer time: at most {limits.concurrency:,} requests"
                     f" are in flight at once")
    lines.extend(f"  warning: {warning}" for warning in plan.warnings)
    return "\n".join(lines)
