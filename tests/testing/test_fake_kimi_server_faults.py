"""Every injected fault, observed from the client side of a real loopback connection."""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

import aiohttp
import pytest
from fake_kimi_helpers import WALL_TIME, Client, chat_body, eventually

from kimi_actors.clock import FakeClock
from kimi_actors.limits import Limits
from kimi_actors.testing import FakeKimi, Faults, Latency, expected_reply
from kimi_actors.testing.faults import plan_faults

MODEL = "moonshot-v1-8k"
SEED = 5


def server(faults: Faults, **kwargs: Any) -> FakeKimi:
    return FakeKimi(faults=faults, seed=SEED, wall_time=lambda: WALL_TIME, **kwargs)


def blocks(body: bytes) -> list[bytes]:
    return [block + b"\n\n" for block in body.split(b"\n\n") if block]


async def clean_stream(make_client: Any, body: dict[str, Any], requests_before: int = 0) -> bytes:
    """The bytes the same server (same seed) sends for ``body`` without faults."""
    async with server(Faults()) as reference:
        client = make_client(reference)
        for _ in range(requests_before):
            await client.chat(chat_body("warm-up"))
        data: bytes = (await client.chat(body)).body
        return data


@pytest.mark.parametrize(("faults", "status", "message", "error_type", "name"), [
    (Faults(overload=1.0), 429, "The engine is currently overloaded, please try again later",
     "engine_overloaded_error", "overload"),
    (Faults(server_error=1.0), 500, "The server had an error while processing your request, "
     "please try again later", "server_error", "server_error"),
])
async def test_injected_error_statuses(make_client: Any, faults: Faults, status: int,
                                       message: str, error_type: str, name: str) -> None:
    async with server(faults) as fake:
        client = make_client(fake)
        for stream in (False, True):
            answer = await client.chat(chat_body(stream=stream))
            assert answer.status == status
            assert answer.json() == {"error": {"message": message, "type": error_type}}
        stats = fake.statistics()
        assert stats.faults[name] == 2
        assert stats.accepted == 0
        assert stats.requests == 2


async def test_html_502_like_a_proxy(make_client: Any) -> None:
    async with server(Faults(html_error=1.0)) as fake:
        answer = await make_client(fake).chat(chat_body())
        assert answer.status == 502
        assert answer.headers["Content-Type"] == "text/html"
        assert answer.body.startswith(b"<html>")
        assert b"502 Bad Gateway" in answer.body
        with pytest.raises(json.JSONDecodeError):
            answer.json()


async def test_quota_exhausted_rejects_every_chat_request(make_client: Any) -> None:
    async with server(Faults(quota_exhausted=True)) as fake:
        client = make_client(fake)
        for _ in range(3):
            answer = await client.chat(chat_body())
            assert answer.status == 429
            error = answer.json()["error"]
            assert error["type"] == "exceeded_current_quota_error"
            assert "exceeded your current token quota" in error["message"]
        assert (await client.get("/models")).status == 200
        assert fake.statistics().rejected["quota"] == 3
        assert fake.statistics().accepted == 0


async def test_rejected_by_a_fault_consumes_no_limit(make_client: Any) -> None:
    async with server(Faults(overload=1.0), limits=Limits(rpm=1, minute=60.0)) as fake:
        client = make_client(fake)
        for _ in range(3):
            assert (await client.chat(chat_body())).status == 429
        fake.set_faults(Faults())
        assert (await client.chat(chat_body())).status == 200
        over = await client.chat(chat_body())
        assert over.json()["error"]["type"] == "rate_limit_reached_error"
        assert fake.statistics().peak_rpm == 1


async def test_fault_decisions_follow_the_seed(make_client: Any) -> None:
    faults = Faults(overload=0.3, server_error=0.2)
    async with server(faults) as fake:
        client = make_client(fake)
        statuses = [(await client.chat(chat_body(f"q{i}"))).status for i in range(40)]
    planned = [plan_faults(faults, SEED, number).reject for number in range(1, 41)]
    expected = [{"overload": 429, "server_error": 500, None: 200}[p] for p in planned]
    assert statuses == expected
    assert {429, 500, 200} <= set(statuses)


async def read_until_broken(response: aiohttp.ClientResponse) -> bytes:
    """Everything the client receives before the body breaks off."""
    sink: list[bytes] = []
    with pytest.raises(aiohttp.ClientPayloadError):
        await read_into(response, sink)
    return b"".join(sink)


async def read_into(response: aiohttp.ClientResponse, sink: list[bytes]) -> None:
    async for data in response.content.iter_any():
        sink.append(data)  # keeps what arrived before the break


def planned_cut(faults: Faults, body: dict[str, Any], number: int = 1) -> int:
    reply = expected_reply(MODEL, body["messages"])
    events = len(reply.pieces) + 2
    return plan_faults(faults, SEED, number).cut_after(events)


