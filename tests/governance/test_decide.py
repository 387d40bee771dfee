"""The retry / resume / restart / finish / fail verdict, from tables: no event loop, no clock."""

from __future__ import annotations

import math
import random
from typing import Any

import pytest

from kimi_actors.errors import (
    AuthenticationError,
    BadRequestError,
    ConnectionFailedError,
    EngineOverloadedError,
    IncompleteStreamError,
    RateLimitError,
    ServerError,
)
from kimi_actors.governance.decide import AttemptState, Step, Verdict, decide
from kimi_actors.policy import ResumeMode, ResumePolicy, RetryPolicy
from kimi_actors.protocol.classify import Outcome, classify_error

RETRY = RetryPolicy(max_attempts=4, base=1.0, cap=8.0)
RESUME = ResumePolicy(max_resumes=2)

OVERLOADED = classify_error(EngineOverloadedError("overloaded", status=429))
SERVER = classify_error(ServerError("internal", status=500))
RATE_LIMITED = classify_error(RateLimitError("max RPM: 3", status=429, retry_after=7.0))
DROPPED = classify_error(ConnectionFailedError("reset"), mid_stream=True)
INCOMPLETE = classify_error(IncompleteStreamError("no [DONE]"))
BAD = classify_error(BadRequestError("bad", status=400))
FATAL = classify_error(AuthenticationError("nope", status=401))


def verdict(outcome: Outcome, *, budget: float = 10.0, deadline: float | None = None,
            resume: ResumePolicy = RESUME, seed: int = 0, budget_wait: float = math.inf,
            **state: Any) -> Verdict:
    state.setdefault("attempt", 1)
    state.setdefault("failures", 1)
    return decide(outcome, AttemptState(**state), retry=RETRY, resume=resume,
                  budget_available=budget, rng=random.Random(seed), now=100.0,
                  deadline=deadline, budget_wait=budget_wait)


@pytest.mark.parametrize(("outcome", "state", "budget", "step", "reason"), [
    # what cannot succeed fails as it is, delivered or not
    (BAD, {}, 10.0, Step.FAIL, None),
    (FATAL, {}, 10.0, Step.FAIL, None),
    (BAD, {"delivered": True, "resumable": True}, 10.0, Step.FAIL, None),
    # nothing delivered: an ordinary retry, bounded by attempts and the budget
    (SERVER, {}, 10.0, Step.RETRY, None),
    (SERVER, {"attempt": 3}, 10.0, Step.RETRY, None),
    (SERVER, {"attempt": 4}, 10.0, Step.FAIL, "gave up after 4 attempts"),
    (SERVER, {}, 0.5, Step.FAIL, "not retried: the retry budget is spent"),
    # overload is paced by the working concurrency: neither attempts nor the budget bound it
    (OVERLOADED, {"attempt": 4}, 10.0, Step.RETRY, None),
    (OVERLOADED, {"attempt": 40}, 0.0, Step.RETRY, None),
    # a paced rate limit does not need the budget, but the attempts still bound it
    (RATE_LIMITED, {}, 0.0, Step.RETRY, None),
    (RATE_LIMITED, {"attempt": 4}, 0.0, Step.FAIL, "gave up after 4 attempts"),
    # delivered: resume, restart, finish locally, or give up; never the budget
    (DROPPED, {"delivered": True, "resumable": True}, 0.0, Step.RESUME, None),
    (DROPPED, {"delivered": True, "resumable": False}, 0.0, Step.RESTART, None),
    (INCOMPLETE, {"delivered": True, "resumable": True, "recoveries": 1}, 0.0, Step.RESUME,
     None),
    (DROPPED, {"delivered": True, "resumable": True, "recoveries": 2}, 10.0, Step.FAIL,
     "gave up after 2 stream recoveries"),
    (DROPPED, {"delivered": True, "resumable": True, "allowance_spent": True}, 10.0,
     Step.FINISH_LOCALLY, None),
    (DROPPED, {"delivered": True, "attempt": 9}, 0.0, Step.RESTART, None),
])
def test_the_verdict_table(outcome: Outcome, state: dict[str, Any], budget: float, step: Step,
                           reason: str | None) -> None:
    result = verdict(outcome, budget=budget, **state)
    assert result.step is step
    if reason is None:
        assert result.reason is None
    else:
        assert result.reason is not None
        assert result.reason.startswith(reason)


