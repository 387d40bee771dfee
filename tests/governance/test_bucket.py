"""RollingWindow and Level: exact rolling-window admission, without an event loop."""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kimi_actors.governance.bucket import Level, Reservation, RollingWindow

WINDOW = 60.0


# ---------------------------------------------------------------- basics


def test_admits_up_to_the_limit_at_once_then_refuses() -> None:
    window = RollingWindow(10, WINDOW)
    for _ in range(10):
        assert window.reserve(1, 0.0) is not None
    assert window.used(0.0) == 10
    assert window.reserve(1, 0.0) is None
    assert window.used(0.0) == 10


def test_a_single_admission_of_the_whole_limit_fits() -> None:
    window = RollingWindow(5, WINDOW)
    assert window.reserve(5, 3.0) is not None
    assert window.reserve(1, 3.0) is None


def test_delay_is_exact_at_the_boundaries() -> None:
    window = RollingWindow(10, WINDOW)
    assert window.reserve(10, 0.0) is not None
    assert window.delay(1, 10.0) == 50.0
    assert window.delay(1, 59.0) == 1.0
    # (t - window, t] is half-open: the admission at 0 still counts just before 60...
    before = math.nextafter(60.0, 0.0)
    assert window.used(before) == 10
    assert window.delay(1, before) > 0
    assert window.reserve(1, before) is None
    # ...and not at 60 itself.
    assert window.delay(1, 60.0) == 0.0
    assert window.used(60.0) == 0
    assert window.reserve(10, 60.0) is not None


def test_delay_walks_the_log_to_find_enough_expiring_units() -> None:
    window = RollingWindow(10, WINDOW)
    assert window.reserve(3, 0.0) is not None
    assert window.reserve(3, 10.0) is not None
    assert window.reserve(4, 20.0) is not None
    assert window.delay(2, 25.0) == 35.0  # the 3 from t=0 expire at 60
    assert window.delay(5, 25.0) == 45.0  # needs the 3 from t=10 too, free at 70
    assert window.delay(10, 25.0) == 55.0  # needs everything, free at 80
    assert window.delay(0, 25.0) == 0.0


def test_units_expire_one_window_after_admission() -> None:
    window = RollingWindow(4, WINDOW)
    assert window.reserve(2, 0.0) is not None
    assert window.reserve(2, 30.0) is not None
    assert window.used(59.0) == 4
    assert window.used(60.0) == 2
    assert window.reserve(2, 60.0) is not None
    assert window.reserve(1, 60.0) is None
    assert window.used(90.0) == 2


def test_amount_over_the_limit_can_never_fit() -> None:
    window = RollingWindow(10, WINDOW)
    with pytest.raises(ValueError, match=r"amount 11 .* limit 10"):
        window.delay(11, 0.0)
    with pytest.raises(ValueError, match=r"amount 11 .* limit 10"):
        window.reserve(11, 0.0)


@pytest.mark.parametrize("amount", [-1, 1.5, True, "3"])
def test_amounts_must_be_non_negative_ints(amount: object) -> None:
    window = RollingWindow(10, WINDOW)
    with pytest.raises(ValueError, match="amount must be an int"):
        window.reserve(amount, 0.0)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("limit", "window", "slots", "message"),
    [
        (0, 60.0, 4, "limit must be an int >= 1"),
        (2.5, 60.0, 4, "limit must be an int >= 1"),
        (True, 60.0, 4, "limit must be an int >= 1"),
        (5, 0.0, 4, "window must be a positive finite"),
        (5, math.inf, 4, "window must be a positive finite"),
        (5, "60", 4, "window must be a positive finite"),
        (5, 60.0, 0, "slots must be an int >= 1"),
        (5, 60.0, 2.0, "slots must be an int >= 1"),
    ],
)
def test_constructor_validates(limit: object, window: object, slots: object,
                               message: str) -> None:
    with pytest.raises(ValueError, match=message):
        RollingWindow(limit, window, slots=slots)  # type: ignore[arg-type]


