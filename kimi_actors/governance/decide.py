"""What to do after an attempt failed: the one pure verdict both actors apply.

The choice among retry, resume, restart, finish locally and fail used to sit inside the async
actors, spread over a retry helper and a 76-line loop. It is here now, a function of the
outcome, the attempt's state, the policies, the budget left, the deadline and ``now`` (and an
injected ``random.Random`` for the jitter), tested from tables without an event loop. The
actors only apply what it returns.

The rules, in order:

1. An outcome that is not retryable fails as it is (a 400, a run-fatal 401).
2. Nothing reached the consumer yet (every non-stream call, and a stream before its first
   delta): an ordinary retry, bounded by ``RetryPolicy.max_attempts`` (unless the error's
   retries are paced instead: ``counts_attempts``). A retry that draws on the retry budget
   (``spends_budget``) when the budget is spent waits until it has one again
   (``budget_wait``): an exhausted budget slows retries down, it does not fail them.
3. A stream that delivered text: ``ResumeMode.FAIL`` fails; after ``max_resumes`` recoveries
   it fails; when every token its budget allows has arrived, it finishes locally; else it
   resumes through Partial Mode when that can continue it, and restarts otherwise.
   Recoveries do not draw on the retry budget: they finish work already admitted and, in
   Partial Mode, cost only the remaining tokens.
4. Any wait that would end after the caller's deadline fails instead.
"""

from __future__ import annotations

import enum
import math
import random
from dataclasses import dataclass

from ..policy import ResumeMode, ResumePolicy, RetryPolicy
from ..protocol.classify import Action, Outcome
from .backoff import retry_delay

__all__ = ["AttemptState", "Step", "Verdict", "decide"]


class Step(enum.StrEnum):
    """What the actor does next."""

    #: Send the same request again after ``Verdict.delay``.
    RETRY = "retry"
    #: Continue the stream through Partial Mode after ``Verdict.delay``.
    RESUME = "resume"
    #: Start the stream over (the consumer gets a ``restart`` delta) after ``Verdict.delay``.
    RESTART = "restart"
    #: End the stream here: every token the budget allows has arrived.
    FINISH_LOCALLY = "finish_locally"
    #: Raise the outcome's error (with ``Verdict.reason`` as a note when there is one).
    FAIL = "fail"


@dataclass(frozen=True, slots=True, kw_only=True)
class AttemptState:
    """Where one request stands after a failed attempt.

    ``attempt`` counts the attempts that delivered nothing in a row (the first is 1);
    ``failures`` the consecutive failures that drive the backoff; ``recoveries`` the stream
    recoveries so far. ``delivered`` says text reached the consumer; ``resumable`` that
    Partial Mode can continue it; ``allowance_spent`` that every token of its budget arrived.
    """

    attempt: int
    failures: int
    delivered: bool = False
    recoveries: int = 0
    resumable: bool = False
    allowance_spent: bool = False

    def __post_init__(self) -> None:
        if self.attempt < 1 or self.failures < 1 or self.recoveries < 0:
            raise ValueError(f"AttemptState needs attempt >= 1, failures >= 1 and "
                             f"recoveries >= 0, got {self!r}")


@dataclass(frozen=True, slots=True, kw_only=True)
class Verdict:
    """The decision. ``spend_budget`` tells the runtime to spend one retry of the budget."""

    step: Step
    delay: float = 0.0
    reason: str | None = None
    spend_budget: bool = False


def _fail(reason: str | None = None) -> Verdict:
    return Verdict(step=Step.FAIL, reason=reason)


def decide(outcome: Outcome, state: AttemptState, *, retry: RetryPolicy, resume: ResumePolicy,
           budget_available: float, rng: random.Random, now: float,
           deadline: float | None, budget_wait: float = math.inf) -> Verdict:
    """The verdict after a failed attempt; see the module docstring for the rules."""
    error = outcome.error
    if outcome.action is not Action.RETRY or error is None:
        return _fail()
    spend = False
    wait = 0.0
    if not state.delivered:
        if error.counts_attempts and state.attempt >= retry.max_attempts:
            return _fail(f"gave up after {state.attempt} attempts")
        spend = error.spends_budget
        if spend and budget_available < 1:
            if math.isinf(budget_wait):
                return _fail("not retried: the retry budget is spent (too many retries in "
                             "the last window)")
            wait = budget_wait
        step = Step.RETRY
    else:
        if resume.mode is ResumeMode.FAIL:
            return _fail()
        if state.recoveries >= resume.max_resumes:
            return _fail(f"gave up after {state.recoveries} stream recoveries")
        if state.allowance_spent:
            return Verdict(step=Step.FINISH_LOCALLY)
        resumes = resume.mode is ResumeMode.RESUME and state.resumable
        step = Step.RESUME if resumes else Step.RESTART
    delay = max(wait, retry_delay(state.failures, retry, rng, outcome.retry_after))
    if deadline is not None and now + delay > deadline:
        cause = "the retry budget is spent until then; " if wait >= delay else ""
        return _fail(f"not retried: the next attempt would start after this request's "
                     f"deadline ({cause}wait {delay:.1f} s)")
    return Verdict(step=step, delay=delay, spend_budget=spend)
