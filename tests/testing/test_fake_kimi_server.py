"""FakeKimi over loopback HTTP with a raw aiohttp client: formats byte for byte, errors,
Partial Mode, n > 1, thinking, tools, the side endpoints and the statistics."""

from __future__ import annotations

import asyncio
import json
import re
from typing import Any

import aiohttp
import pytest
from fake_kimi_helpers import WALL_TIME, Client, chat_body, sse_events

from kimi_actors.clock import FakeClock
from kimi_actors.limits import Limits
from kimi_actors.testing import (
    DEFAULT_MODELS,
    FAKE_API_KEY,
    FakeKimi,
    Faults,
    Latency,
    count_prompt_tokens,
    expected_reply,
    expected_tool_call,
)

MODEL = "moonshot-v1-8k"


def compact(data: Any) -> str:
    return json.dumps(data, ensure_ascii=False, separators=(",", ":"))


def chunk(completion_id: str, model: str, choices: list[dict[str, Any]], **extra: Any) -> bytes:
    body = {"id": completion_id, "object": "chat.completion.chunk", "created": WALL_TIME,
            "model": model, "choices": choices, **extra}
    return f"data: {compact(body)}\n\n".encode()


def delta(index: int, content: dict[str, Any], finish_reason: str | None = None,
          **extra: Any) -> dict[str, Any]:
    return {"index": index, "delta": content, "finish_reason": finish_reason, **extra}


def usage(prompt: int, completion: int) -> dict[str, int]:
    return {"prompt_tokens": prompt, "completion_tokens": completion,
            "total_tokens": prompt + completion, "cached_tokens": 0}


async def test_a_short_stream_byte_for_byte(client: Client) -> None:
    body = chat_body("say something", stream=True, max_tokens=4)
    answer = await client.chat(body)
    assert answer.status == 200
    assert answer.headers["Content-Type"] == "text/event-stream"
    completion_id = answer.events()[0]["id"]
    assert re.fullmatch(r"chatcmpl-[0-9a-f]{24}", completion_id)
    reply = expected_reply(MODEL, body["messages"], max_tokens=4)
    prompt = count_prompt_tokens(body)
    expected = b"".join([
        chunk(completion_id, MODEL, [delta(0, {"role": "assistant", "content": ""})]),
        *(chunk(completion_id, MODEL, [delta(0, {"content": piece})]) for piece in reply.pieces),
        chunk(completion_id, MODEL, [delta(0, {}, "length", usage=usage(prompt, 4))]),
        b"data: [DONE]\n\n",
    ])
    assert answer.body == expected


async def test_the_same_seed_gives_the_same_bytes(make_client: Any) -> None:
    bodies = []
    for _ in range(2):
        async with FakeKimi(seed=11, wall_time=lambda: WALL_TIME) as server:
            client = make_client(server)
            bodies.append((await client.chat(chat_body(stream=True))).body)
            bodies.append((await client.chat(chat_body())).body)
    assert bodies[:2] == bodies[2:]
    async with FakeKimi(seed=12, wall_time=lambda: WALL_TIME) as other:
        assert (await make_client(other).chat(chat_body(stream=True))).body != bodies[0]


async def test_non_stream_body_shape(client: Client) -> None:
    body = chat_body("hi", max_tokens=50)
    answer = await client.chat(body)
    assert answer.status == 200
    assert answer.headers["Content-Type"] == "application/json; charset=utf-8"
    data = answer.json()
    reply = expected_reply(MODEL, body["messages"], max_tokens=50)
    prompt = count_prompt_tokens(body)
    assert re.fullmatch(r"chatcmpl-[0-9a-f]{24}", data.pop("id"))
    assert data == {
        "object": "chat.completion", "created": WALL_TIME, "model": MODEL,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": reply.content},
                     "finish_reason": reply.finish_reason}],
        "usage": usage(prompt, reply.completion_tokens)}
    assert answer.body == compact({"id": answer.json()["id"], **data}).encode()


