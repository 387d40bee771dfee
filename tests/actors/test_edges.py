"""Edges of the runtime: side endpoints, odd answers, timeouts, partial prefixes, early exits."""

from __future__ import annotations

import asyncio
import json
import socket
from typing import Any

import pytest
from aiohttp import web
from hostile import serve

from kimi_actors import (
    ConnectionFailedError,
    DeadlineExceededError,
    Limits,
    RequestTimeoutError,
    ResumePolicy,
    RetryPolicy,
    Supervisor,
    Timeouts,
)
from kimi_actors.testing import FakeKimi, Faults, Latency, expected_reply

MODEL = "kimi-k2-turbo-preview"
QUESTION = [{"role": "user", "content": "Say something about rate limits."}]
ONE_TRY = RetryPolicy(max_attempts=2, base=0.01, cap=0.02)


async def test_side_endpoints_answer_in_kimis_shapes() -> None:
    async with FakeKimi() as fake, \
            Supervisor(api_key=fake.api_key, base_url=fake.base_url) as sup:
        count = await sup.estimate_tokens(model=MODEL, messages=QUESTION)
        balance = await sup.balance()
        models = await sup.models()
    assert count > 0
    assert set(balance) >= {"available_balance", "voucher_balance", "cash_balance"}
    assert MODEL in models


async def test_a_json_answer_to_a_stream_request_is_delivered_as_deltas() -> None:
    """Some OpenAI-compatible servers ignore ``stream: true`` and answer with one body."""
    body = {"id": "cmpl-1", "object": "chat.completion", "model": MODEL, "choices": [
        {"index": 0, "message": {"role": "assistant", "content": "whole answer"},
         "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7}}

    async def ignore_stream(request: web.Request) -> web.Response:
        return web.json_response(body)

    async with serve(ignore_stream) as base_url, \
            Supervisor(api_key="sk-test-json-answer", base_url=base_url) as sup, \
            sup.stream(model=MODEL, messages=QUESTION) as stream:
        deltas = [delta async for delta in stream]
    assert "".join(d.content for d in deltas) == "whole answer"
    assert stream.result.usage is not None
    assert stream.result.usage.total_tokens == 7


async def test_a_users_own_partial_prefix_survives_resumes() -> None:
    prefix = {"role": "assistant", "content": "Well,", "partial": True}
    conversation: list[dict[str, Any]] = [*QUESTION, prefix]
    async with FakeKimi(faults=Faults(drop=0.4), seed=4) as fake, \
            Supervisor(api_key=fake.api_key, base_url=fake.base_url,
                       retry=RetryPolicy(base=0.01, cap=0.02, max_attempts=10),
                       resume=ResumePolicy(max_resumes=50)) as sup:
        for _ in range(5):
            async with sup.stream(model=MODEL, messages=conversation) as stream:
                text = "".join([delta.content async for delta in stream])
            assert text == expected_reply(MODEL, conversation).content
        assert sup.statistics().resumes > 0


async def test_refused_connections_are_retried_then_reported() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    async with Supervisor(api_key="sk-test-refused-conn", base_url=f"http://127.0.0.1:{port}/v1",
                          retry=ONE_TRY) as sup:
        with pytest.raises(ConnectionFailedError, match="cannot connect") as info:
            await sup.chat(model=MODEL, messages=QUESTION)
    assert info.value.attempts == 2
    assert sup.statistics().transport_errors == 2


@pytest.mark.parametrize(
    ("stream", "timeouts", "phase"),
    [(True, Timeouts(first_byte=0.1), "first_byte"), (False, Timeouts(response=0.1), "response")],
)
async def test_a_server_that_never_answers_times_out_per_phase(
        stream: bool, timeouts: Timeouts, phase: str) -> None:
    async with FakeKimi(latency=Latency(first_token=30.0)) as fake, \
            Supervisor(api_key=fake.api_key, base_url=fake.base_url, timeouts=timeouts,
                       retry=ONE_TRY) as sup:
        with pytest.raises(RequestTimeoutError) as info:
            if stream:
                async with sup.stream(model=MODEL, messages=QUESTION) as s:
                    await s.collect()
            else:
                await sup.chat(model=MODEL, messages=QUESTION)
    assert info.value.phase == phase
    assert info.value.attempts == 2


async def test_the_callers_deadline_covers_retries_and_waits() -> None:
    async with FakeKimi(latency=Latency(first_token=30.0)) as fake, \
            Supervisor(api_key=fake.api_key, base_url=fake.base_url) as sup:
        with pytest.raises(RequestTimeoutError) as info:
            await sup.chat(model=MODEL, messages=QUESTION, timeout=0.1)
        assert info.value.phase == "deadline"
        assert isinstance(info.value, DeadlineExceededError)
        assert sup.statistics().in_flight == 0


async def test_leaving_a_stream_early_closes_it_and_frees_its_slot() -> None:
    async with FakeKimi(latency=Latency(per_token=0.02)) as fake, \
            Supervisor(api_key=fake.api_key, base_url=fake.base_url,
                       limits=Limits(concurrency=1)) as sup:
        async with sup.stream(model=MODEL, messages=QUESTION) as stream:
            async for delta in stream:
                if delta.content:
                    break
        assert sup.statistics().in_flight == 0
        assert sup.statistics().actors == 0
        # The only slot is free again.
        result = await asyncio.wait_for(sup.chat(model=MODEL, messages=QUESTION), 10)
        assert result.content == expected_reply(MODEL, QUESTION).content


async def test_a_body_written_in_pieces_is_read_whole() -> None:
    body = json.dumps({"id": "cmpl-2", "object": "chat.completion", "model": MODEL, "choices": [
        {"index": 0, "message": {"role": "assistant", "content": "x" * 3000},
         "finish_reason": "stop"}]}).encode()
    pieces: list[int] = []

    async def slow_writer(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        await response.prepare(request)
        for start in range(0, len(body), 500):
            await response.write(body[start:start + 500])
            pieces.append(start)
            await asyncio.sleep(0.01)  # the scenario: a body that arrives in several pieces
        return response

    async with serve(slow_writer) as base_url, \
            Supervisor(api_key="sk-test-pieces", base_url=base_url) as sup:
        result = await sup.chat(model=MODEL, messages=QUESTION)
    assert len(pieces) == 7  # the scenario happened: seven writes, 10 ms apart
    assert result.content == "x" * 3000  # and the client read them all as one body
