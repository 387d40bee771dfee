"""CircuitBreaker: closed / open / half-open, without an event loop."""

from __future__ import annotations

import math
from dataclasses import dataclass

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from kimi_actors.governance.breaker import BreakerState, CircuitBreaker, Transition
from kimi_actors.policy import BreakerPolicy

CLOSED, OPEN, HALF_OPEN = BreakerState.CLOSED, BreakerState.OPEN, BreakerState.HALF_OPEN


def make(**overrides: float) -> CircuitBreaker:
    values: dict[str, float] = {"window": 10.0, "failure_rate": 0.5, "min_calls": 4,
                                "open_for": 1.0, "max_open_for": 5.0, "growth": 2.0,
                                "half_open_probes": 2}
    values.update(overrides)
    return CircuitBreaker(BreakerPolicy(**values))  # type: ignore[arg-type]


def trip(breaker: CircuitBreaker, now: float, retry_after: float | None = None) -> Transition:
    """Fail calls until the breaker opens; returns the opening transition."""
    for _ in range(breaker.policy.min_calls):
        assert breaker.allow(now) == 0.0
        transition = breaker.record_failure(now, retry_after)
        if transition is not None:
            return transition
    raise AssertionError("the breaker did not trip")


def to_half_open(breaker: CircuitBreaker) -> float:
    until = breaker.open_until()
    assert until is not None
    assert breaker.state(until) is HALF_OPEN
    return until


# ---------------------------------------------------------------- closed -> open


def test_does_not_trip_before_min_calls() -> None:
    breaker = make(min_calls=4)
    for _ in range(3):
        assert breaker.record_failure(0.0) is None
    assert breaker.state(0.0) is CLOSED
    transition = breaker.record_failure(0.0)
    assert transition is not None
    assert (transition.before, transition.after, transition.at) == (CLOSED, OPEN, 0.0)
    assert transition.open_for == 1.0
    assert "4 of 4 calls failed" in transition.reason
    assert breaker.state(0.5) is OPEN
    assert breaker.trips == 1


def test_trips_exactly_at_the_failure_rate() -> None:
    breaker = make(min_calls=4, failure_rate=0.5)
    for _ in range(3):
        breaker.record_success(0.0)
    assert breaker.record_failure(0.0) is None  # 1 of 4
    assert breaker.record_failure(0.0) is None  # 2 of 5
    transition = breaker.record_failure(0.0)  # 3 of 6 = 0.5
    assert transition is not None
    assert transition.after is OPEN


def test_a_failure_rate_below_the_threshold_keeps_it_closed() -> None:
    breaker = make(min_calls=4, failure_rate=0.5)
    for _ in range(100):
        for _ in range(3):
            assert breaker.record_success(0.0) is None
        assert breaker.record_failure(0.0) is None  # 25 %
    assert breaker.state(0.0) is CLOSED
    assert breaker.trips == 0


def test_the_sliding_window_forgets_old_failures() -> None:
    breaker = make(window=10.0, min_calls=4)
    for _ in range(3):
        breaker.record_failure(0.0)
    # the three failures from t=0 are gone by t=10
    assert breaker.record_failure(10.0) is None
    assert breaker.record_failure(10.0) is None
    assert breaker.record_failure(10.0) is None
    assert breaker.state(10.0) is CLOSED
    assert breaker.record_failure(10.5) is not None


def test_old_successes_leave_the_window_too() -> None:
    breaker = make(window=10.0, min_calls=4, failure_rate=0.5)
    for _ in range(10):
        breaker.record_success(0.0)
    for _ in range(3):
        assert breaker.record_failure(1.0) is None  # 3 of 13
    assert breaker.record_failure(10.5) is not None  # the successes are gone: 4 of 4


def test_open_refuses_and_says_how_long() -> None:
    breaker = make(open_for=2.0)
    trip(breaker, 10.0)
    assert breaker.open_until() == 12.0
    assert breaker.allow(10.5) == 1.5
    assert breaker.allow(11.999) > 0
    assert breaker.state(11.999) is OPEN
    assert breaker.allow(12.0) == 0.0
    assert breaker.state(12.0) is HALF_OPEN
    assert breaker.open_until() is None


# ---------------------------------------------------------------- durations