async def test_every_response_carries_a_request_id(client: Client) -> None:
    ids = set()
    for answer in (await client.chat(chat_body()), await client.chat(chat_body(stream=True)),
                   await client.chat(chat_body(), headers={}),
                   await client.get("/models"), await client.get("/_fake/stats"),
                   await client.get("/nowhere")):
        ids.add(answer.headers["Msh-Request-Id"])
    assert len(ids) == 6


async def test_include_usage_moves_usage_to_an_extra_chunk(client: Client) -> None:
    body = chat_body(stream=True, stream_options={"include_usage": True})
    events = (await client.chat(body)).events()
    reply = expected_reply(MODEL, body["messages"])
    assert events[-1] == "[DONE]"
    usage_chunk, finish = events[-2], events[-3]
    assert usage_chunk["choices"] == []
    assert usage_chunk["usage"] == usage(count_prompt_tokens(body), reply.completion_tokens)
    assert finish["choices"] == [delta(0, {}, "stop")]
    assert all("usage" not in choice for event in events[:-2] for choice in event["choices"])
    assert "".join(e["choices"][0]["delta"].get("content", "") for e in events[:-2]) \
        == reply.content


async def test_n_choices_interleave_by_index(client: Client) -> None:
    body = chat_body("two answers", stream=True, n=2)
    events = (await client.chat(body)).events()[:-1]
    replies = [expected_reply(MODEL, body["messages"], choice=i) for i in range(2)]
    indexes = [event["choices"][0]["index"] for event in events]
    shorter = min(len(reply.pieces) for reply in replies) + 2
    assert indexes[:2 * shorter] == [0, 1] * shorter
    total = sum(reply.completion_tokens for reply in replies)
    prompt = count_prompt_tokens(body)
    for index, reply in enumerate(replies):
        mine = [event["choices"][0] for event in events
                if event["choices"][0]["index"] == index]
        assert mine[0]["delta"] == {"role": "assistant", "content": ""}
        assert "".join(choice["delta"].get("content", "") for choice in mine) == reply.content
        assert mine[-1]["finish_reason"] == "stop"
        assert mine[-1]["usage"] == usage(prompt, total)
    non_stream = (await client.chat(chat_body("two answers", n=2))).json()
    assert [choice["message"]["content"] for choice in non_stream["choices"]] \
        == [reply.content for reply in replies]
    assert non_stream["usage"] == usage(prompt, total)
    assert replies[0].content != replies[1].content


async def test_thinking_model_streams_reasoning_first(client: Client) -> None:
    body = chat_body("think", model="kimi-k2-thinking", stream=True)
    events = (await client.chat(body)).events()[1:-2]
    reply = expected_reply("kimi-k2-thinking", body["messages"])
    deltas = [event["choices"][0]["delta"] for event in events]
    kinds = [next(iter(d)) for d in deltas]
    assert kinds == (["reasoning_content"] * len(reply.reasoning_pieces)
                     + ["content"] * len(reply.pieces))
    assert "".join(d.get("reasoning_content", "") for d in deltas) == reply.reasoning_content
    non_stream = (await client.chat(chat_body("think", model="kimi-k2-thinking"))).json()
    assert non_stream["choices"][0]["message"] == {
        "role": "assistant", "content": reply.content,
        "reasoning_content": reply.reasoning_content}


WEATHER = {"type": "function", "function": {
    "name": "get_weather",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"},
                                                    "days": {"type": "integer"}}}}}


async def test_tool_calls_stream_as_fragments(client: Client) -> None:
    body = chat_body("use the tool for Beijing", stream=True, tools=[WEATHER])
    events = (await client.chat(body)).events()
    call = expected_tool_call(MODEL, body["messages"], [WEATHER])
    assert call is not None
    assert events[-1] == "[DONE]"
    first, name, *fragments, last, _ = events
    assert first["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert name["choices"][0]["delta"] == {"tool_calls": [{
        "index": 0, "id": call.id, "type": "function",
        "function": {"name": "get_weather", "arguments": ""}}]}
    assert len(fragments) == len(call.argument_pieces) > 1
    arguments = "".join(f["choices"][0]["delta"]["tool_calls"][0]["function"]["arguments"]
                        for f in fragments)
    assert arguments == call.arguments
    assert json.loads(arguments).keys() == {"city", "days"}
    assert last["choices"][0]["finish_reason"] == "tool_calls"
    assert last["choices"][0]["usage"]["completion_tokens"] == call.completion_tokens


