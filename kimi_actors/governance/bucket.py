"""Exact rolling-window admission and a concurrency level: the pure maths under the governor.

Kimi does not say whether its minute is rolling or fixed. A client is safe under both only if
it never admits more than the limit in ANY rolling window of the limit's length; a token
bucket that starts full and refills at the full rate can admit almost twice the limit in one
rolling window. ``RollingWindow`` therefore keeps a log of admissions and counts exactly what
lies in ``(now - window, now]``.

The log stays bounded by coalescing admissions into at most about ``slots`` slots: a slot
collects the admissions of a span of at most ``window / slots`` seconds and expires one window
after its LATEST admission. Units are only ever held longer than exact, never shorter, so the
coarsening can delay an admission by at most ``window / slots`` but can never admit more than
the exact rule would.

Nothing here reads a clock: every call takes ``now`` (seconds on one monotonic scale).
"""

from __future__ import annotations

import math
from collections import deque

__all__ = ["Level", "Reservation", "RollingWindow"]


def _check_amount(amount: int, what: str = "amount") -> None:
    if type(amount) is int and amount >= 0:  # the common case first: bool is not int's type
        return
    if isinstance(amount, bool) or not isinstance(amount, int) or amount < 0:
        raise ValueError(f"{what} must be an int >= 0, got {amount!r}")


def _check_limit(owner: str, limit: int) -> None:
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        raise ValueError(f"{owner} limit must be an int >= 1, got {limit!r}")


def _after(now: float, target: float) -> float:
    """``target - now``, raised by an ulp or two where rounding would make ``now + delay`` fall
    short of ``target``: waiting exactly the returned delay always reaches ``target``."""
    if target <= now:
        return 0.0
    delay = target - now
    while now + delay < target:
        delay = math.nextafter(delay, math.inf)
    return delay


class _Slot:
    """Admissions coalesced together: ``opened`` bounds the slot's span, ``stamp`` (the latest
    admission) decides when it expires."""

    __slots__ = ("opened", "stamp", "units")

    def __init__(self, now: float, units: int) -> None:
        self.opened = now
        self.stamp = now
        self.units = units


class Reservation:
    """A handle on units admitted by one ``RollingWindow.reserve`` (plus later ``charge``\\ s).

    Only its window changes it; callers keep it to ``refund`` or ``charge`` later.
    """

    __slots__ = ("_owner", "_parts")

    def __init__(self, owner: RollingWindow, slot_id: int, units: int) -> None:
        self._owner = owner
        # Slot id, units, slot id, units ..., oldest first (flat: one list per reservation):
        # a charge lands in a later slot than the admission.
        self._parts: list[int] = [slot_id, units]

    @property
    def amount(self) -> int:
        """Units this reservation has reserved or been charged, minus refunds (expired units
        included: they are no longer counted by the window but were admitted)."""
        return sum(self._parts[1::2])

    def __repr__(self) -> str:
        return f"Reservation(amount={self.amount})"