def test_open_time_grows_with_consecutive_trips_up_to_the_cap() -> None:
    breaker = make(open_for=1.0, growth=2.0, max_open_for=5.0)
    openings = [trip(breaker, 0.0).open_for]
    now = 0.0
    for _ in range(4):
        now = to_half_open(breaker)
        assert breaker.allow(now) == 0.0
        transition = breaker.record_failure(now)
        assert transition is not None
        assert (transition.before, transition.after) == (HALF_OPEN, OPEN)
        assert transition.reason == "a probe failed"
        openings.append(transition.open_for)
    assert openings == [1.0, 2.0, 4.0, 5.0, 5.0]
    assert breaker.trips == 5


def test_closing_resets_the_growth() -> None:
    breaker = make(open_for=1.0, growth=3.0, max_open_for=50.0, half_open_probes=1)
    trip(breaker, 0.0)
    now = to_half_open(breaker)
    assert breaker.allow(now) == 0.0
    assert breaker.record_failure(now) is not None  # 3 s
    now = to_half_open(breaker)
    assert now == 4.0
    assert breaker.allow(now) == 0.0
    closed = breaker.record_success(now)
    assert closed is not None
    assert (closed.before, closed.after, closed.open_for) == (HALF_OPEN, CLOSED, None)
    assert trip(breaker, now).open_for == 1.0


def test_retry_after_longer_than_the_cap_is_honoured() -> None:
    breaker = make(open_for=1.0, max_open_for=5.0)
    transition = trip(breaker, 0.0, retry_after=120.0)
    assert transition.open_for == 120.0
    assert breaker.open_until() == 120.0
    assert breaker.allow(60.0) == 60.0


def test_retry_after_shorter_than_the_cool_down_does_not_shorten_it() -> None:
    breaker = make(open_for=3.0)
    assert trip(breaker, 0.0, retry_after=0.5).open_for == 3.0


def test_a_failure_while_open_can_extend_the_opening() -> None:
    breaker = make(open_for=2.0)
    assert breaker.allow(0.0) == 0.0  # a call that is still out when the breaker trips
    trip(breaker, 0.0)
    assert breaker.record_failure(1.0, retry_after=10.0) is None
    assert breaker.open_until() == 11.0
    assert breaker.record_failure(1.0, retry_after=1.0) is None  # never shortened
    assert breaker.record_failure(1.0) is None
    assert breaker.open_until() == 11.0
    assert breaker.record_success(1.0) is None
    assert breaker.state(1.0) is OPEN


def test_growth_of_one_and_many_trips_do_not_overflow() -> None:
    flat = make(open_for=2.0, growth=1.0, max_open_for=5.0, half_open_probes=1)
    grown = make(open_for=1.0, growth=10.0, max_open_for=60.0, half_open_probes=1)
    for breaker, expected in ((flat, 2.0), (grown, 60.0)):
        now = trip(breaker, 0.0).at
        transition = None
        for _ in range(2_000):
            now = to_half_open(breaker)
            breaker.allow(now)
            transition = breaker.record_failure(now)
        assert transition is not None
        assert transition.open_for == expected


@pytest.mark.parametrize("retry_after", [-1.0, math.inf, math.nan, True])
def test_retry_after_must_be_a_sane_number(retry_after: float) -> None:
    with pytest.raises(ValueError, match="retry_after"):
        make().record_failure(0.0, retry_after)


# ---------------------------------------------------------------- half-open


def test_half_open_lets_only_the_probes_through() -> None:
    breaker = make(half_open_probes=2, open_for=1.0)
    trip(breaker, 0.0)
    assert breaker.allow(1.0) == 0.0
    assert breaker.allow(1.0) == 0.0
    assert breaker.allow(1.0) == 1.0  # both slots taken: ask again later (or on a report)
    assert breaker.allow(3.0) > 0
    assert breaker.state(3.0) is HALF_OPEN


def test_probe_successes_close_the_circuit() -> None:
    breaker = make(half_open_probes=2)
    trip(breaker, 0.0)
    assert breaker.allow(1.0) == 0.0
    assert breaker.allow(1.0) == 0.0
    assert breaker.record_success(1.2) is None  # one of two
    assert breaker.state(1.2) is HALF_OPEN
    assert breaker.allow(1.2) == 0.0  # the freed slot takes another probe
    closed = breaker.record_success(1.3)
    assert closed is not None
    assert (closed.before, closed.after, closed.at) == (HALF_OPEN, CLOSED, 1.3)
    assert closed.reason == "2 probes succeeded"
    assert breaker.state(1.3) is CLOSED
    # the window was cleared: the failures that tripped it are forgotten
    for _ in range(3):
        assert breaker.record_failure(1.4) is None
    # the probe still out reports into the closed window like any call
    assert breaker.record_success(1.5) is None
    assert breaker.state(1.5) is CLOSED