def test_properties_and_repr() -> None:
    window = RollingWindow(7, 30)
    assert window.limit == 7
    assert window.window == 30.0
    reservation = window.reserve(3, 1.0)
    assert reservation is not None
    assert reservation.amount == 3
    assert "amount=3" in repr(reservation)
    assert "limit=7" in repr(window)
    assert "counted=3" in repr(window)


# ---------------------------------------------------------------- set_limit


def test_set_limit_up_admits_more_at_once() -> None:
    window = RollingWindow(5, WINDOW)
    assert window.reserve(5, 0.0) is not None
    assert window.reserve(1, 1.0) is None
    window.set_limit(8)
    assert window.limit == 8
    assert window.reserve(3, 1.0) is not None
    assert window.reserve(1, 1.0) is None


def test_set_limit_down_keeps_history_and_waits_for_expiry() -> None:
    window = RollingWindow(10, WINDOW)
    assert window.reserve(6, 0.0) is not None
    assert window.reserve(2, 30.0) is not None
    window.set_limit(4)
    assert window.used(31.0) == 8
    assert window.reserve(1, 31.0) is None
    # 8 counted against 4: the 6 from t=0 must go before 1 more fits (8 - 6 + 1 <= 4)
    assert window.delay(1, 31.0) == 29.0
    assert window.reserve(2, 60.0) is not None
    with pytest.raises(ValueError, match="limit must be an int >= 1"):
        window.set_limit(0)


# ---------------------------------------------------------------- refund / charge


def test_refund_all_gives_the_units_back() -> None:
    window = RollingWindow(10, WINDOW)
    reservation = window.reserve(10, 0.0)
    assert reservation is not None
    window.refund(reservation)
    assert window.used(1.0) == 0
    assert reservation.amount == 0
    assert window.reserve(10, 1.0) is not None


def test_partial_refund_and_clamping() -> None:
    window = RollingWindow(10, WINDOW)
    reservation = window.reserve(6, 0.0)
    assert reservation is not None
    window.refund(reservation, 2)
    assert window.used(0.0) == 4
    assert reservation.amount == 4
    window.refund(reservation, 100)  # more than held: clamped, never negative
    assert window.used(0.0) == 0
    with pytest.raises(ValueError, match="amount must be an int >= 0"):
        window.refund(reservation, -1)
    assert reservation.amount == 0
    window.refund(reservation)  # nothing left: harmless
    assert window.used(0.0) == 0


def test_refund_leaves_coalesced_neighbours_alone() -> None:
    window = RollingWindow(10, WINDOW)
    first = window.reserve(3, 0.0)
    second = window.reserve(4, 0.0)  # same slot as first
    assert first is not None
    assert second is not None
    window.refund(first, 5)
    assert window.used(0.0) == 4
    assert second.amount == 4


def test_refund_of_an_expired_reservation_is_ignored() -> None:
    window = RollingWindow(10, WINDOW)
    old = window.reserve(5, 0.0)
    assert old is not None
    assert window.reserve(5, 60.0) is not None  # expires the first slot
    window.refund(old)
    window.refund(old, 3)
    assert window.used(60.0) == 5
    assert window.reserve(1, 60.0) is not None
    assert window.reserve(5, 60.0) is None


def test_charge_counts_from_now_and_can_go_into_debt() -> None:
    window = RollingWindow(10, WINDOW)
    reservation = window.reserve(8, 0.0)
    assert reservation is not None
    window.charge(reservation, 5, 20.0)  # the real usage was 13
    assert reservation.amount == 13
    assert window.used(20.0) == 13
    assert window.reserve(1, 20.0) is None
    # the 8 expire at 60 (13 - 8 = 5 counted), the charged 5 at 80
    assert window.delay(5, 20.0) == 40.0
    assert window.delay(6, 20.0) == 60.0
    assert window.used(60.0) == 5
    assert window.used(80.0) == 0


