"""What ``Supervisor(redis=...)`` takes: the shared governor's configuration (no redis import
until a governor is built, so ``import kimi_actors`` does not pay for redis-py)."""

from __future__ import annotations

import hashlib
import hmac
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal
from urllib.parse import unquote, urlsplit

from ..redaction import register_secret

if TYPE_CHECKING:
    import redis.asyncio as aioredis

__all__ = ["RedisConfig", "Unreachable", "account_tag", "default_account"]

Unreachable = Literal["wait", "fallback"]


def account_tag(account: str) -> str:
    """The name of an account's keys: a hash, so neither the account nor a key shows."""
    return hashlib.sha256(b"kimi_actors account\n" + account.encode()).hexdigest()[:16]


def default_account(api_key: str, base_url: str) -> str:
    """An account name for a key at an endpoint, from a keyed hash (never the key itself)."""
    digest = hmac.new(api_key.encode(), base_url.encode(), hashlib.sha256).hexdigest()
    return f"key-{digest[:32]}"


@dataclass(frozen=True, slots=True, kw_only=True)
class RedisConfig:
    """How a :class:`~kimi_actors.Supervisor` shares its account's limits through Redis.

    ``url`` (``redis://host:port/db``, ``rediss://`` for TLS) or ``client`` (a
    ``redis.asyncio.Redis``; the caller then owns it). ``account`` names what the processes
    share; by default a keyed hash of the API key and base URL, so every process with the same
    key shares without naming it. ``lease``: seconds a killed process's concurrency slots stay
    taken. ``grace``: how late a waiting process may come back before it loses its turn.
    ``timeout``: the bound on every Redis call.
    """

    url: str | None = None
    client: aioredis.Redis | None = None
    account: str | None = None
    lease: float = 6.0
    grace: float = 2.0
    unreachable: Unreachable = "wait"
    fallback_share: float = 0.25
    timeout: float = 1.0
    slots: int = 200

    def __post_init__(self) -> None:
        if (self.url is None) == (self.client is None):
            raise ValueError("RedisConfig needs exactly one of url= or client=")
        for name in ("lease", "grace", "timeout"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) \
                    or not math.isfinite(value) or value <= 0:
                raise ValueError(f"RedisConfig.{name} must be a positive number of seconds, "
                                 f"got {value!r}")
        if self.unreachable not in ("wait", "fallback"):
            raise ValueError(f"RedisConfig.unreachable must be 'wait' or 'fallback', "
                             f"got {self.unreachable!r}")
        if not 0 < self.fallback_share <= 1:
            raise ValueError(f"RedisConfig.fallback_share must be in (0, 1], "
                             f"got {self.fallback_share!r}")
        if isinstance(self.slots, bool) or not isinstance(self.slots, int) \
                or not 2 <= self.slots <= 10_000:
            raise ValueError(f"RedisConfig.slots must be an int in [2, 10000], "
                             f"got {self.slots!r}")
        if self.url is not None:
            password = urlsplit(self.url).password
            if password:
                register_secret(unquote(password))

    def __repr__(self) -> str:
        where = "client" if self.client is not None else "url"
        return (f"RedisConfig({where}, lease={self.lease}, unreachable={self.unreachable!r}, "
                f"fallback_share={self.fallback_share})")

    @classmethod
    def of(cls, value: str | aioredis.Redis | RedisConfig) -> RedisConfig:
        """A config from what ``Supervisor(redis=...)`` accepts."""
        if isinstance(value, RedisConfig):
            return value
        if isinstance(value, str):
            return cls(url=value)
        import redis.asyncio as aioredis

        if isinstance(value, aioredis.Redis):
            return cls(client=value)
        raise TypeError(f"redis= takes a URL, a redis.asyncio.Redis or a RedisConfig, "
                        f"got {type(value).__name__}")

    def connect(self) -> aioredis.Redis:
        """The client to use: the given one, or a new one with short timeouts and no retries of
        its own (the governor retries, and never waits longer than ``timeout`` per call)."""
        import redis.asyncio as aioredis
        from redis.asyncio.retry import Retry
        from redis.backoff import NoBackoff

        if self.client is not None:
            return self.client
        assert self.url is not None
        return aioredis.Redis.from_url(
            self.url, socket_timeout=self.timeout, socket_connect_timeout=self.timeout,
            retry=Retry(NoBackoff(), 0))
