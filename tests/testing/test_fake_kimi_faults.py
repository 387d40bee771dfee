"""Fault and latency settings, parsing, and the per-request fault plan (pure)."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from kimi_actors.testing import Faults, Latency
from kimi_actors.testing.faults import NO_FAULTS, plan_faults


@pytest.mark.parametrize("name", ["overload", "server_error", "html_error", "drop", "stall",
                                  "malformed", "invalid_utf8"])
@pytest.mark.parametrize("value", [-0.1, 1.5, True, "0.1", float("nan")])
def test_probabilities_must_be_in_unit_interval(name: str, value: object) -> None:
    with pytest.raises(ValueError, match=rf"Faults\.{name}"):
        Faults(**{name: value})  # type: ignore[arg-type]


def test_switches_must_be_bools() -> None:
    with pytest.raises(ValueError, match=r"Faults\.split_writes"):
        Faults(split_writes=1)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"Faults\.quota_exhausted"):
        Faults(quota_exhausted="yes")  # type: ignore[arg-type]


def test_parse_reads_probabilities_and_switches() -> None:
    assert Faults.parse("") == Faults()
    assert Faults.parse("overload=0.05, drop=0.1,split_writes") == Faults(
        overload=0.05, drop=0.1, split_writes=True)
    assert Faults.parse("quota_exhausted=false,stall=1") == Faults(stall=1.0)
    assert Faults.parse("quota_exhausted=yes") == Faults(quota_exhausted=True)


@pytest.mark.parametrize(("text", "message"), [
    ("explode=0.1", "unknown fault 'explode'"),
    ("drop", "needs a probability"),
    ("drop=lots", "not a number"),
    ("drop=2", "probability"),
    ("split_writes=maybe", "switch"),
])
def test_parse_rejects_bad_specs(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Faults.parse(text)


@pytest.mark.parametrize("value", [-1, float("inf"), True, "1"])
def test_latency_must_be_finite_and_non_negative(value: object) -> None:
    with pytest.raises(ValueError, match=r"Latency\.first_token"):
        Latency(first_token=value)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"Latency\.per_token"):
        Latency(per_token=value)  # type: ignore[arg-type]


def test_no_random_faults_plan_nothing() -> None:
    assert plan_faults(Faults(split_writes=True), 0, 1) is NO_FAULTS
    assert NO_FAULTS.reject is None
    assert not NO_FAULTS.touches_stream


def test_plans_are_deterministic_per_seed_and_request_number() -> None:
    faults = Faults(overload=0.3, drop=0.3, malformed=0.3)
    first = [plan_faults(faults, 7, number) for number in range(1, 200)]
    assert first == [plan_faults(faults, 7, number) for number in range(1, 200)]
    assert first != [plan_faults(faults, 8, number) for number in range(1, 200)]


def test_certain_faults_always_happen_and_rejections_exclude_stream_faults() -> None:
    for number in range(1, 50):
        overload = plan_faults(Faults(overload=1.0, drop=1.0), 0, number)
        assert overload.reject == "overload"
        assert not overload.touches_stream
        drop = plan_faults(Faults(drop=1.0, stall=1.0, malformed=1.0, invalid_utf8=1.0), 0,
                           number)
        assert drop.reject is None
        assert drop.cut == "drop"
        assert drop.touches_stream
        assert drop.malformed_fraction is not None
        assert drop.invalid_utf8_fraction is not None


@pytest.mark.parametrize("name", ["overload", "server_error", "html_error", "drop", "stall",
                                  "malformed", "invalid_utf8"])
def test_fault_frequency_follows_its_probability(name: str) -> None:
    probability: dict[str, Any] = {name: 0.2}
    faults = replace(Faults(), **probability)
    hits = 0
    for number in range(1, 2001):
        plan = plan_faults(faults, 3, number)
        hits += name in (plan.reject, plan.cut) or (
            name == "malformed" and plan.malformed_fraction is not None) or (
            name == "invalid_utf8" and plan.invalid_utf8_fraction is not None)
    assert 300 < hits < 500


def test_positions_fall_inside_the_stream() -> None:
    faults = Faults(drop=1.0, malformed=1.0, invalid_utf8=1.0)
    for events in (1, 2, 3, 10, 100):
        cuts = set()
        for number in range(1, 300):
            plan = plan_faults(faults, 0, number)
            cut = plan.cut_after(events)
            assert 0 <= cut < events
            cuts.add(cut)
            for position in (plan.malformed_at(events), plan.invalid_utf8_at(events)):
                assert position is not None
                assert 1 <= position <= max(events - 1, 1)
        if events <= 10:
            assert cuts == set(range(events))
    assert NO_FAULTS.malformed_at(5) is None
    assert NO_FAULTS.invalid_utf8_at(5) is None
