"""Full-jitter backoff, server-named waits and the retry budget, without an event loop."""

from __future__ import annotations

import math
import random
import statistics

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kimi_actors.governance.backoff import RetryBudget, backoff_delay, retry_delay
from kimi_actors.policy import RetryPolicy


@st.composite
def retry_policies(draw: st.DrawFn) -> RetryPolicy:
    cap = draw(st.floats(min_value=1e-6, max_value=1e6))
    base = draw(st.floats(min_value=1e-300, max_value=cap))
    return RetryPolicy(base=base, cap=cap)


@settings(max_examples=300, deadline=None)
@given(attempt=st.integers(min_value=1, max_value=10_000), policy=retry_policies(),
       seed=st.integers(min_value=0, max_value=2**32))
def test_every_delay_is_within_zero_and_the_cap(attempt: int, policy: RetryPolicy,
                                               seed: int) -> None:
    delay = backoff_delay(attempt, policy, random.Random(seed))
    assert 0.0 <= delay <= policy.cap
    if attempt <= 1_000:
        assert delay <= math.ldexp(policy.base, attempt - 1)


def test_huge_attempts_do_not_overflow() -> None:
    policy = RetryPolicy(base=1e-300, cap=1e300)
    for attempt in (1_000, 2_099, 2_100, 10**9):
        assert 0.0 <= backoff_delay(attempt, policy, random.Random(1)) <= 1e300


def _mean(attempt: int, policy: RetryPolicy) -> float:
    rng = random.Random(attempt)
    return statistics.fmean(backoff_delay(attempt, policy, rng) for _ in range(4_000))


def test_mean_doubles_with_each_attempt_until_the_cap() -> None:
    policy = RetryPolicy(base=0.5, cap=60.0)
    means = [_mean(attempt, policy) for attempt in range(1, 12)]
    # uniform(0, c) has mean c/2: 0.25, 0.5, 1, 2, ..., 32, then 30 at the cap of 60
    for attempt, mean in enumerate(means, start=1):
        expected = min(60.0, 0.5 * 2 ** (attempt - 1)) / 2
        assert mean == pytest.approx(expected, rel=0.05)
    assert means[:8] == sorted(means[:8])
    assert max(means) < 60.0 / 2 * 1.05


def test_first_retry_draws_below_the_base() -> None:
    policy = RetryPolicy(base=0.5, cap=60.0)
    rng = random.Random(7)
    draws = [backoff_delay(1, policy, rng) for _ in range(1_000)]
    assert max(draws) <= 0.5
    assert min(draws) < 0.05  # full jitter reaches all the way down


def test_seeded_rng_is_reproducible() -> None:
    policy = RetryPolicy()
    first = [backoff_delay(a, policy, random.Random(42)) for a in range(1, 20)]
    second = [backoff_delay(a, policy, random.Random(42)) for a in range(1, 20)]
    other = [backoff_delay(a, policy, random.Random(43)) for a in range(1, 20)]
    assert first == second
    assert first != other


@pytest.mark.parametrize("attempt", [0, -1, 1.0, True])
def test_attempt_numbers_start_at_one(attempt: object) -> None:
    with pytest.raises(ValueError, match="attempt must be an int >= 1"):
        backoff_delay(attempt, RetryPolicy(), random.Random(0))  # type: ignore[arg-type]


def test_retry_delay_without_a_server_wait_is_the_backoff() -> None:
    policy = RetryPolicy()
    for attempt in (1, 3, 9):
        assert retry_delay(attempt, policy, random.Random(5), None) == \
            backoff_delay(attempt, policy, random.Random(5))


@settings(max_examples=200, deadline=None)
@given(wait=st.floats(min_value=0.0, max_value=1e6), attempt=st.integers(1, 50),
       seed=st.integers(0, 2**32))
def test_a_server_wait_wins_and_is_never_shortened(wait: float, attempt: int, seed: int) -> None:
    policy = RetryPolicy(base=0.5, cap=60.0)
    delay = retry_delay(attempt, policy, random.Random(seed), wait)
    assert wait <= delay <= wait + min(1.0, 0.1 * wait)


def test_a_server_wait_longer_than_the_cap_is_honoured() -> None:
    policy = RetryPolicy(base=0.5, cap=60.0)
    assert retry_delay(1, policy, random.Random(0), 3_600.0) >= 3_600.0


def test_a_crowd_told_the_same_wait_spreads_out() -> None:
    rng = random.Random(3)
    delays = [retry_delay(1, RetryPolicy(), rng, 20.0) for _ in range(200)]
    assert len(set(delays)) == 200
    assert max(delays) - min(delays) > 0.5
    assert all(20.0 <= d <= 21.0 for d in delays)


@pytest.mark.parametrize("wait", [-1.0, math.inf, math.nan])
def test_a_nonsense_server_wait_is_refused(wait: float) -> None:
    with pytest.raises(ValueError, match="server_wait"):
        retry_delay(1, RetryPolicy(), random.Random(0), wait)


