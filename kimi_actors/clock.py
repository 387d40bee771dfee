"""Time, injected: the runtime reads the time, sleeps and sets timers only through a Clock.

``MonotonicClock`` is the real one. ``FakeClock`` lets tests move time with ``advance()``
instead of sleeping, and tells them when tasks are waiting on it, so no test waits on wall time.
"""

from __future__ import annotations

import asyncio
import contextvars
import heapq
import itertools
import time
from collections.abc import Callable
from typing import Protocol, runtime_checkable

__all__ = ["Clock", "Doorbell", "FakeClock", "MonotonicClock", "TimerHandle"]


@runtime_checkable
class TimerHandle(Protocol):
    def cancel(self) -> None: ...


@runtime_checkable
class Clock(Protocol):
    def now(self) -> float:
        """Seconds on a monotonic scale."""
        ...

    def wall(self) -> float:
        """Seconds since the epoch (``time.time()``), for dates such as ``Retry-After``."""
        ...

    async def sleep(self, seconds: float) -> None: ...

    def call_later(self, seconds: float, callback: Callable[[], object]) -> TimerHandle:
        """Run ``callback`` (in the running loop) once ``seconds`` have passed, in an empty
        context shared by every timer: it sees none of the caller's context variables and
        must set none. (The runtime's timers only wake and cancel; a copy of the context per
        timer would cost every stream an object the collector tracks.)"""
        ...


#: An empty context for loop callbacks that read no context variable (``call_soon`` and
#: ``call_at`` would otherwise copy the running one).
EMPTY_CONTEXT = contextvars.Context()


class MonotonicClock:
    """The real clock: ``time.monotonic``, ``asyncio.sleep`` and the loop's timers."""

    __slots__ = ()

    # The C functions themselves: the runtime reads the clock several times a call, and a
    # method wrapping them costs a Python frame each time.
    now = staticmethod(time.monotonic)
    wall = staticmethod(time.time)

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(max(0.0, seconds))

    def call_later(self, seconds: float, callback: Callable[[], object]) -> TimerHandle:
        return asyncio.get_running_loop().call_later(max(0.0, seconds), callback,
                                                     context=EMPTY_CONTEXT)

    def __repr__(self) -> str:
        return "MonotonicClock()"


class Doorbell:
    """How a dispatcher sleeps: until ``seconds`` pass on ``clock`` (``None``: no timeout) or
    until ``ring()`` is called. With ``latch``, a ring while nobody waits ends the next wait at
    once (a wake-up that came while the dispatcher was busy is not lost); ``clear()`` forgets
    it."""

    __slots__ = ("_clock", "_future", "_latch", "_rung")

    def __init__(self, clock: Clock, *, latch: bool = False) -> None:
        self._clock = clock
        self._latch = latch
        self._future: asyncio.Future[None] | None = None
        self._rung = False

    async def wait(self, seconds: float | None) -> None:
        if self._rung:
            self._rung = False
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._future = future
        timer: TimerHandle | None = None
        if seconds is not None:
            timer = self._clock.call_later(seconds, self.ring)
        try:
            await future
        finally:
            self._future = None
            self._rung = False
            if timer is not None:
                timer.cancel()

    def ring(self) -> None:
        future = self._future
        if future is not None:
            if not future.done():
                future.set_result(None)
        elif self._latch:
            self._rung = True

    def clear(self) -> None:
        self._rung = False


class _FakeTimer:
    __slots__ = ("callback", "cancelled", "deadline")

    def __init__(self, deadline: float, callback: Callable[[], object]) -> None:
        self.deadline = deadline
        self.callback = callback
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class FakeClock:
    """A clock that moves only when told to. Timers and sleepers fire when ``advance()`` passes
    their deadline, in deadline order."""

    def __init__(self, start: float = 0.0, *, wall_start: float = 1_767_225_600.0) -> None:
        self._now = float(start)
        self._wall_offset = float(wall_start) - self._now
        self._timers: list[tuple[float, int, _FakeTimer]] = []
        self._seq = itertools.count()
        self._changed: asyncio.Event | None = None

    def now(self) -> float:
        return self._now

    def wall(self) -> float:
        """The wall clock moves with ``advance()`` too (``wall_start`` at ``start``)."""
        return self._wall_offset + self._now

    def call_later(self, seconds: float, callback: Callable[[], object]) -> TimerHandle:
        timer = _FakeTimer(self._now + max(0.0, seconds), callback)
        heapq.heappush(self._timers, (timer.deadline, next(self._seq), timer))
        self._notify()
        return timer

    async def sleep(self, seconds: float) -> None:
        if seconds <= 0:
            await asyncio.sleep(0)
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()

        def wake() -> None:
            if not fut.done():
                fut.set_result(None)

        timer = self.call_later(seconds, wake)
        try:
            await fut
        finally:
            timer.cancel()
            self._notify()

    @property
    def sleepers(self) -> int:
        """How many timers (sleeping tasks included) are pending on this clock now."""
        return sum(1 for _, _, timer in self._timers if not timer.cancelled)

    def next_deadline(self) -> float | None:
        return min((deadline for deadline, _, timer in self._timers if not timer.cancelled),
                   default=None)

    def pending_deadlines(self) -> list[float]:
        """The deadlines of the pending timers, earliest first."""
        return sorted(deadline for deadline, _, timer in self._timers if not timer.cancelled)

    def advance(self, seconds: float) -> None:
        """Move time forward and fire every timer whose deadline has come."""
        if seconds < 0:
            raise ValueError("time only moves forward")
        self._now += seconds
        while self._timers and self._timers[0][0] <= self._now:
            _, _, timer = heapq.heappop(self._timers)
            if not timer.cancelled:
                timer.cancelled = True
                timer.callback()
        self._notify()

    async def wait_for_sleepers(self, count: int = 1) -> None:
        """Return once at least ``count`` timers are pending on this clock."""
        while self.sleepers < count:
            if self._changed is None:
                self._changed = asyncio.Event()
            self._changed.clear()
            await self._changed.wait()

    def _notify(self) -> None:
        if self._changed is not None:
            self._changed.set()

    def __repr__(self) -> str:
        return f"FakeClock(now={self._now!r}, sleepers={self.sleepers})"
