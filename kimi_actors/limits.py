"""Account limits: concurrency, RPM, TPM and TPD, with Kimi's tier presets.

Kimi counts limits per account, shared by all its keys, models and processes. Each limit is
counted over a window whose length is part of the configuration, so tests and FakeKimi can run
a "minute" in a second or two through the same code paths as production.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, replace

__all__ = ["TIERS", "Dimension", "Limits"]


class Dimension(enum.StrEnum):
    """One governed dimension of an account's limits."""

    CONCURRENCY = "concurrency"
    RPM = "rpm"
    TPM = "tpm"
    TPD = "tpd"


MINUTE = 60.0
DAY = 86_400.0


@dataclass(frozen=True, slots=True, kw_only=True)
class Limits:
    """Limits of one account. ``None`` means unlimited.

    ``minute`` and ``day`` are the lengths (seconds) of the windows RPM/TPM and TPD are counted
    over; shorten them in tests to run a "minute" quickly.
    """

    concurrency: int | None = None
    rpm: int | None = None
    tpm: int | None = None
    tpd: int | None = None
    minute: float = MINUTE
    day: float = DAY

    def __post_init__(self) -> None:
        for name in ("concurrency", "rpm", "tpm", "tpd"):
            value = getattr(self, name)
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValueError(f"Limits.{name} must be an int or None, got {value!r}")
            if value < 1:
                raise ValueError(f"Limits.{name} must be at least 1 (or None for unlimited), "
                                 f"got {value}")
        for name in ("minute", "day"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
                raise ValueError(f"Limits.{name} must be a positive number of seconds, "
                                 f"got {value!r}")

    @classmethod
    def tier(cls, tier: int, *, minute: float = MINUTE, day: float = DAY) -> Limits:
        """The published limits of Kimi account tier 0-5."""
        if isinstance(tier, bool) or tier not in TIERS:
            raise ValueError(f"unknown Kimi tier {tier!r}: expected one of 0-5")
        return replace(TIERS[tier], minute=minute, day=day)

    @classmethod
    def unlimited(cls) -> Limits:
        return cls()

    def limit(self, dimension: Dimension) -> int | None:
        return getattr(self, dimension.value)  # type: ignore[no-any-return]

    def window(self, dimension: Dimension) -> float:
        """Seconds over which ``dimension`` is counted (0 for concurrency: it is a level)."""
        if dimension is Dimension.CONCURRENCY:
            return 0.0
        return self.day if dimension is Dimension.TPD else self.minute

    def with_overrides(self, **values: int | None) -> Limits:
        """A copy with the given limits replaced (``None`` values are ignored)."""
        return replace(self, **{k: v for k, v in values.items() if v is not None})


TIERS: dict[int, Limits] = {
    0: Limits(concurrency=1, rpm=3, tpm=500_000, tpd=1_500_000),
    1: Limits(concurrency=50, rpm=200, tpm=2_000_000),
    2: Limits(concurrency=100, rpm=500, tpm=3_000_000),
    3: Limits(concurrency=200, rpm=5_000, tpm=3_000_000),
    4: Limits(concurrency=400, rpm=5_000, tpm=4_000_000),
    5: Limits(concurrency=1_000, rpm=10_000, tpm=5_000_000),
}
