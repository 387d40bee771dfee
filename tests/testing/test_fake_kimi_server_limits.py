"""Account limits over HTTP, with time controlled by a FakeClock: a request at the limit is
accepted, the next one is rejected with Kimi's message and the right wait."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
from fake_kimi_helpers import Answer, Client, chat_body, eventually

from kimi_actors.clock import FakeClock
from kimi_actors.limits import Limits
from kimi_actors.testing import FakeKimi, Latency, count_prompt_tokens
from kimi_actors.testing.limiter import FAKE_AK_ID, FAKE_UID

ACCOUNT = f"Your account {FAKE_UID}<{FAKE_AK_ID}> request reached organization"


def rate_limited(answer: Answer, message: str) -> None:
    assert answer.status == 429
    assert answer.json() == {"error": {"message": message, "type": "rate_limit_reached_error"}}


async def test_concurrency_counts_requests_in_flight(make_client: Any) -> None:
    clock = FakeClock()
    async with FakeKimi(clock=clock, limits=Limits(concurrency=2),
                        latency=Latency(first_token=1.0)) as fake:
        client: Client = make_client(fake)
        slow = [asyncio.ensure_future(client.chat(chat_body(f"slow {i}"))) for i in range(2)]
        await clock.wait_for_sleepers(2)
        over = await client.chat(chat_body("one too many"))
        rate_limited(over, f"{ACCOUNT} max concurrency: 2, please try again after 1 seconds")
        assert "Retry-After" not in over.headers
        clock.advance(1.0)
        assert [answer.status for answer in await asyncio.gather(*slow)] == [200, 200]
        fake.set_latency(Latency())
        assert (await client.chat(chat_body("now fits"))).status == 200
        stats = fake.statistics()
        assert stats.peak_concurrency == 2
        assert stats.rejected["concurrency"] == 1
        assert stats.accepted == 3


async def test_an_open_stream_holds_its_slot_until_it_ends(
        make_client: Any, session: aiohttp.ClientSession) -> None:
    clock = FakeClock()
    async with FakeKimi(clock=clock, limits=Limits(concurrency=1),
                        latency=Latency(per_token=1.0)) as fake:
        client: Client = make_client(fake)
        body = chat_body("a stream", stream=True, max_tokens=2)
        async with session.post(f"{fake.base_url}/chat/completions", json=body,
                                headers=client.auth) as response:
            await response.content.readuntil(b"\n\n")
            rate_limited(await client.chat(chat_body()),
                         f"{ACCOUNT} max concurrency: 1, please try again after 1 seconds")
            for _ in range(4):
                await clock.wait_for_sleepers(1)
                clock.advance(1.0)
            rest = await response.read()
        assert rest.endswith(b"data: [DONE]\n\n")
        fake.set_latency(Latency())
        assert (await client.chat(chat_body())).status == 200


async def test_an_abandoned_stream_frees_its_slot(make_client: Any,
                                                  session: aiohttp.ClientSession) -> None:
    clock = FakeClock()
    async with FakeKimi(clock=clock, limits=Limits(concurrency=1),
                        latency=Latency(per_token=1.0)) as fake:
        client: Client = make_client(fake)
        async with session.post(f"{fake.base_url}/chat/completions",
                                json=chat_body(stream=True), headers=client.auth) as response:
            await response.content.readuntil(b"\n\n")
            response.close()
        await eventually(lambda: clock.sleepers == 0)
        fake.set_latency(Latency())
        assert (await client.chat(chat_body())).status == 200
        assert fake.statistics().completed == 1


async def test_rpm_over_a_rolling_window(make_client: Any) -> None:
    clock = FakeClock()
    async with FakeKimi(clock=clock, limits=Limits(rpm=3, minute=10.0)) as fake:
        client: Client = make_client(fake)
        for step in range(3):
            assert (await client.chat(chat_body(f"r{step}"))).status == 200
            clock.advance(1.0)
        rate_limited(await client.chat(chat_body()),
                     f"{ACCOUNT} max RPM: 3, please try again after 7 seconds")
        clock.advance(6.5)
        rate_limited(await client.chat(chat_body()),
                     f"{ACCOUNT} max RPM: 3, please try again after 1 seconds")
        clock.advance(0.5)
        assert (await client.chat(chat_body())).status == 200
        rate_limited(await client.chat(chat_body()),
                     f"{ACCOUNT} max RPM: 3, please try again after 1 seconds")
        stats = fake.statistics()
        assert stats.peak_rpm == 3
        assert stats.rejected["rpm"] == 3
        assert stats.accepted == 4


async def test_tpm_counts_prompt_plus_max_tokens(make_client: Any) -> None:
    clock = FakeClock()
    body = chat_body("tokens please", max_tokens=100)
    need = count_prompt_tokens(body) + 100
    async with FakeKimi(clock=clock, limits=Limits(tpm=2 * need, minute=10.0),
                        retry_after_header=True) as fake:
        client: Client = make_client(fake)
        assert (await client.chat(body)).status == 200
        clock.advance(3.0)
        assert (await client.chat(body)).status == 200
        over = await client.chat(chat_body("tokens please", max_tokens=1))
        rate_limited(over, f"{ACCOUNT} TPM rate limit, current:{2 * need + need - 99}, "
                           f"limit:{2 * need}")
        assert over.headers["Retry-After"] == "7"
        stream_over = await client.chat({**body, "stream": True})
        assert stream_over.status == 429
        clock.advance(7.0)
        assert (await client.chat(body)).status == 200
        stats = fake.statistics()
        assert stats.tokens_admitted == 3 * need
        assert stats.peak_tpm == 2 * need
        assert stats.rejected["tpm"] == 2


async def test_tpm_without_max_tokens_reserves_the_default(make_client: Any) -> None:
    body = chat_body("default budget")
    need = count_prompt_tokens(body) + 1024
    async with FakeKimi(limits=Limits(tpm=need)) as fake:
        client: Client = make_client(fake)
        assert (await client.chat(body)).status == 200
        assert (await client.chat(body)).status == 429
        two = chat_body("two choices", n=2, max_tokens=10)
        fake.set_limits(Limits(tpm=need + count_prompt_tokens(two) + 19))
        assert (await client.chat(two)).status == 429
        fake.set_limits(Limits(tpm=need + count_prompt_tokens(two) + 20))
        assert (await client.chat(two)).status == 200


async def test_tpd_over_the_day_window(make_client: Any) -> None:
    clock = FakeClock()
    body = chat_body("daily", max_tokens=10)
    need = count_prompt_tokens(body) + 10
    async with FakeKimi(clock=clock, limits=Limits(tpd=3 * need, minute=1.0, day=100.0),
                        retry_after_header=True) as fake:
        client: Client = make_client(fake)
        for _ in range(3):
            assert (await client.chat(body)).status == 200
            clock.advance(5.0)
        over = await client.chat(body)
        rate_limited(over, f"{ACCOUNT} TPD rate limit, current:{4 * need}, limit:{3 * need}")
        assert over.headers["Retry-After"] == "85"
        clock.advance(85.0)
        assert (await client.chat(body)).status == 200
        assert fake.statistics().rejected["tpd"] == 1


async def test_retry_after_header_on_rpm_and_concurrency(make_client: Any) -> None:
    clock = FakeClock()
    async with FakeKimi(clock=clock, limits=Limits(rpm=1, minute=30.0),
                        retry_after_header=True) as fake:
        client: Client = make_client(fake)
        assert (await client.chat(chat_body())).status == 200
        clock.advance(0.25)
        over = await client.chat(chat_body())
        assert over.headers["Retry-After"] == "30"
        assert over.json()["error"]["message"].endswith("please try again after 30 seconds")


async def test_limits_can_be_measured_without_enforcing(make_client: Any) -> None:
    clock = FakeClock()
    async with FakeKimi(clock=clock, limits=Limits(rpm=1, minute=10.0),
                        enforce_limits=False) as fake:
        client: Client = make_client(fake)
        for _ in range(5):
            assert (await client.chat(chat_body())).status == 200
            clock.advance(1.0)
        assert fake.statistics().peak_rpm == 5


async def test_limits_change_at_run_time(make_client: Any) -> None:
    async with FakeKimi(limits=Limits(rpm=1)) as fake:
        client: Client = make_client(fake)
        assert (await client.chat(chat_body())).status == 200
        assert (await client.chat(chat_body())).status == 429
        fake.set_limits(Limits(rpm=2))
        assert (await client.chat(chat_body())).status == 200
        assert (await client.chat(chat_body())).status == 429


async def test_no_burst_ever_exceeds_the_limit(make_client: Any) -> None:
    clock = FakeClock()
    async with FakeKimi(clock=clock, limits=Limits(rpm=7, concurrency=100, minute=5.0)) as fake:
        client: Client = make_client(fake)
        accepted_at: list[float] = []
        for _ in range(30):
            answers = await asyncio.gather(*(client.chat(chat_body()) for _ in range(4)))
            accepted_at += [clock.now() for answer in answers if answer.status == 200]
            clock.advance(0.75)
        for start in accepted_at:
            in_window = [t for t in accepted_at if start <= t < start + 5.0]
            assert len(in_window) <= 7
        assert fake.statistics().peak_rpm == 7
        assert len(accepted_at) >= 7 * (30 * 0.75 // 5.0)


async def test_past_its_capacity_the_engine_answers_overloaded(make_client: Any) -> None:
    clock = FakeClock()
    async with FakeKimi(clock=clock, capacity=2, latency=Latency(first_token=1.0)) as fake:
        client: Client = make_client(fake)
        slow = [asyncio.ensure_future(client.chat(chat_body(f"slow {i}"))) for i in range(2)]
        await clock.wait_for_sleepers(2)
        busy = await client.chat(chat_body("one too many"))
        assert busy.status == 429
        assert busy.json() == {"error": {
            "message": "The engine is currently overloaded, please try again later",
            "type": "engine_overloaded_error"}}
        clock.advance(1.0)
        assert [answer.status for answer in await asyncio.gather(*slow)] == [200, 200]
        fake.set_latency(Latency())
        assert (await client.chat(chat_body("room again"))).status == 200
        stats = fake.statistics()
    assert stats.rejected["overloaded"] == 1
    assert stats.accepted == 3
    assert stats.rejected["concurrency"] == 0  # the engine's capacity is not an account limit


async def test_vague_rate_limits_name_neither_the_limit_nor_a_wait(make_client: Any) -> None:
    clock = FakeClock()
    async with FakeKimi(clock=clock, limits=Limits(rpm=1), vague_rate_limits=True,
                        retry_after_header=True) as fake:
        client: Client = make_client(fake)
        assert (await client.chat(chat_body("first"))).status == 200
        refused = await client.chat(chat_body("second"))
        rate_limited(refused, "We're receiving too many requests at the moment. Please wait a "
                              "moment and try again.")
        assert "Retry-After" not in refused.headers
        assert fake.statistics().rejected["rpm"] == 1


async def test_the_client_reads_a_vague_429_as_a_rate_limit_naming_nothing(
        make_client: Any) -> None:
    from kimi_actors import RateLimitError
    from kimi_actors.protocol.classify import classify_response

    async with FakeKimi(limits=Limits(rpm=1), vague_rate_limits=True) as fake:
        client: Client = make_client(fake)
        await client.chat(chat_body("first"))
        refused = await client.chat(chat_body("second"))
    outcome = classify_response(refused.status, refused.headers, refused.body)
    assert isinstance(outcome.error, RateLimitError)
    assert (outcome.dimension, outcome.limit, outcome.retry_after) == (None, None, None)


def test_capacity_must_be_a_positive_int() -> None:
    import pytest

    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match=r"FakeKimi\.capacity"):
            FakeKimi(capacity=bad)  # type: ignore[arg-type]
