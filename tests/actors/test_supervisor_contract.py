"""What Supervisor() accepts and refuses, and what it says when it is used wrongly."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from test_actors_scripted import MODEL, QUESTION, autojump, completion, supervisor

from kimi_actors import (
    DEFAULT_BASE_URL,
    AuthenticationError,
    FakeClock,
    FatalMode,
    FatalPolicy,
    Limits,
    MonotonicClock,
    Supervisor,
    SupervisorClosedError,
    Timeouts,
)
from kimi_actors.governance.governor import Governor
from kimi_actors.limits import Dimension
from kimi_actors.redaction import redact_text
from kimi_actors.testing import Respond, ScriptedTransport

KEY = "sk-contract-test-key-0123456789abcdef"
SERVER_ERROR = Respond.json({"error": {"type": "server_error", "message": "internal"}},
                            status=500)


def test_a_missing_key_is_refused_with_where_to_put_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MOONSHOT_API_KEY", raising=False)
    with pytest.raises(ValueError, match=r"^no API key: pass api_key= or set MOONSHOT_API_KEY$"):
        Supervisor()


def test_the_key_and_base_url_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    key = "env-key-of-no-known-shape-7777"
    monkeypatch.setenv("MOONSHOT_API_KEY", key)
    monkeypatch.setenv("MOONSHOT_BASE_URL", "https://kimi.example/v1")
    sup = Supervisor()
    assert sup._runtime.transport.base_url == "https://kimi.example/v1"
    assert key not in redact_text(f"sent {key}")  # the key read from the environment
    monkeypatch.delenv("MOONSHOT_BASE_URL")
    assert Supervisor(api_key=KEY)._runtime.transport.base_url == DEFAULT_BASE_URL


def test_the_given_key_is_registered_as_a_secret() -> None:
    key = "an-unusual-key-shape-without-prefix-42"
    Supervisor(api_key=key)
    assert key not in redact_text(f"the server echoed {key}")


@pytest.mark.parametrize(("buffer", "accepted"), [(0, False), (1, True), (2, True)])
def test_the_stream_buffer_must_hold_one_delta(buffer: int, accepted: bool) -> None:
    if accepted:
        Supervisor(api_key=KEY, stream_buffer=buffer)
        return
    with pytest.raises(ValueError, match=r"^stream_buffer must be >= 1, got 0$"):
        Supervisor(api_key=KEY, stream_buffer=buffer)


def test_a_governor_brings_its_own_limits() -> None:
    governor = Governor(Limits(concurrency=7), clock=MonotonicClock())
    assert Supervisor(api_key=KEY, governor=governor).limits == Limits(concurrency=7)
    with pytest.raises(ValueError, match=r"^pass limits= or governor=, not both: a governor "
                                         r"has its own$"):
        Supervisor(api_key=KEY, governor=governor, limits=Limits(concurrency=7))
    assert Supervisor(api_key=KEY).limits == Limits.tier(1)


@pytest.mark.parametrize("option", [{"timeouts": Timeouts()}, {"base_url": "https://x/v1"}])
def test_a_transport_brings_its_own_timeouts_and_base_url(option: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match=r"^pass timeouts= and base_url= to the transport, "
                                         r"not both$"):
        Supervisor(transport=ScriptedTransport(), **option)


def test_the_settings_given_are_the_settings_kept() -> None:
    transport = ScriptedTransport(timeouts=Timeouts(read_idle=7.0))
    sup = Supervisor(transport=transport, limits=Limits(rpm=10), window_margin=0.2)
    assert sup.timeouts is transport.timeouts
    assert sup.drain_timeout == 30.0
    assert Supervisor(api_key=KEY, drain_timeout=2.5).drain_timeout == 2.5
    window = sup._runtime.governor._windows[Dimension.RPM]  # type: ignore[attr-defined]
    assert window.window == pytest.approx(60.0 * 1.2)
    real = Supervisor(api_key=KEY, limits=Limits(concurrency=9, rpm=5),
                      headers={"X-Team": "blue"})
    assert real._runtime.transport._pool_size == 9  # type: ignore[attr-defined]
    assert real._runtime.transport._headers["X-Team"] == "blue"  # type: ignore[attr-defined]


async def test_a_supervisor_is_entered_once_and_names_its_gate_task() -> None:
    sup = Supervisor(transport=ScriptedTransport(), clock=FakeClock())
    async with sup:
        assert sup._dispatcher is not None
        assert sup._dispatcher.get_name() == "kimi_actors.gate"
        with pytest.raises(RuntimeError, match=r"^a Supervisor can be entered once$"):
            await sup.__aenter__()
    with pytest.raises(RuntimeError, match=r"^a Supervisor can be entered once$"):
        await sup.__aenter__()


async def test_calls_outside_the_supervisors_life_say_why() -> None:
    sup = Supervisor(transport=ScriptedTransport(completion("x")), clock=FakeClock())
    with pytest.raises(SupervisorClosedError, match=r"^the supervisor is not running: use it "
                                                    r"as `async with Supervisor\(...\) as "
                                                    r"sup:`$"):
        await sup.chat(model=MODEL, messages=QUESTION)
    async with sup:
        await sup.chat(model=MODEL, messages=QUESTION)
    with pytest.raises(SupervisorClosedError, match=r"^the supervisor is closed$"):
        await sup.chat(model=MODEL, messages=QUESTION)


async def test_after_a_stop_every_call_raises_the_error_that_stopped_it() -> None:
    auth = Respond.json({"error": {"type": "invalid_authentication_error",
                                   "message": "Incorrect API key provided"}}, status=401)
    async with supervisor(ScriptedTransport(auth), FakeClock(),
                          fatal=FatalPolicy(mode=FatalMode.STOP)) as sup:
        with pytest.raises(AuthenticationError):
            await sup.chat(model=MODEL, messages=QUESTION)
        with pytest.raises(AuthenticationError):
            await sup.chat(model=MODEL, messages=QUESTION)


async def test_a_call_backing_off_when_the_supervisor_closes_fails_with_the_close() -> None:
    clock = FakeClock()
    transport = ScriptedTransport(SERVER_ERROR, completion("never"))
    async with supervisor(transport, clock) as sup:
        call = asyncio.create_task(sup.chat(model=MODEL, messages=QUESTION))
        await clock.wait_for_sleepers(1)
    with pytest.raises(SupervisorClosedError, match=r"^the supervisor is closed$"):
        await call
    assert len(transport.requests) == 1


async def test_a_calls_timeout_counts_forward_from_now() -> None:
    clock = FakeClock()
    transport = ScriptedTransport(SERVER_ERROR, completion("in time"))
    async with supervisor(transport, clock) as sup:
        result = await autojump(clock, sup.chat(model=MODEL, messages=QUESTION, timeout=100.0))
    assert result.content == "in time"