# ---------------------------------------------------------------- budget


def test_budget_allows_floor_plus_ratio_of_first_attempts() -> None:
    budget = RetryBudget(RetryPolicy(budget_ratio=0.1, budget_floor=10, budget_window=60.0))
    for i in range(1_000):
        budget.record_attempt(i * 0.05)  # all inside one window
    now = 50.0
    assert budget.available(now) == pytest.approx(110.0)
    spent = 0
    while budget.try_spend(now):
        spent += 1
        assert spent <= 1_000, "the budget never ran out"
    assert spent == 110
    assert budget.available(now) == 0.0
    assert not budget.try_spend(now + 1.0)


def test_budget_floor_alone_without_traffic() -> None:
    budget = RetryBudget(RetryPolicy(budget_ratio=0.1, budget_floor=3))
    assert [budget.try_spend(0.0) for _ in range(5)] == [True, True, True, False, False]


def test_budget_refills_as_the_window_slides() -> None:
    budget = RetryBudget(RetryPolicy(budget_ratio=0.1, budget_floor=10, budget_window=60.0))
    for _ in range(1_000):
        budget.record_attempt(0.0)
    assert sum(budget.try_spend(1.0) for _ in range(200)) == 110
    for _ in range(500):
        budget.record_attempt(30.0)
    # still inside the window of the first spend: 10 + 0.1 * 1500 - 110 = 50
    assert budget.available(59.0) == pytest.approx(50.0)
    assert sum(budget.try_spend(59.0) for _ in range(200)) == 50
    # the first attempts and the first spend leave the window together: 10 + 50 - 50
    assert budget.available(61.5) == pytest.approx(10.0)
    # once everything left the window only the floor remains, unspent
    assert budget.available(200.0) == pytest.approx(10.0)
    assert sum(budget.try_spend(200.0) for _ in range(20)) == 10


@settings(max_examples=100, deadline=None)
@given(events=st.lists(st.tuples(st.floats(min_value=0.0, max_value=5.0), st.booleans()),
                       max_size=300))
def test_retries_in_any_window_stay_within_the_budget(
    events: list[tuple[float, bool]]
) -> None:
    """For every spent retry at t: retries in the last window <= floor + ratio * attempts in
    it, allowing for one bin (window/64) of imprecision at the old edge."""
    window, floor, ratio = 20.0, 2, 0.25
    budget = RetryBudget(RetryPolicy(budget_ratio=ratio, budget_floor=floor,
                                     budget_window=window))
    bin_width = window / 64
    now = 0.0
    attempts: list[float] = []
    retries: list[float] = []
    for step, is_retry in events:
        now += step
        if not is_retry:
            budget.record_attempt(now)
            attempts.append(now)
        elif budget.try_spend(now):
            retries.append(now)
            recent_retries = sum(1 for t in retries if t > now - window + bin_width)
            earned = floor + ratio * sum(1 for t in attempts if t > now - window)
            assert recent_retries <= earned


def test_budget_memory_is_bounded() -> None:
    budget = RetryBudget(RetryPolicy(budget_window=60.0))
    for i in range(100_000):
        budget.record_attempt(i * 0.01)
    assert len(budget._bins) <= 65
    assert "attempts=" in repr(budget)


def test_the_budget_says_when_expiry_frees_a_retry() -> None:
    budget = RetryBudget(RetryPolicy(budget_floor=2, budget_ratio=0.0, budget_window=64.0))
    assert budget.wait(0.0) == 0.0
    assert budget.try_spend(0.0)
    assert budget.try_spend(10.0)
    assert budget.wait(20.0) == 44.0  # the retry spent at 0 leaves the window at 64
    assert not budget.try_spend(63.9)
    assert budget.try_spend(64.0)
    assert budget.wait(64.0) == 10.0  # now the one spent at 10, at 74


def test_a_budget_only_new_traffic_could_refill_never_frees_one_by_waiting() -> None:
    budget = RetryBudget(RetryPolicy(budget_floor=0, budget_ratio=0.5, budget_window=60.0))
    budget.record_attempt(0.0)
    budget.record_attempt(0.0)
    assert budget.try_spend(1.0)
    assert budget.wait(2.0) == math.inf  # expiry takes the attempts that earned it too


def test_expiring_an_old_retry_frees_one_while_the_new_attempts_stay() -> None:
    budget = RetryBudget(RetryPolicy(budget_floor=1, budget_ratio=0.5, budget_window=64.0))
    assert budget.try_spend(0.0)  # the floor's one
    budget.record_attempt(30.0)
    budget.record_attempt(30.0)
    assert budget.try_spend(30.0)  # earned by the two attempts
    assert budget.wait(31.0) == 33.0  # at 64 the retry of 0 goes; the attempts of 30 stay