def test_only_budgeted_retries_spend_the_budget() -> None:
    assert verdict(SERVER).spend_budget
    assert not verdict(OVERLOADED).spend_budget
    assert not verdict(RATE_LIMITED).spend_budget
    assert not verdict(DROPPED, delivered=True, resumable=True).spend_budget


@pytest.mark.parametrize("mode", [ResumeMode.RESUME, ResumeMode.RESTART, ResumeMode.FAIL])
def test_the_resume_mode_decides_a_delivered_stream(mode: ResumeMode) -> None:
    result = verdict(DROPPED, resume=ResumePolicy(mode=mode), delivered=True, resumable=True)
    assert result.step is {ResumeMode.RESUME: Step.RESUME, ResumeMode.RESTART: Step.RESTART,
                           ResumeMode.FAIL: Step.FAIL}[mode]


def test_the_server_named_wait_wins_over_the_backoff() -> None:
    result = verdict(RATE_LIMITED, failures=1)
    assert 7.0 <= result.delay <= 7.7


def test_the_backoff_grows_with_failures_and_stays_under_the_cap() -> None:
    first = [verdict(OVERLOADED, failures=1, seed=seed).delay for seed in range(200)]
    third = [verdict(OVERLOADED, failures=3, seed=seed).delay for seed in range(200)]
    tenth = [verdict(OVERLOADED, failures=10, seed=seed).delay for seed in range(200)]
    assert max(first) <= 1.0
    assert max(third) <= 4.0
    assert max(third) > 1.0
    assert max(tenth) <= 8.0
    assert max(tenth) > 4.0


def test_a_wait_past_the_deadline_fails_instead() -> None:
    result = verdict(RATE_LIMITED, deadline=105.0)
    assert result.step is Step.FAIL
    assert result.reason is not None
    assert "deadline" in result.reason
    assert verdict(RATE_LIMITED, deadline=110.0).step is Step.RETRY
    stream = verdict(DROPPED, delivered=True, resumable=True, failures=10, deadline=100.0)
    assert stream.step is Step.FAIL


def test_the_attempt_state_is_validated() -> None:
    with pytest.raises(ValueError, match="attempt >= 1"):
        AttemptState(attempt=0, failures=1)


@pytest.mark.parametrize("state", [{"attempt": 1, "failures": 0},
                                   {"attempt": 1, "failures": 1, "recoveries": -1},
                                   {"attempt": 0, "failures": 1}])
def test_every_field_of_the_attempt_state_is_checked(state: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="AttemptState needs"):
        AttemptState(**state)


def test_one_retry_left_in_the_budget_is_enough() -> None:
    assert verdict(SERVER, budget=1.0).step is Step.RETRY
    spent = verdict(SERVER, budget=0.99)
    assert spent.step is Step.FAIL
    assert spent.reason == ("not retried: the retry budget is spent (too many retries in the "
                            "last window)")


def test_a_spent_budget_that_frees_a_retry_later_makes_the_retry_wait_for_it() -> None:
    slowed = verdict(SERVER, budget=0.0, budget_wait=30.0)
    assert slowed.step is Step.RETRY
    assert slowed.spend_budget
    assert slowed.delay == 30.0  # the backoff (at most 1 s here) is shorter
    named = verdict(RATE_LIMITED, budget=0.0, budget_wait=30.0)
    assert 7.0 <= named.delay <= 7.7  # a paced retry needs no budget: no wait for it
    late = verdict(SERVER, budget=0.0, budget_wait=30.0, deadline=120.0)
    assert late.step is Step.FAIL
    assert late.reason == ("not retried: the next attempt would start after this request's "
                           "deadline (the retry budget is spent until then; wait 30.0 s)")


def test_a_recovery_spends_nothing_and_says_so_exactly() -> None:
    result = verdict(DROPPED, delivered=True, resumable=True)
    assert result.spend_budget is False
    assert verdict(RATE_LIMITED).spend_budget is False
    assert verdict(SERVER).spend_budget is True


def test_a_retry_that_starts_exactly_at_the_deadline_is_still_made() -> None:
    delay = verdict(OVERLOADED, seed=3).delay
    assert verdict(OVERLOADED, seed=3, deadline=100.0 + delay).step is Step.RETRY
    late = verdict(OVERLOADED, seed=3, deadline=100.0 + delay - 1e-9)
    assert late.step is Step.FAIL
    assert late.reason == (f"not retried: the next attempt would start after this request's "
                           f"deadline (wait {delay:.1f} s)")