async def test_tool_calls_non_stream_and_switches(client: Client, make_client: Any) -> None:
    body = chat_body("call a tool", tools=[WEATHER])
    call = expected_tool_call(MODEL, body["messages"], [WEATHER])
    assert call is not None
    choice = (await client.chat(body)).json()["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    assert choice["message"] == {"role": "assistant", "content": "", "tool_calls": [{
        "index": 0, "id": call.id, "type": "function",
        "function": {"name": "get_weather", "arguments": call.arguments}}]}
    declined = (await client.chat({**body, "tool_choice": "none"})).json()["choices"][0]
    assert declined["message"]["content"] == expected_reply(MODEL, body["messages"]).content
    forced = chat_body("no request for one", tools=[WEATHER], tool_choice="required")
    assert (await client.chat(forced)).json()["choices"][0]["finish_reason"] == "tool_calls"
    async with FakeKimi(tool_calls=False) as plain:
        answer = (await make_client(plain).chat(body)).json()["choices"][0]
        assert answer["finish_reason"] == "stop"


async def test_partial_mode_continues_the_full_reply(client: Client) -> None:
    messages = [{"role": "user", "content": "tell me a story"}]
    full = expected_reply(MODEL, messages)
    long_piece = next(i for i, piece in enumerate(full.pieces) if len(piece) > 1)
    cuts = [0, len(full.pieces[0]), len("".join(full.pieces[:long_piece])) + 1,
            len(full.content) // 2, len(full.content)]
    for cut in cuts:
        prefix = full.content[:cut]
        resumed: list[dict[str, Any]] = [
            *messages, {"role": "assistant", "content": prefix, "partial": True}]
        stream = await client.chat({"model": MODEL, "messages": resumed, "stream": True})
        deltas = [event["choices"][0]["delta"] for event in stream.events()[1:-2]]
        assert prefix + "".join(d["content"] for d in deltas) == full.content
        answer = (await client.chat({"model": MODEL, "messages": resumed})).json()
        assert prefix + answer["choices"][0]["message"]["content"] == full.content
        assert answer["usage"]["completion_tokens"] == \
            expected_reply(MODEL, resumed).completion_tokens
    stats = client.fake.statistics()
    assert stats.partial_requests == 2 * len(cuts)


async def test_partial_continuation_respects_max_tokens(client: Client) -> None:
    messages = [{"role": "user", "content": "long answer"}]
    full = expected_reply(MODEL, messages)
    prefix = "".join(full.pieces[:3])
    resumed = [*messages, {"role": "assistant", "content": prefix, "partial": True}]
    answer = (await client.chat({"model": MODEL, "messages": resumed, "max_tokens": 2})).json()
    assert answer["choices"][0]["message"]["content"] == "".join(full.pieces[3:5])
    assert answer["choices"][0]["finish_reason"] == "length"


def error(message: str, error_type: str) -> dict[str, Any]:
    return {"error": {"message": message, "type": error_type}}


async def test_authentication_errors(client: Client) -> None:
    missing = await client.chat(chat_body(), headers={})
    assert missing.status == 401
    assert missing.json() == error("Invalid Authentication", "invalid_authentication_error")
    assert missing.body == compact(missing.json()).encode()
    assert missing.headers["Content-Type"] == "application/json; charset=utf-8"
    empty = await client.chat(chat_body(), headers={"Authorization": "Bearer "})
    assert empty.json() == missing.json()
    basic = await client.chat(chat_body(), headers={"Authorization": "Basic abc"})
    assert basic.json() == missing.json()
    wrong = await client.chat(chat_body(), headers={"Authorization": "Bearer sk-other"})
    assert wrong.status == 401
    assert wrong.json() == error("Incorrect API key provided", "incorrect_api_key_error")
    assert b"sk-other" not in wrong.body
    for path in ("/models", "/users/me/balance"):
        assert (await client.get(path, headers={})).status == 401
    estimate = await client.post("/tokenizers/estimate-token-count", chat_body(), headers={})
    assert estimate.status == 401


async def test_unknown_model_is_404(client: Client) -> None:
    answer = await client.chat(chat_body(model="gpt-4"))
    assert answer.status == 404
    assert answer.json() == error("Not found the model gpt-4 or Permission denied",
                                  "resource_not_found_error")


@pytest.mark.parametrize(("body", "detail"), [
    ([1, 2], "the request body must be a JSON object"),
    ({"messages": [{"role": "user", "content": "x"}]}, "model is required and must be a string"),
    ({"model": MODEL}, "messages must be a non-empty list"),
    ({"model": MODEL, "messages": []}, "messages must be a non-empty list"),
    ({"model": MODEL, "messages": ["hi"]}, "messages[0] must be an object"),
    ({"model": MODEL, "messages": [{"role": "robot", "content": "x"}]},
     "messages[0].role must be one of assistant, system, tool, user"),
    ({"model": MODEL, "messages": [{"role": "user"}]}, "messages[0].content is required"),
    ({"model": MODEL, "messages": [{"role": "user", "content": 5}]},
     "messages[0].content must be a string or a list of parts"),
    (chat_body(stream="yes"), "stream must be a boolean"),
    (chat_body(n=0), "n must be an integer between 1 and 5"),
    (chat_body(n=6), "n must be an integer between 1 and 5"),
    (chat_body(max_tokens=0), "max_tokens must be a positive integer"),
    (chat_body(max_completion_tokens="9"), "max_completion_tokens must be a positive integer"),
    (chat_body(seed=1.5), "seed must be an integer"),
    (chat_body(temperature="hot"), "temperature must be a number"),
    (chat_body(tools={"a": 1}), "tools must be a list"),
    (chat_body(stream_options=True), "stream_options must be an object"),
    ({"model": MODEL, "response_format": {"type": "json_object"},
      "messages": [{"role": "user", "content": "x"},
                   {"role": "assistant", "content": "{", "partial": True}]},
     "partial mode cannot be used with response_format json_object"),
])
async def test_bad_requests_are_400(client: Client, body: Any, detail: str) -> None:
    answer = await client.chat(body)
    assert answer.status == 400
    assert answer.json() == error(f"Invalid request: {detail}", "invalid_request_error")


async def test_bad_json_is_400(client: Client) -> None:
    answer = await client.chat(None, data=b"{not json")
    assert answer.status == 400
    assert answer.json() == error("Invalid request: the body is not valid JSON",
                                  "invalid_request_error")


async def test_an_assistant_tool_call_message_may_have_no_content(client: Client) -> None:
    body = {"model": MODEL, "messages": [
        {"role": "user", "content": "x"},
        {"role": "assistant", "content": None, "tool_calls": [{"id": "a", "type": "function",
                                                               "function": {"name": "f",
                                                                            "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "a", "content": "42"}]}
    assert (await client.chat(body)).status == 200


async def test_context_length_is_checked_with_max_tokens(client: Client) -> None:
    body = chat_body("hi")
    prompt = count_prompt_tokens(body)
    fits = await client.chat({**body, "max_tokens": 8192 - prompt})
    assert fits.status == 200
    over = await client.chat({**body, "max_tokens": 8192 - prompt + 1})
    assert over.status == 400
    assert over.json() == error("Invalid request: Your request exceeded model token limit: 8192",
                                "invalid_request_error")
    large = await client.chat({**body, "model": "kimi-k2-turbo-preview",
                               "max_tokens": 8192 - prompt + 1})
    assert large.status == 200


async def test_side_endpoints(client: Client) -> None:
    body = chat_body("你好 world 🌙")
    estimate = await client.post("/tokenizers/estimate-token-count", body)
    assert estimate.json() == {"code": 0, "data": {"total_tokens": count_prompt_tokens(body)},
                               "scode": "0x0", "status": True}
    unknown = await client.post("/tokenizers/estimate-token-count", {**body, "model": "x"})
    assert unknown.status == 404
    broken = await client.post("/tokenizers/estimate-token-count", None, data=b"]")
    assert broken.status == 400
    no_messages = await client.post("/tokenizers/estimate-token-count", {"model": MODEL})
    assert no_messages.status == 400
    models = (await client.get("/models")).json()
    assert models["object"] == "list"
    assert [model["id"] for model in models["data"]] == list(DEFAULT_MODELS)
    assert all(model["object"] == "model" and model["owned_by"] == "moonshot"
               for model in models["data"])
    balance = (await client.get("/users/me/balance")).json()
    assert balance == {"code": 0, "data": {"available_balance": 100.0, "voucher_balance": 0.0,
                                           "cash_balance": 100.0},
                       "scode": "0x0", "status": True}


async def test_models_and_key_are_configurable(make_client: Any) -> None:
    async with FakeKimi(api_key="sk-mine", models=("only-one",), balance=5.5) as server:
        client = make_client(server)
        assert client.auth == {"Authorization": "Bearer sk-mine"}
        assert (await client.chat(chat_body(model="only-one"))).status == 200
        assert (await client.chat(chat_body())).status == 404
        balance = (await client.get("/users/me/balance")).json()["data"]
        assert balance["available_balance"] == 5.5
        assert "sk-mine" not in repr(server)


async def test_statistics_count_what_happened(make_client: Any) -> None:
    clock = FakeClock()
    async with FakeKimi(clock=clock, limits=Limits(rpm=3, minute=10.0)) as server:
        client = make_client(server)
        bodies = [chat_body(f"q{i}", max_tokens=20) for i in range(3)]
        await client.chat(bodies[0])
        await client.chat({**bodies[1], "stream": True})
        await client.chat(bodies[2], headers={})
        await client.chat(chat_body(model="nope"))
        await client.chat(None, data=b"[")
        await client.chat({**bodies[2], "max_tokens": 9000})
        await client.chat(bodies[2])
        await client.chat(bodies[2])
        clock.advance(4.0)
        stats = server.statistics()
        http_stats = (await client.get("/_fake/stats", headers={})).json()
    replies = [expected_reply(MODEL, body["messages"], max_tokens=20) for body in bodies]
    prompts = [count_prompt_tokens(body) for body in bodies]
    assert stats.requests == 8
    assert stats.accepted == 3
    assert stats.completed == 3
    assert dict(stats.rejected) == {"auth": 1, "not_found": 1, "bad_request": 1,
                                    "context_length": 1, "concurrency": 0, "rpm": 1, "tpm": 0,
                                    "tpd": 0, "quota": 0, "overloaded": 0}
    assert set(stats.faults.values()) == {0}
    assert stats.peak_concurrency == 1
    assert stats.peak_rpm == 3
    assert stats.tokens_admitted == sum(prompts) + 60
    assert stats.peak_tpm == stats.tokens_admitted
    assert stats.prompt_tokens_billed == sum(prompts)
    assert stats.completion_tokens_billed == sum(reply.completion_tokens for reply in replies)
    assert stats.partial_requests == 0
    assert stats.elapsed == 4.0
    assert stats.accepted_per_second == 0.75
    assert http_stats == stats.to_json()
    assert http_stats["rejected"]["rpm"] == 1


async def test_reset_statistics_starts_over(make_client: Any) -> None:
    clock = FakeClock()
    async with FakeKimi(clock=clock) as server:
        client = make_client(server)
        await client.chat(chat_body())
        clock.advance(1.0)
        server.reset_statistics()
        stats = server.statistics()
        assert stats.requests == 0
        assert stats.accepted == 0
        assert stats.elapsed == 0.0
        assert stats.accepted_per_second == 0.0
        await client.chat(chat_body())
        assert server.statistics().accepted == 1


async def test_first_token_latency_goes_through_the_clock(make_client: Any) -> None:
    clock = FakeClock()
    async with FakeKimi(clock=clock, latency=Latency(first_token=2.0, per_token=0.5)) as server:
        client = make_client(server)
        stream = asyncio.ensure_future(client.chat(chat_body(stream=True, max_tokens=2)))
        await clock.wait_for_sleepers(1)
        assert not stream.done()
        clock.advance(2.0)
        for _ in range(4):
            await clock.wait_for_sleepers(1)
            clock.advance(0.5)
        answer = await stream
        assert answer.events()[-1] == "[DONE]"
        assert len(answer.events()) == 5
        server.set_latency(Latency())
        assert (await client.chat(chat_body())).status == 200


async def test_lifecycle_and_validation() -> None:
    server = FakeKimi()
    with pytest.raises(RuntimeError, match="not started"):
        _ = server.base_url
    assert "not started" in repr(server)
    await server.start()
    try:
        assert server.base_url.startswith("http://127.0.0.1:")
        assert server.base_url.endswith("/v1")
        assert server.api_key == FAKE_API_KEY
        assert FAKE_API_KEY not in repr(server)
        with pytest.raises(RuntimeError, match="already started"):
            await server.start()
    finally:
        await server.close()
    await server.close()


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"api_key": ""}, "api_key"), ({"limits": {"rpm": 1}}, "limits"),
    ({"faults": {"drop": 1}}, "faults"), ({"latency": 1.0}, "latency"),
    ({"seed": "1"}, "seed"), ({"port": 70000}, "port"), ({"models": "kimi"}, "models"),
    ({"models": ()}, "models"),
])
def test_constructor_validates(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        FakeKimi(**kwargs)


def test_run_time_setters_validate() -> None:
    server = FakeKimi()
    with pytest.raises(ValueError, match="Faults"):
        server.set_faults({"drop": 1.0})  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="Limits"):
        server.set_limits({"rpm": 1})  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="Latency"):
        server.set_latency(0.5)  # type: ignore[arg-type]
    server.set_faults(Faults(drop=0.5))
    server.set_limits(Limits(rpm=5))
    assert "drop=0.5" in repr(server)
    assert "rpm=5" in repr(server)


async def test_stream_events_parse_as_sse(client: Client) -> None:
    raw = (await client.chat(chat_body(stream=True))).body
    assert raw.endswith(b"\n\ndata: [DONE]\n\n")
    assert all(line.startswith(b"data: ") for line in raw.split(b"\n") if line)
    assert sse_events(raw)[-1] == "[DONE]"


async def test_a_client_can_read_many_streams_at_once(client: Client) -> None:
    bodies = [chat_body(f"stream {i}", stream=True) for i in range(50)]
    answers = await asyncio.gather(*(client.chat(body) for body in bodies))
    for body, answer in zip(bodies, answers, strict=True):
        text = "".join(e["choices"][0]["delta"].get("content", "")
                       for e in answer.events()[:-1])
        assert text == expected_reply(MODEL, body["messages"]).content


async def test_the_session_is_reusable_after_errors(session: aiohttp.ClientSession,
                                                    client: Client) -> None:
    for _ in range(3):
        assert (await client.chat(chat_body(model="nope"))).status == 404
        assert (await client.chat(chat_body())).status == 200


async def test_start_fails_cleanly_on_a_taken_port() -> None:
    async with FakeKimi() as first:
        port = int(first.base_url.rsplit(":", 1)[1].removesuffix("/v1"))
        second = FakeKimi(port=port)
        with pytest.raises(OSError, match=r"(?i)address already in use"):
            await second.start()
        with pytest.raises(RuntimeError, match="not started"):
            _ = second.base_url
        await second.close()


async def test_unknown_paths_get_a_kimi_style_404(client: Client) -> None:
    answer = await client.get("/nowhere")
    assert answer.status == 404
    assert answer.json() == error("Not found", "resource_not_found_error")
    assert answer.headers["Content-Type"] == "application/json; charset=utf-8"
