"""What the runtime needs of a governor: the interface a shared (e.g. Redis) governor plugs
into without touching the actors.

The in-memory :class:`~kimi_actors.governance.governor.Governor` is the first implementation.
A :class:`~kimi_actors.governance.governor.Permit` is the handle one admission gets: the
runtime passes it back to ``release``, ``settle``, ``restamp`` and ``cancel`` and never looks
inside, so an implementation may keep what it needs in it.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from ..errors import KimiError
from ..limits import Dimension, Limits
from .governor import GovernorStats, Permit

__all__ = ["GovernorProtocol"]


@runtime_checkable
class GovernorProtocol(Protocol):
    """Admission for one account's limits, shared by every actor of a supervisor."""

    @property
    def limits(self) -> Limits: ...

    @property
    def rate_limited(self) -> bool:
        """Whether any rate window is governed (the transport then reports sending)."""
        ...

    def check(self, tokens: int) -> None:
        """Raise ``LimitExceededError`` when ``tokens`` can never be admitted."""
        ...

    async def admit(self, tokens: int, *, priority: int = 0) -> Permit:
        """Wait, first come first served within a priority, until one request and
        ``tokens`` fit every dimension; then hold them."""
        ...

    def release(self, permit: Permit) -> None:
        """The response or stream ended: give the concurrency slot back (idempotent)."""
        ...

    def cancel(self, permit: Permit) -> None:
        """The request was never sent: give every unit back."""
        ...

    def restamp(self, permit: Permit) -> None:
        """The request reached the wire: its rate units count from now."""
        ...

    def settle(self, permit: Permit, actual_tokens: int | None) -> None:
        """Correct the token reservation with what the server counted."""
        ...

    def on_rate_limited(self, dimension: Dimension | None, *, retry_after: float | None,
                        limit: int | None) -> int | None:
        """Pause ``dimension`` for ``retry_after``; adopt a lower ``limit``. Returns the
        adopted limit."""
        ...

    def wait_bound(self, requests: int, tokens: int) -> float:
        """A lower bound on the seconds until ``requests`` requests and ``tokens`` tokens
        could be admitted (0.0 when none is known): a deadline shorter than it cannot be met."""
        ...

    @property
    def closed(self) -> KimiError | None:
        """The error admissions fail with once closed."""
        ...

    def fail_queued(self, error: KimiError) -> None:
        """Fail every waiter queued now with ``error``."""
        ...

    def close(self, error: KimiError) -> None:
        """Refuse every further admission and fail the queued ones with ``error``."""
        ...

    async def run(self) -> None:
        """Serve queued waiters until cancelled (a task the supervisor owns)."""
        ...

    def statistics(self) -> GovernorStats: ...