class RollingWindow:
    """At most ``limit`` units admitted in any half-open window ``(t - window, t]``.

    An admission at ``t`` stops counting at exactly ``t + window``. ``charge`` can push the count
    over the limit (a settled under-estimate, or a lowered limit); later admissions then wait
    until enough units expire.
    """

    __slots__ = ("_granularity", "_head_id", "_limit", "_paused_until", "_slots", "_total",
                 "_window")

    def __init__(self, limit: int, window: float, *, slots: int = 1024) -> None:
        _check_limit("RollingWindow", limit)
        if isinstance(window, bool) or not isinstance(window, int | float) \
                or not math.isfinite(window) or window <= 0:
            raise ValueError(f"RollingWindow window must be a positive finite number of seconds, "
                             f"got {window!r}")
        if isinstance(slots, bool) or not isinstance(slots, int) or slots < 1:
            raise ValueError(f"RollingWindow slots must be an int >= 1, got {slots!r}")
        self._limit = limit
        self._window = float(window)
        self._granularity = self._window / slots
        self._slots: deque[_Slot] = deque()
        self._head_id = 0  # id of self._slots[0]; ids grow by one per slot ever opened
        self._total = 0
        self._paused_until = -math.inf

    @property
    def limit(self) -> int:
        return self._limit

    @property
    def window(self) -> float:
        return self._window

    def set_limit(self, limit: int) -> None:
        """Change the limit at run time (adaptation after a 429). History is kept, so lowering
        the limit below current usage simply makes admissions wait for expiry."""
        _check_limit("RollingWindow", limit)
        self._limit = limit

    def used(self, now: float) -> int:
        """Units counted in ``(now - window, now]``."""
        self._expire(now)
        return self._total

    def delay(self, amount: int, now: float) -> float:
        """Seconds until ``amount`` fits (0.0 if it fits now), counting only the units admitted
        so far and any pause. Waiting exactly this long and then reserving succeeds unless
        something else was admitted meanwhile."""
        self._check_fits(amount)
        self._expire(now)
        excess = self._total + amount - self._limit
        ready = now
        if excess > 0:
            # amount <= limit, so excess <= total: the oldest slots always free enough
            oldest_first = iter(self._slots)
            freed = 0
            while freed < excess:
                slot = next(oldest_first)
                freed += slot.units
            ready = slot.stamp + self._window
        return _after(now, max(ready, self._paused_until))

    def fits(self, amount: int, now: float) -> bool:
        """Whether ``amount`` fits now: ``delay(amount, now) == 0``, without working out
        the wait."""
        if type(amount) is not int or not 0 <= amount <= self._limit:
            self._check_fits(amount)  # raises: the check is inline for the common case
        if now < self._paused_until:
            return False
        slots = self._slots
        if slots and slots[0].stamp + self._window <= now:
            self._expire(now)
        return self._total + amount <= self._limit

    def reserve(self, amount: int, now: float) -> Reservation | None:
        """Admit ``amount`` now if it fits in the window (and no pause is on), else ``None``."""
        if not self.fits(amount, now):
            return None
        return Reservation(self, self._add(amount, now), amount)

    def _admit(self, amount: int, now: float) -> Reservation:
        """``reserve`` right after ``fits(amount, now)`` said yes: the governor asks every
        window whether it fits before it reserves in any of them."""
        return Reservation(self, self._add(amount, now), amount)

    def refund(self, reservation: Reservation, amount: int | None = None) -> None:
        """Give back all (``None``) or ``amount`` units of a reservation. Units that already
        expired are not given back twice; refunding more than is held is clamped."""
        parts = reservation._parts
        if len(parts) == 2 and type(amount) is int and amount >= 0 \
                and reservation._owner is self and parts[0] >= self._head_id:
            # A settled over-estimate (nearly every call): one part, not expired.
            taken = min(parts[1], amount)
            parts[1] -= taken
            self._slots[parts[0] - self._head_id].units -= taken
            self._total -= taken
            return
        self._check_owner(reservation)
        remaining = reservation.amount if amount is None else amount
        _check_amount(remaining)
        for at in range(len(parts) - 2, -1, -2):
            if remaining == 0:
                break
            index = parts[at] - self._head_id
            if index < 0:
                break  # this part and every older one have expired
            taken = min(parts[at + 1], remaining)
            parts[at + 1] -= taken
            self._slots[index].units -= taken
            self._total -= taken
            remaining -= taken

    def charge(self, reservation: Reservation, amount: int, now: float) -> None:
        """Add ``amount`` units to a reservation (settling an under-estimate). They count from
        ``now``, which is never earlier than when the server counted them, so the window stays
        conservative. The count may go over the limit: later admissions wait."""
        self._check_owner(reservation)
        _check_amount(amount)
        if amount == 0:
            return
        self._expire(now)
        slot_id = self._add(amount, now)
        parts = reservation._parts
        if parts[-2] == slot_id:
            parts[-1] += amount
        else:
            parts += (slot_id, amount)

    def count(self, amount: int, at: float) -> None:
        """Count ``amount`` units admitted elsewhere at ``at`` (history for a window made
        later), whatever the limit; calls go oldest first."""
        _check_amount(amount)
        self._expire(at)
        self._add(amount, at)

    def restamp(self, reservation: Reservation, now: float) -> None:
        """Count the reservation's live units from ``now`` instead of from its admission (the
        request only reached the wire now). Later is conservative: never more than exact."""
        if reservation._owner is not self:
            self._check_owner(reservation)
        parts = reservation._parts
        slots = self._slots
        if len(parts) == 2 and parts[1] > 0 and slots \
                and parts[0] == self._head_id + len(slots) - 1:
            newest = slots[-1]
            if now - newest.opened <= self._granularity:
                # Sent within its admission's slot (nearly always): what refund and charge
                # would do comes down to the slot's stamp.
                if now > newest.stamp:
                    newest.stamp = now
                return
        before = self._total
        self.refund(reservation)
        moved = before - self._total
        if moved:
            self.charge(reservation, moved, now)

    def pause_until(self, until: float) -> None:
        """Admit nothing before ``until`` (a 429 that named a wait). The latest deadline wins."""
        if math.isnan(until):
            raise ValueError("pause_until needs a time, got nan")
        self._paused_until = max(self._paused_until, until)

    def paused_until(self) -> float:
        """The time before which nothing is admitted (``-inf`` when never paused)."""
        return self._paused_until

    def __repr__(self) -> str:
        return (f"RollingWindow(limit={self._limit}, window={self._window}, "
                f"counted={self._total}, slots={len(self._slots)})")

    def _check_fits(self, amount: int) -> None:
        _check_amount(amount)
        if amount > self._limit:
            raise ValueError(f"amount {amount} can never fit: it exceeds the limit {self._limit} "
                             f"of a {self._window:g} s window")

    def _check_owner(self, reservation: Reservation) -> None:
        if reservation._owner is not self:
            raise ValueError("this reservation was made by another RollingWindow")

    def _expire(self, now: float) -> None:
        slots = self._slots
        while slots and slots[0].stamp + self._window <= now:
            self._total -= slots.popleft().units
            self._head_id += 1

    def _add(self, amount: int, now: float) -> int:
        """Count ``amount`` at ``now``; returns the id of the slot it joined."""
        slots = self._slots
        newest = slots[-1] if slots else None
        # An earlier ``now`` (callers reading the clock at slightly different moments) also
        # joins the newest slot: counting it later is conservative and keeps stamps ordered.
        if newest is not None and now - newest.opened <= self._granularity:
            if now > newest.stamp:
                newest.stamp = now
            newest.units += amount
        else:
            slots.append(_Slot(now, amount))
        self._total += amount
        return self._head_id + len(slots) - 1


class Level:
    """A concurrency level: units held now, with a cap (``None`` = unlimited).

    Lowering the cap below what is held takes back nothing; new acquisitions wait for releases.
    """

    __slots__ = ("_held", "_limit")

    def __init__(self, limit: int | None) -> None:
        if limit is not None:
            _check_limit("Level", limit)
        self._limit = limit
        self._held = 0

    @property
    def limit(self) -> int | None:
        return self._limit

    def set_limit(self, limit: int | None) -> None:
        if limit is not None:
            _check_limit("Level", limit)
        self._limit = limit

    @property
    def held(self) -> int:
        return self._held

    def try_acquire(self, amount: int = 1) -> bool:
        """Hold ``amount`` more units if the cap allows; True when they were taken."""
        if type(amount) is not int or amount < 0:
            _check_amount(amount)
        if self._limit is not None and self._held + amount > self._limit:
            return False
        self._held += amount
        return True

    def release(self, amount: int = 1) -> None:
        if type(amount) is not int or amount < 0:
            _check_amount(amount)
        if amount > self._held:
            raise ValueError(f"cannot release {amount}: only {self._held} held")
        self._held -= amount

    def __repr__(self) -> str:
        return f"Level(held={self._held}, limit={self._limit})"
