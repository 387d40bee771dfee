"""The dry-run plan: rolling-window maths checked by hand and against a simulation."""

from __future__ import annotations

import math
from collections import deque

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kimi_actors.batch.io import InputScan
from kimi_actors.batch.plan import RunPlan, plan_run, render_plan, rolling_window_seconds
from kimi_actors.limits import Limits


@pytest.mark.parametrize(("amount", "limit", "window", "seconds"), [
    (0, 10, 60.0, 0.0),
    (1, 10, 60.0, 0.0),
    (10, 10, 60.0, 0.0),      # the first L go at once
    (11, 10, 60.0, 60.0),     # the 11th waits one window
    (20, 10, 60.0, 60.0),
    (21, 10, 60.0, 120.0),
    (1000, 200, 60.0, 240.0),
    (7, 3, 2.0, 4.0),
    (5, None, 60.0, 0.0),
])
def test_rolling_window_seconds_by_hand(amount: int, limit: int | None, window: float,
                                        seconds: float) -> None:
    assert rolling_window_seconds(amount, limit, window) == seconds


def earliest_last_send(amount: int, limit: int, window: float) -> float:
    """Send each unit as early as a rolling window allows; return the last unit's time."""
    sent: deque[float] = deque()
    now = 0.0
    for _ in range(amount):
        if len(sent) == limit:
            now = max(now, sent.popleft() + window)
        sent.append(now)
    return now


@given(st.integers(0, 400), st.integers(1, 50), st.sampled_from([1.0, 2.5, 60.0]))
def test_rolling_window_seconds_matches_a_simulation(amount: int, limit: int,
                                                     window: float) -> None:
    assert math.isclose(rolling_window_seconds(amount, limit, window),
                        earliest_last_send(amount, limit, window))


def test_rolling_window_rejects_negative_amounts() -> None:
    with pytest.raises(ValueError, match="amount"):
        rolling_window_seconds(-1, 5, 60.0)


def test_plan_at_tier_1_rpm_binds() -> None:
    scan = InputScan(requests=1000, estimated_prompt_tokens=3_000_000,
                     estimated_admission_tokens=5_000_000, max_admission_tokens=9_000)
    plan = plan_run(scan, Limits.tier(1))
    assert dict(plan.seconds_by_dimension) == {"rpm": 240.0, "tpm": 120.0, "tpd": 0.0}
    assert plan.estimated_seconds == 240.0
    assert plan.binding == "rpm"
    assert plan.requests == 1000
    assert plan.estimated_admission_tokens == 5_000_000
    assert plan.warnings == ()


def test_plan_at_tier_0_tpd_binds_over_a_day() -> None:
    scan = InputScan(requests=10, estimated_admission_tokens=4_000_000)
    plan = plan_run(scan, Limits.tier(0))
    # rpm: ceil(10/3)-1 = 3 minutes; tpm: ceil(8)-1 = 7 minutes; tpd: ceil(2.67)-1 = 2 days.
    assert dict(plan.seconds_by_dimension) == {"rpm": 180.0, "tpm": 420.0, "tpd": 172_800.0}
    assert plan.binding == "tpd"
    assert plan.estimated_seconds == 172_800.0


def test_plan_uses_the_limits_windows() -> None:
    scan = InputScan(requests=30, estimated_admission_tokens=10)
    plan = plan_run(scan, Limits(rpm=10, tpd=4, minute=2.0, day=100.0))
    assert plan.seconds_by_dimension["rpm"] == 4.0
    assert plan.seconds_by_dimension["tpd"] == 200.0
    assert plan.binding == "tpd"


def test_plan_when_nothing_binds_and_ties() -> None:
    unlimited = plan_run(InputScan(requests=10**6, estimated_admission_tokens=10**9),
                         Limits.unlimited())
    assert unlimited.estimated_seconds == 0.0
    assert unlimited.binding is None
    tie = plan_run(InputScan(requests=20, estimated_admission_tokens=200),
                   Limits(rpm=10, tpm=100))
    assert tie.seconds_by_dimension["rpm"] == tie.seconds_by_dimension["tpm"] == 60.0
    assert tie.binding == "rpm"


def test_plan_warns_about_a_request_over_tpm() -> None:
    scan = InputScan(requests=2, estimated_admission_tokens=700_000,
                     max_admission_tokens=600_000)
    plan = plan_run(scan, Limits.tier(0))
    assert len(plan.warnings) == 1
    assert "600,000" in plan.warnings[0]
    assert "TPM limit of 500,000" in plan.warnings[0]


def test_render_plan_contains_the_figures() -> None:
    scan = InputScan(requests=12_345, estimated_prompt_tokens=1_234_567,
                     estimated_admission_tokens=9_876_543, skipped_done=55,
                     max_admission_tokens=3_000_000)
    limits = Limits.tier(1)
    plan = plan_run(scan, limits)
    text = render_plan(plan, limits)
    assert "nothing was sent" in text
    for figure in ("12,345", "1,234,567", "9,876,543", "55 already in the output",
                   "concurrency 50", "RPM 200", "TPM 2,000,000", "TPD no limit",
                   "RPM 1h 01m", "TPM 4m 00s", "TPD no limit", "RPM binds",
                   "at most 50 requests", "warning", "3,000,000"):
        assert figure in text, figure


def test_render_plan_without_binding_and_with_short_minute() -> None:
    limits = Limits(rpm=100, minute=2.0)
    text = render_plan(plan_run(InputScan(requests=5), limits), limits)
    assert "no rate limit binds" in text
    assert "a minute lasts 2 s" in text
    assert "in flight" not in text
    assert "already in the output" not in text


@pytest.mark.parametrize(("changes", "message"), [
    ({"requests": -1}, "requests"),
    ({"seconds_by_dimension": {"rpm": -1.0}}, "seconds_by_dimension"),
    ({"seconds_by_dimension": {"xyz": 1.0}}, "unknown key"),
    ({"estimated_seconds": math.inf}, "estimated_seconds"),
    ({"binding": "tpm"}, "binding"),
])
def test_run_plan_validates(changes: dict[str, object], message: str) -> None:
    values: dict[str, object] = {
        "requests": 1, "estimated_prompt_tokens": 1, "estimated_admission_tokens": 1,
        "seconds_by_dimension": {"rpm": 1.0}, "estimated_seconds": 1.0, "binding": "rpm"}
    values.update(changes)
    with pytest.raises(ValueError, match=message):
        RunPlan(**values)  # type: ignore[arg-type]


def test_run_plan_seconds_are_read_only() -> None:
    source = {"rpm": 1.0}
    plan = RunPlan(requests=1, estimated_prompt_tokens=1, estimated_admission_tokens=1,
                   seconds_by_dimension=source, estimated_seconds=1.0, binding="rpm")
    source["rpm"] = 99.0
    assert plan.seconds_by_dimension["rpm"] == 1.0
    with pytest.raises(TypeError):
        plan.seconds_by_dimension["rpm"] = 2.0  # type: ignore[index]