def test_a_probe_failure_reopens_with_growth() -> None:
    breaker = make(half_open_probes=3, open_for=1.0, growth=2.0)
    trip(breaker, 0.0)
    assert breaker.allow(1.0) == 0.0
    assert breaker.allow(1.0) == 0.0
    assert breaker.record_success(1.1) is None
    reopened = breaker.record_failure(1.2)
    assert reopened is not None
    assert (reopened.before, reopened.after, reopened.open_for) == (HALF_OPEN, OPEN, 2.0)
    assert breaker.open_until() == 3.2
    # the other probe's late success does not count in the next half-open period
    assert breaker.record_success(1.5) is None
    assert breaker.state(3.2) is HALF_OPEN
    for _ in range(3):
        assert breaker.allow(3.2) == 0.0
    assert breaker.record_success(3.3) is None
    assert breaker.record_success(3.3) is None
    assert breaker.record_success(3.3) is not None


def test_record_ignored_frees_a_probe_slot_without_counting() -> None:
    breaker = make(half_open_probes=1)
    trip(breaker, 0.0)
    assert breaker.allow(1.0) == 0.0
    assert breaker.allow(1.0) > 0
    breaker.record_ignored(1.1)  # e.g. the probe got a 400
    assert breaker.state(1.1) is HALF_OPEN
    assert breaker.allow(1.1) == 0.0
    assert breaker.record_success(1.2) is not None


def test_record_ignored_does_not_count_while_closed() -> None:
    breaker = make(min_calls=2)
    for _ in range(10):
        breaker.allow(0.0)
        breaker.record_ignored(0.0)
    assert breaker.record_failure(0.0) is None  # 1 call, not 11
    assert breaker.record_failure(0.0) is not None


def test_a_report_without_a_probe_changes_nothing_in_half_open() -> None:
    breaker = make(half_open_probes=1)
    trip(breaker, 0.0)
    assert breaker.state(1.0) is HALF_OPEN
    assert breaker.record_success(1.0) is None
    breaker.record_ignored(1.0)
    assert breaker.state(1.0) is HALF_OPEN
    assert breaker.allow(1.0) == 0.0


def test_a_failure_in_half_open_without_allow_reopens() -> None:
    breaker = make()
    trip(breaker, 0.0)
    assert breaker.state(1.0) is HALF_OPEN
    reopened = breaker.record_failure(1.0)
    assert reopened is not None
    assert reopened.after is OPEN


# ---------------------------------------------------------------- calls from before a trip


def test_calls_allowed_before_a_trip_do_not_close_it() -> None:
    breaker = make(half_open_probes=1, min_calls=2)
    assert breaker.allow(0.0) == 0.0  # a long call, still out at the trip
    epoch = breaker.epoch
    assert breaker.record_failure(0.0) is None
    assert breaker.record_failure(0.0) is not None
    assert breaker.epoch != epoch
    assert breaker.state(1.0) is HALF_OPEN
    assert breaker.record_success(1.0) is None  # the old call succeeds: not a probe
    assert breaker.state(1.0) is HALF_OPEN
    assert breaker.allow(1.0) == 0.0
    assert breaker.record_success(1.1) is not None


def test_without_epochs_an_old_success_is_not_taken_for_a_probe() -> None:
    breaker = make(half_open_probes=1, min_calls=2)
    breaker.allow(0.0)  # the old call
    trip(breaker, 0.0)
    assert breaker.allow(1.0) == 0.0  # the probe
    assert breaker.record_success(1.1) is None  # old or probe? counted as the old one
    assert breaker.state(1.1) is HALF_OPEN
    assert breaker.record_success(1.2) is not None  # the second success must be the probe