async def test_drop_breaks_the_stream_without_done(make_client: Any,
                                                   session: aiohttp.ClientSession) -> None:
    faults = Faults(drop=1.0)
    body = chat_body("drop me", stream=True)
    clean = blocks(await clean_stream(make_client, body))
    async with server(faults) as fake:
        client: Client = make_client(fake)
        async with session.post(f"{fake.base_url}/chat/completions", json=body,
                                headers=client.auth) as response:
            assert response.status == 200
            received = await read_until_broken(response)
        assert b"[DONE]" not in received
        cut = planned_cut(faults, body)
        assert received == b"".join(clean[:cut])
        stats = fake.statistics()
        assert stats.faults["drop"] == 1
        assert stats.completed == 0
        assert stats.accepted == 1
        assert stats.completion_tokens_billed == max(cut - 1, 0)
        fake.set_faults(Faults())
        assert (await client.chat(chat_body())).status == 200


async def test_drops_land_at_many_points(make_client: Any) -> None:
    faults = Faults(drop=1.0)
    async with server(faults) as fake:
        client: Client = make_client(fake)
        cuts = set()
        for number in range(1, 16):
            body = chat_body(f"drop {number}", stream=True)
            async with client.session.post(f"{fake.base_url}/chat/completions", json=body,
                                           headers=client.auth) as response:
                received = await read_until_broken(response)
            count = received.count(b"\n\n")
            assert count == planned_cut(faults, body, number)
            cuts.add(count)
        assert len(cuts) > 5


async def test_drop_on_a_non_stream_request_closes_without_answer(make_client: Any) -> None:
    async with server(Faults(drop=1.0)) as fake:
        client: Client = make_client(fake)
        with pytest.raises(aiohttp.ClientConnectionError):
            await client.chat(chat_body())
        assert fake.statistics().faults["drop"] == 1
        assert fake.statistics().completion_tokens_billed == 0


async def test_stall_holds_the_stream_until_the_server_closes(
        make_client: Any, session: aiohttp.ClientSession) -> None:
    faults = Faults(stall=1.0)
    body = chat_body("stall me", stream=True, max_tokens=30)
    cut = plan_faults(faults, SEED, 1).cut_after(
        len(expected_reply(MODEL, body["messages"], max_tokens=30).pieces) + 2)
    fake = server(faults)
    await fake.start()
    try:
        client: Client = make_client(fake)
        async with session.post(f"{fake.base_url}/chat/completions", json=body,
                                headers=client.auth) as response:
            received = b""
            while received.count(b"\n\n") < cut:
                received += await response.content.readany()
            stats = fake.statistics()
            assert stats.completed == 0
            assert stats.peak_concurrency == 1
            assert stats.faults["stall"] == 1
            await asyncio.wait_for(fake.close(), timeout=5)
            rest = await read_until_broken(response)
        assert rest == b""
        assert received.count(b"\n\n") == cut
        assert b"[DONE]" not in received
    finally:
        await fake.close()


async def test_a_stalled_stream_is_freed_when_the_client_leaves(
        make_client: Any, session: aiohttp.ClientSession) -> None:
    async with server(Faults(stall=1.0), limits=Limits(concurrency=1)) as fake:
        client: Client = make_client(fake)
        async with session.post(f"{fake.base_url}/chat/completions",
                                json=chat_body(stream=True), headers=client.auth) as response:
            assert response.status == 200
            assert fake.statistics().accepted == 1
            busy = await client.chat(chat_body())
            assert busy.status == 429
            response.close()
        fake.set_faults(Faults())
        limiter = fake._limiter
        await eventually(lambda: limiter.in_flight == 0)
        assert (await client.chat(chat_body())).status == 200


async def test_stall_on_a_non_stream_request_never_answers(make_client: Any) -> None:
    fake = server(Faults(stall=1.0))
    await fake.start()
    try:
        client: Client = make_client(fake)
        request = asyncio.ensure_future(client.chat(chat_body()))
        await eventually(lambda: fake.statistics().faults["stall"] == 1)
        assert not request.done()
        await asyncio.wait_for(fake.close(), timeout=5)
        with pytest.raises(aiohttp.ClientConnectionError):
            await request
    finally:
        await fake.close()


async def test_close_returns_promptly_with_stalled_streams_open(make_client: Any) -> None:
    fake = server(Faults(stall=1.0))
    await fake.start()
    client: Client = make_client(fake)
    responses = []
    for _ in range(5):
        response = await client.session.post(f"{fake.base_url}/chat/completions",
                                             json=chat_body(stream=True), headers=client.auth)
        responses.append(response)
    await asyncio.wait_for(fake.close(), timeout=5)
    for response in responses:
        with pytest.raises(aiohttp.ClientPayloadError):
            await response.read()
        response.release()