def test_charge_joins_the_slot_of_its_reservation_when_close_in_time() -> None:
    window = RollingWindow(10, WINDOW)
    reservation = window.reserve(2, 0.0)
    assert reservation is not None
    window.charge(reservation, 3, 0.0)
    window.charge(reservation, 0, 0.0)
    assert reservation.amount == 5
    window.refund(reservation)
    assert window.used(0.0) == 0


def test_refund_after_charge_takes_the_newest_units_first() -> None:
    window = RollingWindow(10, WINDOW)
    reservation = window.reserve(4, 0.0)
    assert reservation is not None
    window.charge(reservation, 3, 30.0)
    window.refund(reservation, 5)  # 3 charged at 30, then 2 of the 4 from 0
    assert window.used(30.0) == 2
    assert window.used(60.0) == 0
    # once the admission expired only the charged part could be refunded, and it is gone
    window.refund(reservation)
    assert window.used(60.0) == 0


def test_refund_after_the_admission_expired_still_refunds_a_later_charge() -> None:
    window = RollingWindow(10, WINDOW)
    reservation = window.reserve(4, 0.0)
    assert reservation is not None
    window.charge(reservation, 3, 30.0)
    assert window.used(61.0) == 3
    window.refund(reservation)
    assert window.used(61.0) == 0


def test_reservations_belong_to_their_window() -> None:
    first, second = RollingWindow(10, WINDOW), RollingWindow(10, WINDOW)
    reservation = first.reserve(1, 0.0)
    assert reservation is not None
    with pytest.raises(ValueError, match="another RollingWindow"):
        second.refund(reservation)
    with pytest.raises(ValueError, match="another RollingWindow"):
        second.refund(reservation, 1)
    with pytest.raises(ValueError, match="another RollingWindow"):
        second.charge(reservation, 1, 0.0)
    with pytest.raises(ValueError, match="amount must be an int"):
        first.charge(reservation, -1, 0.0)
    with pytest.raises(ValueError, match="amount must be an int"):
        first.refund(reservation, -1)


# ---------------------------------------------------------------- pause


def test_pause_until_holds_every_admission_and_keeps_the_latest() -> None:
    window = RollingWindow(10, WINDOW)
    assert window.paused_until() == -math.inf
    window.pause_until(5.0)
    window.pause_until(3.0)  # an earlier deadline does not shorten the pause
    assert window.paused_until() == 5.0
    assert window.reserve(1, 4.9) is None
    assert window.delay(1, 2.0) == 3.0
    assert window.reserve(1, 5.0) is not None


def test_pause_and_expiry_combine_to_the_later_of_both() -> None:
    window = RollingWindow(2, WINDOW)
    assert window.reserve(2, 0.0) is not None
    window.pause_until(10.0)
    assert window.delay(1, 1.0) == 59.0
    window.pause_until(100.0)
    assert window.delay(1, 1.0) == 99.0
    with pytest.raises(ValueError, match="nan"):
        window.pause_until(math.nan)


# ---------------------------------------------------------------- memory


def test_memory_is_bounded_by_slots() -> None:
    slots = 16
    window = RollingWindow(1_000_000, WINDOW, slots=slots)
    now = 0.0
    longest = 0
    for _ in range(20_000):
        now += 0.0137
        assert window.reserve(1, now) is not None
        longest = max(longest, len(window._slots))
    assert longest <= slots + 1
    assert window.used(now) > 0


def test_coalescing_never_counts_units_shorter_than_exact() -> None:
    window = RollingWindow(10, WINDOW, slots=4)  # slots span at most 15 s
    assert window.reserve(5, 0.0) is not None
    assert window.reserve(5, 10.0) is not None  # joins the slot, which now expires at 70
    assert len(window._slots) == 1
    assert window.used(60.0) == 10  # exact would be 5: never fewer than exact
    assert window.used(70.0) == 0