def test_with_epochs_results_are_placed_exactly() -> None:
    breaker = make(half_open_probes=1, min_calls=2)
    assert breaker.allow(0.0) == 0.0
    old_epoch = breaker.epoch
    trip(breaker, 0.0)
    assert breaker.allow(1.0) == 0.0
    probe_epoch = breaker.epoch
    # the probe reports first: it closes at once, the old call is still known to be old
    assert breaker.record_success(1.1, epoch=probe_epoch) is not None
    assert breaker.record_failure(1.2, epoch=old_epoch) is None
    assert breaker.state(1.2) is CLOSED
    # an old failure is not counted in the new closed window either
    breaker2 = make(half_open_probes=1, min_calls=1)
    assert breaker2.allow(0.0) == 0.0
    stale = breaker2.epoch
    breaker2.allow(0.0)
    assert breaker2.record_failure(0.0, epoch=stale) is not None
    now = to_half_open(breaker2)
    assert breaker2.allow(now) == 0.0
    assert breaker2.record_success(now, epoch=breaker2.epoch) is not None
    assert breaker2.record_failure(now, epoch=stale) is None
    assert breaker2.state(now) is CLOSED


def test_without_epochs_a_failure_goes_to_an_outstanding_probe() -> None:
    breaker = make(half_open_probes=1, min_calls=2)
    breaker.allow(0.0)  # the old call
    trip(breaker, 0.0)
    assert breaker.record_failure(1.0) is None  # no probe out: it can only be the old call
    assert breaker.state(1.0) is HALF_OPEN
    assert breaker.allow(1.0) == 0.0
    reopened = breaker.record_failure(1.1)  # a probe is out: reopening is the safe reading
    assert reopened is not None


def test_old_results_while_open_change_nothing() -> None:
    breaker = make(min_calls=2)
    for _ in range(3):
        breaker.allow(0.0)
    assert breaker.record_failure(0.0) is None
    assert breaker.record_failure(0.0) is not None
    breaker.record_ignored(0.5)
    assert breaker.record_success(0.5) is None
    assert breaker.state(0.5) is OPEN


# ---------------------------------------------------------------- transitions


def test_transitions_found_by_state_and_allow_are_queued_for_the_caller() -> None:
    breaker = make(open_for=1.0, half_open_probes=1)
    opened = trip(breaker, 0.0)
    assert breaker.pop_transitions() == []  # returned by record_failure, not queued
    assert breaker.allow(2.5) == 0.0
    queued = breaker.pop_transitions()
    assert queued == [Transition(before=OPEN, after=HALF_OPEN, at=2.5, open_for=None,
                                 reason="cool-down over: probing")]
    assert breaker.pop_transitions() == []
    reopened = breaker.record_failure(2.6)
    assert reopened is not None
    assert opened.at == 0.0
    # a record_* that first finds the cool-down over queues that part, returns the rest
    closed = breaker.record_success(100.0)
    assert closed is None
    assert [t.after for t in breaker.pop_transitions()] == [HALF_OPEN]


def test_transition_validates_itself() -> None:
    with pytest.raises(ValueError, match="changes state"):
        Transition(before=OPEN, after=OPEN, at=0.0, open_for=1.0, reason="x")
    with pytest.raises(ValueError, match="open_for"):
        Transition(before=CLOSED, after=OPEN, at=0.0, open_for=None, reason="x")
    with pytest.raises(ValueError, match="open_for"):
        Transition(before=OPEN, after=HALF_OPEN, at=0.0, open_for=1.0, reason="x")


def test_repr_and_state_values() -> None:
    breaker = make()
    assert "state=closed" in repr(breaker)
    assert breaker.open_until() is None
    assert [s.value for s in BreakerState] == ["closed", "open", "half_open"]


def test_window_memory_is_bounded() -> None:
    breaker = make(window=10.0, min_calls=10**9)
    for i in range(50_000):
        breaker.record_failure(i * 0.01)
    assert len(breaker._bins) <= 65


# ---------------------------------------------------------------- state machine


@dataclass
class _Call:
    epoch: int
    episode: int  # which half-open period it was let through in (0: not a probe)


