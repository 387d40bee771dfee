"""The push-back state machines: AIMD on overload and the rate learned from vague 429s."""

from __future__ import annotations

import pytest

from kimi_actors import AdaptPolicy
from kimi_actors.governance.adapt import ConcurrencyAdapter, RateLearner


def test_slow_start_doubles_only_when_the_limit_was_reached_and_the_ramp_passed() -> None:
    adapter = ConcurrencyAdapter(AdaptPolicy(start=4, ramp=1.0), ceiling=20)
    assert adapter.limit == 4
    assert adapter.ramp(3, 0.0) is None  # not reached: nothing to learn about the server
    assert adapter.limit == 4
    assert adapter.ramp(4, 0.0) is None
    assert adapter.limit == 8
    assert adapter.ramp(8, 0.5) == 1.0  # reached, but the ramp has not passed
    assert adapter.limit == 8
    adapter.ramp(8, 1.0)
    assert adapter.limit == 16
    adapter.ramp(16, 2.0)
    assert adapter.limit == 20  # never above the configured concurrency
    assert adapter.ramp(20, 9.0) is None
    assert adapter.limit == 20


def test_no_start_begins_at_the_configured_concurrency() -> None:
    assert ConcurrencyAdapter(AdaptPolicy(start=None), ceiling=200).limit == 200
    assert ConcurrencyAdapter(AdaptPolicy(start=64), ceiling=10).limit == 10
    assert ConcurrencyAdapter(AdaptPolicy(start=None), ceiling=None).limit is None


def test_one_overload_per_round_lowers_the_limit_once() -> None:
    adapter = ConcurrencyAdapter(AdaptPolicy(start=None, decrease=0.5), ceiling=100)
    first_round = [adapter.admitted() for _ in range(100)]
    assert adapter.overloaded(first_round[0], out=99) is False
    assert adapter.limit == 49  # half of what the server still holds of ours
    adapter.overloaded(first_round[1], out=98)  # the same round, overshooting by one more
    assert adapter.limit == 49
    assert adapter.decreases == 1
    for seq in first_round[2:60]:  # the server held far fewer: down to half of those
        adapter.overloaded(seq, out=100 - seq)
    assert adapter.limit == 20
    assert adapter.decreases == 1  # one round, one decrease
    adapter.overloaded(first_round[70], out=60)  # never raised by an overload
    assert adapter.limit == 20
    later = adapter.admitted()
    adapter.overloaded(later, out=16)  # admitted after the decrease: a new round
    assert adapter.limit == 8
    assert adapter.decreases == 2


def test_an_overload_ends_slow_start() -> None:
    adapter = ConcurrencyAdapter(AdaptPolicy(start=8, ramp=0.1, decrease=0.5), ceiling=100)
    seq = adapter.admitted()
    adapter.overloaded(seq, out=8)
    assert adapter.limit == 4
    assert adapter.ramp(4, 100.0) is None
    assert adapter.limit == 4


def test_successes_add_one_slot_per_round_up_to_the_ceiling() -> None:
    adapter = ConcurrencyAdapter(AdaptPolicy(start=None, decrease=0.5), ceiling=12)
    adapter.overloaded(adapter.admitted(), out=12)
    assert adapter.limit == 6
    for _ in range(6):
        adapter.succeeded()
    assert adapter.limit == 6  # each answer adds 1/limit: a round of six is not quite a slot
    adapter.succeeded()
    assert adapter.limit == 7
    for _ in range(1000):
        adapter.succeeded()
    assert adapter.limit == 12


def test_at_its_floor_an_overload_is_the_breakers_business() -> None:
    adapter = ConcurrencyAdapter(AdaptPolicy(start=None, decrease=0.5, floor=2), ceiling=8)
    while not adapter.at_floor:
        assert adapter.overloaded(adapter.admitted(), out=adapter.limit or 1) is False
    assert adapter.limit == 2
    assert adapter.overloaded(adapter.admitted(), out=2) is True
    assert adapter.limit == 2


@pytest.mark.parametrize(("field", "value"), [("start", 0), ("floor", 0), ("decrease", 1.0),
                                          ("decrease", 0.0), ("ramp", 0.0), ("start", True)])
def test_adapt_policy_rejects_nonsense(field: str, value: object) -> None:
    with pytest.raises(ValueError, match=f"AdaptPolicy.{field}"):
        AdaptPolicy(**{field: value})  # type: ignore[arg-type]


def test_a_vague_429_makes_what_the_server_accepted_the_limit() -> None:
    learner = RateLearner(window=10.0, ceiling=200)
    assert learner.limit is None
    for moment in range(30):
        learner.sent(moment * 0.5)  # 30 sends over 15 s: 19 within the window (5, 15]
    assert learner.refused(sent=14.5, now=15.0) == 18  # the refused one was not accepted
    assert learner.limit == 18
    assert learner.refused(sent=14.0, now=15.0) == 17


def test_the_learned_limit_is_probed_upward_once_a_window_by_growing_steps() -> None:
    learner = RateLearner(window=10.0, ceiling=40)
    for moment in range(20):
        learner.sent(float(moment) / 2)
    assert learner.refused(sent=9.5, now=10.0) == 18
    assert learner.probe(15.0) == 20.0  # not a window yet: the next probe is due at 20 s
    assert learner.limit == 18
    assert learner.probe(20.0) == 30.0
    assert learner.limit == 19
    learner.probe(30.0)
    assert learner.limit == 21
    learner.probe(40.0)
    assert learner.limit == 25
    learner.probe(50.0)
    assert learner.limit == 33
    assert learner.probe(60.0) is None  # 33 + 16 passes the configured 40: back to it
    assert learner.limit is None


def test_a_vague_429_after_probing_starts_the_steps_over() -> None:
    learner = RateLearner(window=1.0, ceiling=None)
    learner.sent(0.0)
    assert learner.refused(sent=0.0, now=0.5) == 1  # never below one
    for moment in (1.0, 2.0, 3.0):
        learner.probe(moment + 0.5)
    assert learner.limit == 1 + 1 + 2 + 4
    for moment in range(5):
        learner.sent(3.6 + moment * 0.05)
    assert learner.refused(sent=3.8, now=3.9) == 4
    learner.probe(4.9)
    assert learner.limit == 5


def test_sends_older_than_the_window_are_forgotten() -> None:
    learner = RateLearner(window=2.0, ceiling=None)
    for moment in range(100):
        learner.sent(moment * 0.1)
    assert learner.refused(sent=9.9, now=10.0) == 18  # the 19 sent in (8, 10], less one
    assert learner.probe(11.9) == 12.0