def test_a_slot_spans_at_most_window_over_slots() -> None:
    window = RollingWindow(100, WINDOW, slots=4)
    for now in (0.0, 10.0, 15.0, 20.0, 34.0, 36.0):
        assert window.reserve(1, now) is not None
    # slots opened at 0 (0, 10, 15), 20 (20, 34) and 36: a trickle cannot extend one forever
    assert [slot.units for slot in window._slots] == [3, 2, 1]
    assert window.used(75.0) == 3


def test_an_earlier_now_joins_the_newest_slot() -> None:
    window = RollingWindow(10, WINDOW, slots=4)
    assert window.reserve(2, 0.0) is not None
    assert window.reserve(2, 20.0) is not None
    assert window.reserve(1, 3.0) is not None  # a caller that read the clock a bit earlier
    assert window.used(60.0) == 3  # counted with the slot of t=20: later, so conservative
    assert window.used(80.0) == 0


# ---------------------------------------------------------------- properties


def _violations(events: list[tuple[float, int]], limit: int, span: float) -> list[float]:
    """Times t of admitted events where the units admitted in (t - span, t] exceed limit."""
    bad = []
    live: deque[tuple[float, int]] = deque()
    total = 0
    for time, amount in events:
        live.append((time, amount))
        total += amount
        while live and live[0][0] + span <= time:
            total -= live.popleft()[1]
        if total > limit:
            bad.append(time)
    return bad


steps = st.lists(
    st.tuples(
        st.floats(min_value=0.0, max_value=30.0, allow_nan=False),  # time step
        st.integers(min_value=0, max_value=12),  # amount
    ),
    min_size=1,
    max_size=120,
)
limits = st.integers(min_value=1, max_value=12)
slot_counts = st.sampled_from([1, 3, 16, 1024])


@settings(max_examples=200, deadline=None)
@given(limit=limits, slots=slot_counts, plan=steps)
def test_reserve_never_admits_over_the_limit_in_any_rolling_window(
    limit: int, slots: int, plan: list[tuple[float, int]]
) -> None:
    window = RollingWindow(limit, 10.0, slots=slots)
    now = 0.0
    admitted: list[tuple[float, int]] = []
    for step, amount in plan:
        now += step
        amount = min(amount, limit)
        if window.reserve(amount, now) is not None:
            admitted.append((now, amount))
    assert _violations(admitted, limit, 10.0) == []


@settings(max_examples=200, deadline=None)
@given(limit=limits, slots=slot_counts, plan=steps)
def test_waiting_delay_then_reserving_never_exceeds_the_limit(
    limit: int, slots: int, plan: list[tuple[float, int]]
) -> None:
    window = RollingWindow(limit, 10.0, slots=slots)
    now = 0.0
    admitted: list[tuple[float, int]] = []
    for step, amount in plan:
        now += step
        amount = min(amount, limit)
        now += window.delay(amount, now)
        assert window.reserve(amount, now) is not None, "delay() was an underestimate"
        admitted.append((now, amount))
    assert _violations(admitted, limit, 10.0) == []


@settings(max_examples=200, deadline=None)
@given(limit=limits, slots=slot_counts, plan=steps, pause=st.floats(0.0, 30.0))
def test_fits_says_exactly_when_the_delay_is_zero(
    limit: int, slots: int, plan: list[tuple[float, int]], pause: float
) -> None:
    window = RollingWindow(limit, 10.0, slots=slots)
    window.pause_until(pause)
    now = 0.0
    for step, amount in plan:
        now += step
        amount = min(amount, limit)
        assert window.fits(amount, now) is (window.delay(amount, now) == 0)
        window.reserve(amount, now)


refund_plans = st.lists(
    st.tuples(
        st.floats(min_value=0.0, max_value=30.0, allow_nan=False),
        st.integers(min_value=0, max_value=12),
        st.integers(min_value=0, max_value=12),  # refund this much of an earlier reservation
        st.integers(min_value=0, max_value=200),  # which earlier reservation
    ),
    min_size=1,
    max_size=120,
)


