"""A long-lived supervisor lives through a rejected key or an empty account: it fails fast while
the account is known to be bad, probes after a cool-down, and serves again once it is fixed."""

from __future__ import annotations

import asyncio

import pytest
from aiohttp import web
from hostile import MODEL, QUESTION, completion, error_body, serve

from kimi_actors import (
    AuthenticationError,
    FakeClock,
    FatalMode,
    FatalPolicy,
    Limits,
    QuotaExhaustedError,
    Supervisor,
)

KEY = "sk-test-hostile-accounts"


class Account:
    """A server whose account can be broken and mended; counts what reaches it."""

    def __init__(self) -> None:
        self.refusal: tuple[int, str, str] | None = (
            401, "invalid_authentication_error", "Invalid Authentication")
        self.hits = 0
        self.hold: asyncio.Event | None = None
        self.arrived = asyncio.Event()

    async def handle(self, request: web.Request) -> web.Response:
        self.hits += 1
        self.arrived.set()
        if self.hold is not None:
            await self.hold.wait()
        if self.refusal is not None:
            status, kind, message = self.refusal
            return web.json_response(error_body(kind, message), status=status)
        return web.json_response(completion("served"))


async def test_a_rejected_key_fails_fast_then_a_probe_brings_the_service_back() -> None:
    account = Account()
    clock = FakeClock()
    async with serve(account.handle) as base_url, \
            Supervisor(api_key=KEY, base_url=base_url, clock=clock,
                       fatal=FatalPolicy(cool_down=30.0)) as sup:
        with pytest.raises(AuthenticationError):
            await sup.chat(model=MODEL, messages=QUESTION)
        assert sup.statistics().account_refused

        with pytest.raises(AuthenticationError) as fast:
            await sup.chat(model=MODEL, messages=QUESTION)
        assert account.hits == 1  # failed fast: never sent
        assert any("the next probe goes in 30 s" in note for note in fast.value.__notes__)

        clock.advance(31.0)
        with pytest.raises(AuthenticationError):  # the probe: still refused
            await sup.chat(model=MODEL, messages=QUESTION)
        assert account.hits == 2
        with pytest.raises(AuthenticationError):  # and the cool-down starts again
            await sup.chat(model=MODEL, messages=QUESTION)
        assert account.hits == 2

        account.refusal = None  # the key is fixed
        clock.advance(31.0)
        assert (await sup.chat(model=MODEL, messages=QUESTION)).content == "served"
        assert (await sup.chat(model=MODEL, messages=QUESTION)).content == "served"
        assert account.hits == 4
        assert not sup.statistics().account_refused


async def test_only_one_probe_goes_while_the_account_is_known_bad() -> None:
    account = Account()
    account.refusal = (429, "exceeded_current_quota_error", "Your account is suspended")
    clock = FakeClock()
    async with serve(account.handle) as base_url, \
            Supervisor(api_key=KEY, base_url=base_url, clock=clock) as sup:
        with pytest.raises(QuotaExhaustedError):
            await sup.chat(model=MODEL, messages=QUESTION)
        clock.advance(60.0)
        account.refusal = None
        account.hold = asyncio.Event()
        account.arrived.clear()
        probe = asyncio.create_task(sup.chat(model=MODEL, messages=QUESTION))
        await account.arrived.wait()
        with pytest.raises(QuotaExhaustedError):  # the probe is out: this one fails fast
            await sup.chat(model=MODEL, messages=QUESTION)
        account.hold.set()
        assert (await probe).content == "served"
        assert account.hits == 2
        assert (await sup.chat(model=MODEL, messages=QUESTION)).content == "served"


async def test_queued_work_fails_at_once_when_the_account_is_refused() -> None:
    account = Account()
    account.hold = asyncio.Event()
    async with serve(account.handle) as base_url, \
            Supervisor(api_key=KEY, base_url=base_url, limits=Limits(concurrency=1)) as sup:
        calls = [asyncio.create_task(sup.chat(model=MODEL, messages=QUESTION))
                 for _ in range(5)]
        await account.arrived.wait()
        account.hold.set()
        results = await asyncio.gather(*calls, return_exceptions=True)
    assert all(isinstance(result, AuthenticationError) for result in results)
    assert account.hits == 1


async def test_stop_mode_stops_for_good() -> None:
    account = Account()
    clock = FakeClock()
    async with serve(account.handle) as base_url, \
            Supervisor(api_key=KEY, base_url=base_url, clock=clock,
                       fatal=FatalPolicy(mode=FatalMode.STOP)) as sup:
        with pytest.raises(AuthenticationError):
            await sup.chat(model=MODEL, messages=QUESTION)
        account.refusal = None
        clock.advance(3600.0)
        with pytest.raises(AuthenticationError):
            await sup.chat(model=MODEL, messages=QUESTION)
    assert account.hits == 1


def test_the_fatal_policy_is_validated() -> None:
    with pytest.raises(ValueError, match="cool_down"):
        FatalPolicy(cool_down=0)
    with pytest.raises(ValueError, match="FatalMode"):
        FatalPolicy(mode="probe")  # type: ignore[arg-type]