class BreakerMachine(RuleBasedStateMachine):
    """Random allows, reports and time steps, results reported with their epoch."""

    exact = True

    def __init__(self) -> None:
        super().__init__()
        self.now = 0.0
        self.calls: list[_Call] = []
        self.episode = 0  # counts half-open periods
        self.probe_successes = 0  # successes of probes of the current half-open period
        self.breaker = make()

    @initialize(
        probes=st.integers(1, 3),
        min_calls=st.integers(1, 4),
        rate=st.sampled_from([0.2, 0.5, 1.0]),
        growth=st.sampled_from([1.0, 2.0]),
    )
    def setup(self, probes: int, min_calls: int, rate: float, growth: float) -> None:
        self.breaker = CircuitBreaker(BreakerPolicy(
            window=5.0, failure_rate=rate, min_calls=min_calls, open_for=1.0,
            max_open_for=4.0, growth=growth, half_open_probes=probes))

    def _observe(self, transition: Transition | None = None) -> None:
        for seen in [*self.breaker.pop_transitions(),
                     *([transition] if transition is not None else [])]:
            if seen.after is HALF_OPEN:
                self.episode += 1
                self.probe_successes = 0
            if seen.after is CLOSED and self.exact:
                assert self.probe_successes >= self.breaker.policy.half_open_probes, \
                    "closed without enough probe successes"

    def _state(self) -> BreakerState:
        state = self.breaker.state(self.now)
        self._observe()
        return state

    @rule(step=st.sampled_from([0.1, 0.5, 1.0, 2.5, 6.0]))
    def advance(self, step: float) -> None:
        self.now += step

    @rule()
    def allow(self) -> None:
        before = self._state()
        delay = self.breaker.allow(self.now)
        assert self.breaker.state(self.now) is before
        if before is OPEN:
            assert delay > 0.0
            until = self.breaker.open_until()
            assert until is not None
            assert delay == until - self.now
        if delay == 0.0:
            episode = self.episode if before is HALF_OPEN else 0
            self.calls.append(_Call(self.breaker.epoch, episode))

    @precondition(lambda self: bool(self.calls))
    @rule(pick=st.integers(0, 1_000), outcome=st.sampled_from(["ok", "ok", "fail", "ignored"]),
          retry_after=st.sampled_from([None, None, 0.5, 9.0]))
    def report(self, pick: int, outcome: str, retry_after: float | None) -> None:
        call = self.calls.pop(pick % len(self.calls))
        epoch = call.epoch if self.exact else None
        is_probe = call.episode == self.episode and self._state() is HALF_OPEN
        if outcome == "ok":
            if is_probe:
                self.probe_successes += 1
            self._observe(self.breaker.record_success(self.now, epoch=epoch))
        elif outcome == "fail":
            self._observe(self.breaker.record_failure(self.now, retry_after, epoch=epoch))
        else:
            self.breaker.record_ignored(self.now, epoch=epoch)
            self._observe()

    @precondition(lambda self: bool(self.calls))
    @rule(outcome=st.sampled_from(["ok", "fail", "ignored"]))
    def report_oldest(self, outcome: str) -> None:
        """Calls from before a trip report late: the case the epochs are for."""
        self.report(0, outcome, None)

    @precondition(lambda self: not self.calls)
    @rule()
    def unsolicited_failure(self) -> None:
        """A failure reported without allow() (nothing else outstanding): trips quickly."""
        if self._state() is CLOSED:
            self._observe(self.breaker.record_failure(self.now))

    @invariant()
    def probes_in_flight_stay_within_the_limit(self) -> None:
        if self._state() is HALF_OPEN:
            in_flight = sum(1 for c in self.calls if c.episode == self.episode)
            assert in_flight <= self.breaker.policy.half_open_probes


class CountingBreakerMachine(BreakerMachine):
    """The same, with results reported without their epoch (attributed by count)."""

    exact = False


_machine_settings = settings(max_examples=120, stateful_step_count=50, deadline=None)
TestBreakerMachine = BreakerMachine.TestCase
TestBreakerMachine.settings = _machine_settings
TestCountingBreakerMachine = CountingBreakerMachine.TestCase
TestCountingBreakerMachine.settings = _machine_settings


def test_down_for_counts_from_the_first_trip_until_the_breaker_closes() -> None:
    breaker = make(half_open_probes=1)
    assert breaker.down_for(5.0) == 0.0
    trip(breaker, 10.0)
    assert breaker.down_for(10.5) == 0.5
    assert breaker.allow(11.0) == 0.0  # half-open: a probe
    breaker.record_failure(11.0)  # the probe fails: open again, still the same outage
    assert breaker.down_for(12.0) == 2.0
    assert breaker.allow(14.0) == 0.0
    breaker.record_success(14.0)
    assert breaker.state(14.0) is CLOSED
    assert breaker.down_for(20.0) == 0.0
    trip(breaker, 30.0)
    assert breaker.down_for(31.0) == 1.0  # a new outage counts from its own trip


def test_give_up_after_must_be_positive() -> None:
    with pytest.raises(ValueError, match="give_up_after"):
        BreakerPolicy(give_up_after=0.0)