@dataclass
class _Admitted:
    time: float
    held: int
    reservation: Reservation


@settings(max_examples=200, deadline=None)
@given(limit=limits, slots=slot_counts, plan=refund_plans)
def test_with_refunds_net_units_in_any_rolling_window_stay_within_the_limit(
    limit: int, slots: int, plan: list[tuple[float, int, int, int]]
) -> None:
    """With refunds the guarantee is about what is still held: at every admission at t, the
    units admitted in (t - window, t] minus what was refunded of them fit in the limit."""
    span = 10.0
    window = RollingWindow(limit, span, slots=slots)
    now = 0.0
    admitted: list[_Admitted] = []
    for step, amount, refund, pick in plan:
        now += step
        if admitted:
            entry = admitted[pick % len(admitted)]
            before = entry.reservation.amount
            window.refund(entry.reservation, refund)
            if entry.time + span > now:  # live: gives back what was asked, clamped at zero
                assert entry.reservation.amount == max(0, before - refund)
            entry.held = entry.reservation.amount
        amount = min(amount, limit)
        now += window.delay(amount, now)
        reservation = window.reserve(amount, now)
        assert reservation is not None
        admitted.append(_Admitted(now, amount, reservation))
        assert sum(e.held for e in admitted if e.time + span > now) <= limit


@settings(max_examples=200, deadline=None)
@given(
    limit=limits,
    slots=slot_counts,
    history=st.lists(st.tuples(st.floats(min_value=0.0, max_value=8.0, allow_nan=False),
                               st.integers(min_value=0, max_value=12)), max_size=40),
    amount=st.integers(min_value=0, max_value=12),
    pause=st.floats(min_value=0.0, max_value=20.0, allow_nan=False),
    probe=st.floats(min_value=0.0, max_value=30.0, allow_nan=False),
)
def test_delay_is_never_an_underestimate_nor_early(
    limit: int, slots: int, history: list[tuple[float, int]], amount: int, pause: float,
    probe: float,
) -> None:
    window = RollingWindow(limit, 10.0, slots=slots)
    now = 1000.0 + probe / 7  # a start far from 0: floating point rounding matters there
    for step, units in history:
        now += step
        window.reserve(min(units, limit), now)
    window.pause_until(now + pause)
    amount = min(amount, limit)
    wait = window.delay(amount, now)
    assert wait >= 0.0
    if wait > 1e-6:  # and not longer than needed, beyond rounding
        assert window.reserve(amount, now + wait - 1e-6) is None
    assert window.reserve(amount, now + wait) is not None


@settings(max_examples=25, deadline=None)
@given(
    per_unit=st.integers(min_value=1, max_value=25),
    unit=st.integers(min_value=1, max_value=4),
    slots=st.sampled_from([64, 1024]),
    starts=st.lists(st.floats(min_value=0.0, max_value=10.0), min_size=1, max_size=60),
)
def test_throughput_under_continuous_demand_is_close_to_the_limit(
    per_unit: int, unit: int, slots: int, starts: list[float]
) -> None:
    """Coarsening holds a unit at most window/slots longer than exact, so continuous demand
    gets nearly the whole limit: here >= 95 % over 40 windows, after a ragged first window."""
    span = 10.0
    limit = per_unit * unit
    window = RollingWindow(limit, span, slots=slots)
    admitted = 0
    for start in sorted(starts):
        if window.reserve(unit, start) is not None:
            admitted += unit
    now = max(starts)
    end = 40 * span
    while True:
        now += window.delay(unit, now)
        if now >= end:
            break
        assert window.reserve(unit, now) is not None
        admitted += unit
    assert admitted >= 0.95 * limit * end / span


