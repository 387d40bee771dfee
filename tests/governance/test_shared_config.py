"""RedisConfig and account naming: checked without a Redis server."""

from __future__ import annotations

from typing import Any

import pytest
import redis.asyncio as aioredis

from kimi_actors import Limits, MonotonicClock, RedisConfig, Supervisor
from kimi_actors.governance.governor import Governor
from kimi_actors.governance.shared import account_tag, default_account
from kimi_actors.redaction import redact_text

KEY = "sk-shared-config-test-key-0123456789"


@pytest.mark.parametrize(("options", "message"), [
    ({}, "exactly one of url= or client="),
    ({"url": "redis://a", "client": aioredis.Redis()}, "exactly one"),
    ({"url": "redis://a", "lease": 0}, "lease"),
    ({"url": "redis://a", "grace": float("inf")}, "grace"),
    ({"url": "redis://a", "timeout": True}, "timeout"),
    ({"url": "redis://a", "unreachable": "retry"}, "unreachable"),
    ({"url": "redis://a", "fallback_share": 0}, "fallback_share"),
    ({"url": "redis://a", "fallback_share": 1.5}, "fallback_share"),
    ({"url": "redis://a", "slots": 1}, "slots"),
])
def test_a_config_that_cannot_work_is_refused(options: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        RedisConfig(**options)


def test_redis_takes_a_url_a_client_or_a_config() -> None:
    client = aioredis.Redis()
    assert RedisConfig.of("redis://cache:6379/0").url == "redis://cache:6379/0"
    assert RedisConfig.of(client).client is client
    config = RedisConfig(url="redis://x", lease=3.0)
    assert RedisConfig.of(config) is config
    with pytest.raises(TypeError, match=r"a URL, a redis\.asyncio\.Redis or a RedisConfig"):
        RedisConfig.of(6379)  # type: ignore[arg-type]


def test_a_password_in_the_url_is_never_shown() -> None:
    config = RedisConfig(url="redis://user:p%40ss-word-42@cache:6379/0")
    assert "ss-word-42" not in repr(config)
    assert "p@ss-word-42" not in redact_text("AUTH failed for p@ss-word-42")


def test_accounts_are_named_by_hashes_that_never_hold_the_key() -> None:
    one = default_account(KEY, "https://api.moonshot.cn/v1")
    assert one == default_account(KEY, "https://api.moonshot.cn/v1")
    assert one != default_account(KEY, "https://api.moonshot.ai/v1")
    assert one != default_account(KEY + "x", "https://api.moonshot.cn/v1")
    assert KEY not in one
    tag = account_tag(one)
    assert len(tag) == 16
    assert int(tag, 16) >= 0
    assert tag != account_tag("another account")


def test_redis_and_a_governor_of_ones_own_exclude_each_other() -> None:
    governor = Governor(Limits(concurrency=1), clock=MonotonicClock())
    with pytest.raises(ValueError, match="pass governor= or redis=, not both"):
        Supervisor(api_key=KEY, governor=governor, redis="redis://127.0.0.1:9/0")


def test_the_supervisor_builds_a_shared_governor_from_redis() -> None:
    from kimi_actors.governance.redis import RedisGovernor

    sup = Supervisor(api_key=KEY, base_url="http://127.0.0.1:9/v1", limits=Limits(rpm=5),
                     redis=RedisConfig(url="redis://127.0.0.1:9/0", account="team"))
    governor = sup._runtime.governor
    assert isinstance(governor, RedisGovernor)
    assert governor.account == account_tag("team")
    assert governor.limits == Limits(rpm=5)
    assert KEY not in repr(governor)