async def test_malformed_event_mid_stream(make_client: Any) -> None:
    faults = Faults(malformed=1.0)
    body = chat_body("malformed", stream=True)
    clean = blocks(await clean_stream(make_client, body))
    async with server(faults) as fake:
        answer = await make_client(fake).chat(body)
        assert fake.statistics().faults["malformed"] == 1
        assert fake.statistics().completed == 1
    received = blocks(answer.body)
    position = plan_faults(faults, SEED, 1).malformed_at(len(clean) - 1)
    assert position is not None
    assert received[position] == b'data: {"choices": [\n\n'
    with pytest.raises(json.JSONDecodeError):
        json.loads(received[position][6:])
    assert received[:position] + received[position + 1:] == clean
    assert 1 <= position < len(clean) - 1


async def test_invalid_utf8_line_mid_stream(make_client: Any) -> None:
    faults = Faults(invalid_utf8=1.0)
    body = chat_body("bytes", stream=True)
    clean = blocks(await clean_stream(make_client, body))
    async with server(faults) as fake:
        answer = await make_client(fake).chat(body)
    received = blocks(answer.body)
    position = plan_faults(faults, SEED, 1).invalid_utf8_at(len(clean) - 1)
    assert position is not None
    assert b"\xff\xfe" in received[position]
    with pytest.raises(UnicodeDecodeError):
        received[position].decode()
    assert received[:position] + received[position + 1:] == clean
    assert received[-1] == b"data: [DONE]\n\n"


async def test_split_writes_reassemble_to_the_same_bytes(make_client: Any,
                                                         session: aiohttp.ClientSession) -> None:
    body = chat_body("split me 你好 🌙", stream=True)
    clean = await clean_stream(make_client, body)
    async with server(Faults(split_writes=True)) as fake:
        client: Client = make_client(fake)
        pieces: list[bytes] = []
        async with session.post(f"{fake.base_url}/chat/completions", json=body,
                                headers=client.auth) as response:
            async for data, _ in response.content.iter_chunks():
                pieces.append(data)
        assert fake.statistics().faults["split_writes"] == 1
    assert b"".join(pieces) == clean
    assert max(len(piece) for piece in pieces) <= 7
    assert len(pieces) >= len(clean) // 7

    def undecodable(piece: bytes) -> bool:
        try:
            piece.decode()
        except UnicodeDecodeError:
            return True
        return False

    assert any(undecodable(piece) for piece in pieces)
    assert any(b"\n\nda" in piece for piece in pieces)


async def test_split_writes_with_a_drop_still_break_the_stream(
        make_client: Any, session: aiohttp.ClientSession) -> None:
    faults = Faults(split_writes=True, drop=1.0)
    body = chat_body("split and drop", stream=True)
    clean = blocks(await clean_stream(make_client, body))
    async with server(faults) as fake:
        client: Client = make_client(fake)
        async with session.post(f"{fake.base_url}/chat/completions", json=body,
                                headers=client.auth) as response:
            received = await read_until_broken(response)
    assert received == b"".join(clean[:planned_cut(faults, body)])


async def test_split_writes_keep_events_whole_when_they_are_spaced_in_time(
        make_client: Any, session: aiohttp.ClientSession) -> None:
    body = chat_body("spaced", stream=True, max_tokens=5)
    clean = await clean_stream(make_client, body)
    clock = FakeClock()
    async with server(Faults(split_writes=True), clock=clock,
                      latency=Latency(per_token=1.0)) as fake:
        client: Client = make_client(fake)

        async def collect() -> list[bytes]:
            pieces = []
            async with session.post(f"{fake.base_url}/chat/completions", json=body,
                                    headers=client.auth) as response:
                async for data, _ in response.content.iter_chunks():
                    pieces.append(data)
            return pieces

        reading = asyncio.ensure_future(collect())
        for _ in range(len(blocks(clean)) - 1):
            await clock.wait_for_sleepers(1)
            clock.advance(1.0)
        pieces = await reading
    assert b"".join(pieces) == clean
    assert max(len(piece) for piece in pieces) <= 7
    assert all(b"\n\n" not in piece or piece.endswith(b"\n\n") for piece in pieces)


async def test_clients_leaving_mid_stream_are_not_server_errors(
        make_client: Any, session: aiohttp.ClientSession,
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.ERROR)
    async with server(Faults(split_writes=True)) as fake:
        client: Client = make_client(fake)
        for number in range(30):
            async with session.post(f"{fake.base_url}/chat/completions",
                                    json=chat_body(f"leave {number}", stream=True),
                                    headers=client.auth) as response:
                await response.content.readexactly(40)
                response.close()
        limiter = fake._limiter
        await eventually(lambda: limiter.in_flight == 0)
        assert fake.statistics().completed < 30
    assert [record.getMessage() for record in caplog.records] == []
