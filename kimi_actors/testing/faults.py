"""Fault injection and latency settings for FakeKimi, and the per-request fault plan.

Every probabilistic fault is decided per request from a ``random.Random`` seeded with the
server's seed and the request's number, so a run with the same seed and the same request order
injects the same faults.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, fields

__all__ = ["NO_FAULTS", "FaultPlan", "Faults", "Latency", "plan_faults"]

_PROBABILITIES = ("overload", "server_error", "html_error", "drop", "stall", "malformed",
                  "invalid_utf8")
_SWITCHES = ("quota_exhausted", "split_writes")


def _probability(owner: str, name: str, value: object) -> None:
    if (isinstance(value, bool) or not isinstance(value, int | float)
            or not 0.0 <= value <= 1.0):
        raise ValueError(f"{owner}.{name} must be a probability in [0, 1], got {value!r}")


@dataclass(frozen=True, slots=True, kw_only=True)
class Faults:
    """What goes wrong, and how often. Probabilities are per chat request."""

    #: 429 engine_overloaded_error.
    overload: float = 0.0
    #: 500 server_error.
    server_error: float = 0.0
    #: 502 with an HTML body, as a proxy in front of the API would send.
    html_error: float = 0.0
    #: The connection closes after a random number of stream events, without ``[DONE]``
    #: (a non-stream request gets its connection closed without an answer).
    drop: float = 0.0
    #: The stream stops after a random number of events and keeps the connection open until the
    #: client goes away or the server closes (a non-stream request never gets its answer).
    stall: float = 0.0
    #: One ``data:`` event with broken JSON mid-stream; the stream then continues normally.
    malformed: float = 0.0
    #: One ``data:`` line with invalid UTF-8 bytes mid-stream; the stream then continues.
    invalid_utf8: float = 0.0
    #: Every chat request gets 429 exceeded_current_quota_error.
    quota_exhausted: bool = False
    #: Streams are written in TCP writes of 1-7 bytes that split lines and UTF-8 characters.
    split_writes: bool = False

    def __post_init__(self) -> None:
        for name in _PROBABILITIES:
            _probability("Faults", name, getattr(self, name))
        for name in _SWITCHES:
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"Faults.{name} must be a bool, got {getattr(self, name)!r}")

    @property
    def any_random(self) -> bool:
        return any(getattr(self, name) > 0 for name in _PROBABILITIES)

    @classmethod
    def parse(cls, text: str) -> Faults:
        """Parse ``"overload=0.05,drop=0.1,split_writes"`` (a bare switch name means true)."""
        known = {field.name for field in fields(cls)}
        values: dict[str, float | bool] = {}
        for item in text.split(","):
            item = item.strip()
            if not item:
                continue
            name, sep, raw = item.partition("=")
            name = name.strip()
            if name not in known:
                raise ValueError(f"unknown fault {name!r}: expected one of "
                                 f"{', '.join(sorted(known))}")
            if name in _SWITCHES:
                flag = raw.strip().lower() if sep else "true"
                if flag not in ("true", "1", "yes", "false", "0", "no"):
                    raise ValueError(f"fault {name!r} is a switch: give true or false, "
                                     f"got {raw!r}")
                values[name] = flag in ("true", "1", "yes")
            else:
                if not sep:
                    raise ValueError(f"fault {name!r} needs a probability, e.g. {name}=0.05")
                try:
                    values[name] = float(raw)
                except ValueError:
                    raise ValueError(f"fault {name!r}: {raw!r} is not a number") from None
        return cls(**values)  # type: ignore[arg-type]


@dataclass(frozen=True, slots=True, kw_only=True)
class Latency:
    """Seconds before the first stream chunk (or the non-stream answer) and between chunks."""

    first_token: float = 0.0
    per_token: float = 0.0

    def __post_init__(self) -> None:
        for name in ("first_token", "per_token"):
            value = getattr(self, name)
            if (isinstance(value, bool) or not isinstance(value, int | float)
                    or not math.isfinite(value) or value < 0):
                raise ValueError(f"Latency.{name} must be a finite number >= 0, got {value!r}")


@dataclass(frozen=True, slots=True, kw_only=True)
class FaultPlan:
    """The faults one request meets: ``reject`` (a fault status instead of an answer) or the
    stream faults, whose positions are fractions of the stream turned into event indexes by
    :meth:`cut_after`, :meth:`malformed_at` and :meth:`invalid_utf8_at` once its length is
    known."""

    reject: str | None = None
    cut: str | None = None
    cut_fraction: float = 0.0
    malformed_fraction: float | None = None
    invalid_utf8_fraction: float | None = None

    @property
    def touches_stream(self) -> bool:
        return (self.cut is not None or self.malformed_fraction is not None
                or self.invalid_utf8_fraction is not None)

    def cut_after(self, events: int) -> int:
        """How many of ``events`` stream events go out before the drop or stall (0 <= k < n)."""
        return min(int(self.cut_fraction * events), max(events - 1, 0))

    def malformed_at(self, events: int) -> int | None:
        """Index of the event the malformed event goes before (never before the first)."""
        return _mid_stream(self.malformed_fraction, events)

    def invalid_utf8_at(self, events: int) -> int | None:
        return _mid_stream(self.invalid_utf8_fraction, events)


def _mid_stream(fraction: float | None, events: int) -> int | None:
    if fraction is None:
        return None
    return 1 + min(int(fraction * (events - 1)), max(events - 2, 0))


NO_FAULTS = FaultPlan()


def plan_faults(faults: Faults, seed: int, request_number: int) -> FaultPlan:
    """Draw the faults of request ``request_number``: one draw per fault in a fixed order, so
    a given (seed, request number) always meets the same faults. Rejections (overload, 500,
    502) exclude stream faults; drop wins over stall."""
    if not faults.any_random:
        return NO_FAULTS
    rng = random.Random(seed * 1_000_003 + request_number)
    draws = {name: rng.random() for name in _PROBABILITIES}
    cut_fraction, malformed_fraction, invalid_fraction = rng.random(), rng.random(), rng.random()
    for name in ("overload", "server_error", "html_error"):
        if draws[name] < getattr(faults, name):
            return FaultPlan(reject=name)
    cut = next((name for name in ("drop", "stall") if draws[name] < getattr(faults, name)), None)
    return FaultPlan(
        cut=cut,
        cut_fraction=cut_fraction,
        malformed_fraction=malformed_fraction if draws["malformed"] < faults.malformed else None,
        invalid_utf8_fraction=invalid_fraction if draws["invalid_utf8"] < faults.invalid_utf8
        else None,
    )