def test_coarse_slots_cost_throughput_that_fine_slots_do_not() -> None:
    """The measured cost of coalescing: the same ragged demand through 1 slot and 1024."""

    def run(slots: int) -> int:
        window = RollingWindow(100, 10.0, slots=slots)
        now, admitted = 0.0, 0
        while True:
            now += window.delay(1, now)
            if now >= 400.0:
                return admitted
            assert window.reserve(1, now) is not None
            admitted += 1
            now += 0.05

    assert run(1) < 0.7 * 4000 <= 0.95 * 4000 <= run(1024)


# ---------------------------------------------------------------- Level


def test_level_caps_held_units() -> None:
    level = Level(2)
    assert level.limit == 2
    assert level.try_acquire()
    assert level.try_acquire()
    assert not level.try_acquire()
    assert level.held == 2
    level.release()
    assert level.try_acquire()
    assert not level.try_acquire(1)
    level.release(2)
    assert level.held == 0
    assert level.try_acquire(2)
    assert "held=2" in repr(level)


def test_level_unlimited_and_set_limit() -> None:
    level = Level(None)
    assert level.try_acquire(10_000)
    level.set_limit(3)
    assert level.limit == 3
    assert not level.try_acquire()  # 10_000 held over a cap of 3: wait for releases
    level.release(9_998)
    assert level.try_acquire()
    level.set_limit(None)
    assert level.try_acquire(5)
    with pytest.raises(ValueError, match="limit must be an int >= 1"):
        level.set_limit(0)
    with pytest.raises(ValueError, match="limit must be an int >= 1"):
        Level(-1)


def test_level_release_more_than_held_raises() -> None:
    level = Level(5)
    assert level.try_acquire(2)
    with pytest.raises(ValueError, match="cannot release 3: only 2 held"):
        level.release(3)
    assert level.held == 2
    with pytest.raises(ValueError, match="amount must be an int"):
        level.try_acquire(-1)


@settings(max_examples=200)
@given(st.lists(st.tuples(st.integers(1, 5), st.floats(0.0, 0.3), st.floats(0.0, 0.05),
                          st.booleans()), min_size=1, max_size=40))
def test_restamp_counts_exactly_as_a_refund_and_a_charge_would(
        steps: list[tuple[int, float, float, bool]]) -> None:
    """restamp's shortcut (a request sent within its admission's slot) against the long way
    round through the public refund and charge: the same count at every moment after."""
    fast, slow = RollingWindow(50, 1.0, slots=8), RollingWindow(50, 1.0, slots=8)
    now = 0.0
    for amount, gap, lag, partly_refunded in steps:
        now += gap
        pair = fast.reserve(amount, now), slow.reserve(amount, now)
        if pair[0] is None or pair[1] is None:
            assert pair[0] is pair[1]
            continue
        if partly_refunded and amount > 1:
            fast.refund(pair[0], 1)
            slow.refund(pair[1], 1)
        fast.restamp(pair[0], now + lag)
        before = slow.used(now + lag)
        slow.refund(pair[1])
        moved = before - slow.used(now + lag)
        if moved:
            slow.charge(pair[1], moved, now + lag)
        now += lag
        for later in (0.0, 0.2, 0.5, 0.9, 0.99, 1.0, 1.01, 1.2):
            assert fast.used(now + later) == slow.used(now + later)


def test_restamp_moves_live_units_to_now_and_never_revives_expired_ones() -> None:
    window = RollingWindow(10, 5.0)
    reservation = window.reserve(4, 0.0)
    assert reservation is not None
    window.restamp(reservation, 2.0)
    assert window.used(4.9) == 4
    assert window.used(6.9) == 4  # counted from 2.0 now, not from 0.0
    assert window.used(7.0) == 0
    window.restamp(reservation, 8.0)  # already expired: nothing comes back
    assert window.used(8.0) == 0
    other = RollingWindow(10, 5.0)
    with pytest.raises(ValueError, match="another RollingWindow"):
        other.restamp(reservation, 1.0)
