"""The real openai SDK on the supervisor's transport, against FakeKimi and hostile servers.

Every test drives ``openai.AsyncOpenAI`` (or ``openai.OpenAI``) as its users do; what the SDK
returns is checked against FakeKimi's own replies and counters, never against the transport.
"""

from __future__ import annotations

import asyncio
import json
import threading
from typing import Any, cast

import httpx
import httpx2
import openai
import pytest
from aiohttp import web
from hostile import QUESTION as ASKED
from hostile import chunk, error_body, serve, start_stream
from openai.types.chat import ChatCompletionMessageParam

from kimi_actors import (
    AuthenticationError,
    ConnectionFailedError,
    DeadlineExceededError,
    LimitExceededError,
    Limits,
    ModelNotFoundError,
    ResumeMode,
    ResumePolicy,
    RetryPolicy,
    ServerError,
    Supervisor,
    SupervisorClosedError,
)
from kimi_actors.openai_sdk import BackgroundSupervisor
from kimi_actors.testing import FakeKimi, Faults, Latency, ScriptedTransport, expected_reply

MODEL = "kimi-k2-turbo-preview"
# Concurrent calls meet the faults in arrival order: enough attempts that none runs out (a
# non-stream attempt fails with p <= 0.5 here; 0.5**16 per call).
FAST_RETRY = RetryPolicy(base=0.01, cap=0.2, max_attempts=16, budget_ratio=1.0)


#: The hostile servers' question, as the SDK types its messages.
QUESTION = cast(list[ChatCompletionMessageParam], ASKED)


def ask(i: int) -> list[ChatCompletionMessageParam]:
    return [{"role": "user", "content": f"Question {i}: 你好, what is {i} + {i}?"}]


async def read_sdk_stream(client: openai.AsyncOpenAI, i: int,
                          **kwargs: Any) -> tuple[str, set[str], list[str], Any]:
    """The text, chunk ids, finish reasons and last usage an SDK stream shows."""
    stream = await client.chat.completions.create(model=MODEL, messages=ask(i), stream=True,
                                                  **kwargs)
    text, ids, finishes, usage = "", set(), [], None
    async for part in stream:
        ids.add(part.id)
        for choice in part.choices:
            text += choice.delta.content or ""
            if choice.finish_reason is not None:
                finishes.append(choice.finish_reason)
        usage = part.usage or usage
    return text, ids, finishes, usage


async def test_a_non_stream_answer_is_the_sdks_typed_completion_unchanged() -> None:
    async with FakeKimi() as fake, \
            Supervisor(api_key=fake.api_key, base_url=fake.base_url) as sup:
        client = sup.openai_client()
        completion = await client.chat.completions.create(model=MODEL, messages=ask(1))
        raw = await client.chat.completions.with_raw_response.create(model=MODEL,
                                                                     messages=ask(2))
    expected = expected_reply(MODEL, ask(1))
    assert isinstance(completion, openai.types.chat.ChatCompletion)
    assert completion.choices[0].message.content == expected.content
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage is not None
    assert completion.usage.completion_tokens == expected.completion_tokens
    assert completion.id.startswith("chatcmpl-")
    assert raw.parse().choices[0].message.content == expected_reply(MODEL, ask(2)).content
    assert raw.headers["content-type"] == "application/json"
    assert client.max_retries == 0
    assert fake.api_key not in client.api_key  # the SDK client never holds the real key


async def test_streams_and_calls_through_faults_arrive_whole_once_and_within_the_limit() -> None:
    """Drops, overload, 500s and split writes, at a binding RPM: every text exact, one id and
    one finish per stream, no 429 for a limit, and the tokens of about one clean pass."""
    limits = Limits(concurrency=12, rpm=50, minute=1.0)
    faults = Faults(drop=0.25, overload=0.05, server_error=0.05, split_writes=True)
    count = 100
    # A stream drops again after a resume with p=0.25: 5 resumes ran out for one of 66 in
    # about 1.6% of runs; 20 make that negligible.
    async with FakeKimi(limits=limits, faults=faults, seed=11) as fake, \
            Supervisor(api_key=fake.api_key, base_url=fake.base_url, limits=limits,
                       retry=FAST_RETRY, resume=ResumePolicy(max_resumes=20),
                       window_margin=0.1) as sup:
        client = sup.openai_client()

        async def one(i: int) -> bool:
            expected = expected_reply(MODEL, ask(i)).content
            if i % 3 == 0:
                completion = await client.chat.completions.create(model=MODEL, messages=ask(i))
                return completion.choices[0].message.content == expected
            text, ids, finishes, usage = await read_sdk_stream(client, i)
            return text == expected and len(ids) == 1 and finishes == ["stop"] \
                and usage is not None

        exact = await asyncio.gather(*(one(i) for i in range(count)))
        stats, served = sup.statistics(), fake.statistics()
    clean = sum(expected_reply(MODEL, ask(i)).completion_tokens for i in range(count))
    assert all(exact)
    assert stats.completed == count
    assert stats.failed == 0
    assert stats.resumes > 0
    assert served.partial_requests > 0
    assert served.faults["drop"] > 0
    assert served.faults["overload"] > 0
    assert served.faults["server_error"] > 0
    assert served.rejected["rpm"] == served.rejected["concurrency"] == 0
    assert stats.rate_limited == 0
    assert limits.rpm is not None
    assert served.peak_rpm <= limits.rpm
    assert clean <= served.completion_tokens_billed <= clean * 1.01


async def test_the_sdks_stream_helper_sees_one_healthy_stream_after_resumes() -> None:
    async with FakeKimi(faults=Faults(drop=0.5), seed=5) as fake, \
            Supervisor(api_key=fake.api_key, base_url=fake.base_url, retry=FAST_RETRY) as sup:
        client = sup.openai_client()
        for i in range(6):
            async with client.chat.completions.stream(model=MODEL, messages=ask(i)) as stream:
                events = [event.type async for event in stream]
                final = await stream.get_final_completion()
            assert final.choices[0].message.content == expected_reply(MODEL, ask(i)).content
            assert final.choices[0].finish_reason == "stop"
            assert events.count("content.done") == 1
            assert final.usage is not None
            assert final.usage.completion_tokens > 0
        resumes = sup.statistics().resumes
    assert resumes > 0  # some answers came in several segments


@pytest.mark.parametrize("transport_package", [httpx2, httpx])
async def test_frameworks_can_bring_their_own_httpx_client(transport_package: Any) -> None:
    """The transport under an httpx2 or a legacy httpx client the caller built."""
    async with FakeKimi(faults=Faults(drop=0.5), seed=2) as fake, \
            Supervisor(api_key=fake.api_key, base_url=fake.base_url, retry=FAST_RETRY) as sup:
        http_client = transport_package.AsyncClient(transport=sup.httpx_transport())
        client = openai.AsyncOpenAI(api_key="unused", base_url=sup.base_url,
                                    http_client=http_client)
        completion = await client.chat.completions.create(model=MODEL, messages=ask(4))
        text, ids, _, _ = await read_sdk_stream(client, 5)
        await http_client.aclose()
    assert completion.choices[0].message.content == expected_reply(MODEL, ask(4)).content
    assert text == expected_reply(MODEL, ask(5)).content
    assert len(ids) == 1


async def test_priority_and_tenant_come_from_headers_or_extra_body_and_stay_here() -> None:
    seen: list[dict[str, Any]] = []

    async def answer(request: web.Request) -> web.StreamResponse:
        seen.append({"body": await request.json(), "headers": dict(request.headers)})
        return web.json_response({"id": "c1", "object": "chat.completion", "created": 1,
                                  "model": MODEL, "choices": [{
                                      "index": 0, "finish_reason": "stop",
                                      "message": {"role": "assistant", "content": "ok"}}]})

    async with serve(answer) as base_url, \
            Supervisor(api_key="sk-tenant-test-key-000000", base_url=base_url) as sup:
        client = sup.openai_client(tenant="default-team")
        await client.chat.completions.create(
            model=MODEL, messages=QUESTION,
            extra_headers={"kimi-actors-tenant": "acme", "kimi-actors-priority": "2",
                           "x-trace": "t1"})
        await client.chat.completions.create(
            model=MODEL, messages=QUESTION,
            extra_body={"kimi_actors": {"tenant": "globex", "priority": 1}, "seed": 3})
        await client.chat.completions.create(model=MODEL, messages=QUESTION)
        with pytest.raises(ValueError, match="priority must be an integer"):
            await client.chat.completions.create(
                model=MODEL, messages=QUESTION, extra_headers={"kimi-actors-priority": "high"})
        tenants = sup.statistics().governor.tenants
    assert {name: t.admitted for name, t in tenants.items()} == {
        "acme": 1, "globex": 1, "default-team": 1}
    assert all("kimi_actors" not in call["body"] for call in seen)
    assert seen[1]["body"]["seed"] == 3
    assert seen[0]["headers"]["x-trace"] == "t1"
    assert all(not name.lower().startswith("kimi-actors") for call in seen
               for name in call["headers"])
    assert all(call["headers"]["Authorization"] == "Bearer sk-tenant-test-key-000000"
               for call in seen)


async def test_the_sdks_own_exception_classes_with_ours_as_the_cause() -> None:
    async with FakeKimi() as fake:
        async with Supervisor(api_key=fake.api_key, base_url=fake.base_url) as sup:
            client = sup.openai_client()
            with pytest.raises(openai.NotFoundError) as not_found:
                await client.chat.completions.create(model="kimi-nonexistent", messages=ask(1))
            with pytest.raises(openai.BadRequestError) as bad:
                await client.chat.completions.create(
                    model=MODEL,
                    messages=cast(list[ChatCompletionMessageParam],
                                  [{"role": "wizard", "content": "hi"}]))
            with pytest.raises(openai.NotFoundError):
                await client.chat.completions.create(model="kimi-nonexistent",
                                                     messages=ask(1), stream=True)
        async with Supervisor(api_key="sk-wrong-key-for-this-test-0000",
                              base_url=fake.base_url) as sup:
            with pytest.raises(openai.AuthenticationError) as denied:
                await sup.openai_client().chat.completions.create(model=MODEL, messages=ask(1))
    assert isinstance(not_found.value.__cause__, ModelNotFoundError)
    assert not_found.value.status_code == 404
    assert not_found.value.body == {"message": "Not found the model kimi-nonexistent or "
                                               "Permission denied",
                                    "type": "resource_not_found_error"}
    assert bad.value.status_code == 400
    assert "role must be one of" in bad.value.message
    assert isinstance(denied.value.__cause__, AuthenticationError)
    assert "sk-wrong-key" not in str(denied.value) + repr(denied.value.body)


async def test_a_429_the_retries_could_not_outlast_is_the_sdks_rate_limit_error() -> None:
    calls = 0

    async def refuse(request: web.Request) -> web.StreamResponse:
        nonlocal calls
        calls += 1
        return web.json_response(error_body("rate_limit_reached_error", "Your account org-1 "
                                            "request reached organization max RPM: 3, please "
                                            "try again after 1 seconds"), status=429)

    async with serve(refuse) as base_url, \
            Supervisor(api_key="sk-rate-test-key-00000000", base_url=base_url,
                       retry=RetryPolicy(base=0.01, cap=0.02, max_attempts=2)) as sup:
        with pytest.raises(openai.RateLimitError) as limited:
            await sup.openai_client().chat.completions.create(model=MODEL, messages=QUESTION)
    assert limited.value.status_code == 429
    assert calls == 2  # our retry, after the named wait; the SDK's own retries are off
    assert "max RPM" in limited.value.message
    assert limited.value.__cause__.attempts == 2  # type: ignore[union-attr]


async def test_connection_failures_and_timeouts_are_the_sdks_connection_errors() -> None:
    async with FakeKimi(latency=Latency(first_token=30.0)) as fake:
        async with Supervisor(api_key=fake.api_key, base_url=fake.base_url) as sup:
            with pytest.raises(openai.APITimeoutError) as timed_out:
                await sup.openai_client().chat.completions.create(model=MODEL, messages=ask(1),
                                                                  timeout=0.2)
        port = int(fake.base_url.split(":")[2].split("/")[0])
    dead = f"http://127.0.0.1:{port}/v1"  # FakeKimi is gone: the port refuses
    async with Supervisor(api_key="sk-connect-test-key-0000000", base_url=dead,
                          retry=RetryPolicy(base=0.01, cap=0.02, max_attempts=2)) as sup:
        with pytest.raises(openai.APIConnectionError) as refused:
            await sup.openai_client().chat.completions.create(model=MODEL, messages=ask(1))
    assert isinstance(timed_out.value.__cause__, DeadlineExceededError)
    assert type(refused.value) is openai.APIConnectionError
    assert isinstance(refused.value.__cause__, ConnectionFailedError)
    assert "cannot connect" in refused.value.message


async def test_a_stream_that_fails_mid_way_raises_after_the_text_it_delivered() -> None:
    async def break_off(request: web.Request) -> web.StreamResponse:
        response = await start_stream(request)
        await response.write(chunk("Hello", role="assistant"))
        await response.write(b'data: {"error": {"type": "server_error", '
                             b'"message": "the engine failed"}}\n\n')
        return response

    async with serve(break_off) as base_url, \
            Supervisor(api_key="sk-midway-test-key-0000000", base_url=base_url,
                       resume=ResumePolicy(max_resumes=0)) as sup:
        stream = await sup.openai_client().chat.completions.create(
            model=MODEL, messages=QUESTION, stream=True)
        text = ""
        with pytest.raises(openai.APIError) as failed:
            async for part in stream:
                text += part.choices[0].delta.content or ""
    assert text.startswith("Hello")
    assert isinstance(failed.value.__cause__, ServerError)


async def test_a_restart_after_text_reached_the_sdk_fails_instead_of_splicing() -> None:
    async with FakeKimi(faults=Faults(drop=1.0), seed=1) as fake, \
            Supervisor(api_key=fake.api_key, base_url=fake.base_url, retry=FAST_RETRY,
                       resume=ResumePolicy(mode=ResumeMode.RESTART, max_resumes=3)) as sup:
        stream = await sup.openai_client().chat.completions.create(
            model=MODEL, messages=ask(7), stream=True)
        text = ""
        with pytest.raises(openai.APIConnectionError, match="restarted answer"):
            async for part in stream:
                text += part.choices[0].delta.content or ""
        left = sup.statistics()
    assert expected_reply(MODEL, ask(7)).content.startswith(text)
    assert text
    assert left.in_flight == 0


async def test_leaving_an_sdk_stream_early_stops_its_actor() -> None:
    async with FakeKimi(latency=Latency(per_token=0.05)) as fake, \
            Supervisor(api_key=fake.api_key, base_url=fake.base_url) as sup:
        stream = await sup.openai_client().chat.completions.create(
            model=MODEL, messages=ask(8), stream=True)
        async for _ in stream:
            break
        await stream.close()
        async with asyncio.timeout(5):
            while sup.statistics().actors:  # noqa: ASYNC110 - no event for an actor's end
                await asyncio.sleep(0.01)
        stats = sup.statistics()
    assert stats.in_flight == 0
    assert stats.actors == 0


async def test_other_endpoints_pass_through_under_the_supervisors_key() -> None:
    async with FakeKimi() as fake, \
            Supervisor(api_key=fake.api_key, base_url=fake.base_url) as sup:
        models = await sup.openai_client().models.list()
    assert MODEL in [model.id for model in models.data]


async def test_a_server_that_echoes_the_key_cannot_leak_it_through_the_sdk() -> None:
    key = "sk-echoed-secret-key-0123456789"

    async def echo(request: web.Request) -> web.StreamResponse:
        said = request.headers.get("Authorization", "")
        return web.json_response(error_body("invalid_request_error", f"bad header {said}"),
                                 status=400)

    async with serve(echo) as base_url, Supervisor(api_key=key, base_url=base_url) as sup:
        with pytest.raises(openai.BadRequestError) as bad:
            await sup.openai_client().chat.completions.create(model=MODEL, messages=QUESTION)
    shown = [str(bad.value), repr(bad.value), json.dumps(bad.value.body),
             bad.value.response.text, str(bad.value.__cause__), repr(bad.value.request.headers)]
    assert all(key not in text for text in shown)
    assert "bad header" in bad.value.message


def test_synchronous_code_uses_a_background_supervisor_from_many_threads() -> None:
    fake = FakeKimi(faults=Faults(drop=0.3), seed=4)
    loop = asyncio.new_event_loop()
    server = threading.Thread(target=loop.run_forever, daemon=True)
    server.start()
    asyncio.run_coroutine_threadsafe(fake.__aenter__(), loop).result()
    try:
        with BackgroundSupervisor(api_key=fake.api_key, base_url=fake.base_url,
                                  retry=FAST_RETRY, limits=Limits(concurrency=4)) as bg:
            client = bg.openai_client()
            texts: dict[int, str] = {}

            def work(i: int) -> None:
                if i % 2:
                    completion = client.chat.completions.create(model=MODEL, messages=ask(i))
                    texts[i] = completion.choices[0].message.content or ""
                else:
                    stream = client.chat.completions.create(model=MODEL, messages=ask(i),
                                                            stream=True)
                    texts[i] = "".join(part.choices[0].delta.content or ""
                                       for part in stream if part.choices)

            threads = [threading.Thread(target=work, args=(i,)) for i in range(12)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(timeout=30)
            with pytest.raises(openai.NotFoundError):
                client.chat.completions.create(model="kimi-nonexistent", messages=ask(1))
            peak = fake.statistics().peak_concurrency
    finally:
        asyncio.run_coroutine_threadsafe(fake.__aexit__(None, None, None), loop).result()
        loop.call_soon_threadsafe(loop.stop)
        server.join()
        loop.close()
    assert texts == {i: expected_reply(MODEL, ask(i)).content for i in range(12)}
    assert peak <= 4


async def test_the_supervisor_owns_what_the_sdk_client_would_otherwise_set() -> None:
    async with FakeKimi() as fake, \
            Supervisor(api_key=fake.api_key, base_url=fake.base_url) as sup:
        with pytest.raises(TypeError, match="max_retries"):
            sup.openai_client(max_retries=3)
        client = sup.openai_client(timeout=12.0, default_headers={"x-app": "demo"})
    assert client.timeout == 12.0
    assert repr(sup.httpx_transport()).startswith("OpenAITransport(Supervisor(")


async def test_requests_refused_before_sending_are_bad_requests_or_value_errors() -> None:
    transport = ScriptedTransport()
    async with Supervisor(api_key="sk-scripted-test-key-000000", transport=transport,
                          limits=Limits(tpm=5_000)) as sup:
        client = sup.openai_client()
        with pytest.raises(openai.BadRequestError) as too_big:
            await client.chat.completions.create(model=MODEL, messages=QUESTION,
                                                 max_tokens=10_000)
        with pytest.raises(ValueError, match="must be an object"):
            await client.chat.completions.create(model=MODEL, messages=QUESTION,
                                                 extra_body={"kimi_actors": "acme"})
        with pytest.raises(ValueError, match="not deadline"):
            await client.chat.completions.create(model=MODEL, messages=QUESTION,
                                                 extra_body={"kimi_actors": {"deadline": 1}})
        with pytest.raises(ValueError, match="tenant must be a non-empty string"):
            await client.chat.completions.create(model=MODEL, messages=QUESTION,
                                                 extra_body={"kimi_actors": {"tenant": 7}})
        with pytest.raises(TypeError, match="carries chat completions only"):
            await client.models.list()
    assert isinstance(too_big.value.__cause__, LimitExceededError)
    assert too_big.value.body == {"message": str(too_big.value.__cause__),
                                  "type": "limit_exceeded_error"}
    assert transport.requests == []  # nothing was sent


def test_a_synchronous_stream_left_early_stops_its_actor() -> None:
    fake = FakeKimi(latency=Latency(per_token=0.05))
    loop = asyncio.new_event_loop()
    server = threading.Thread(target=loop.run_forever, daemon=True)
    server.start()
    asyncio.run_coroutine_threadsafe(fake.__aenter__(), loop).result()
    try:
        with BackgroundSupervisor(api_key=fake.api_key, base_url=fake.base_url) as bg:
            stream = bg.openai_client().chat.completions.create(model=MODEL, messages=ask(1),
                                                                stream=True)
            first = next(iter(stream))
            stream.close()
            actors = bg.supervisor.statistics().actors
    finally:
        asyncio.run_coroutine_threadsafe(fake.__aexit__(None, None, None), loop).result()
        loop.call_soon_threadsafe(loop.stop)
        server.join()
        loop.close()
    assert first.choices[0].delta.role == "assistant"
    assert actors == 0


async def test_a_closed_supervisor_fails_sdk_calls_as_connection_errors() -> None:
    async with FakeKimi() as fake:
        sup = Supervisor(api_key=fake.api_key, base_url=fake.base_url)
        async with sup:
            client = sup.openai_client()
        for stream in (False, True):
            with pytest.raises(openai.APIConnectionError) as closed:
                await client.chat.completions.create(model=MODEL, messages=ask(1),
                                                     stream=stream)
            assert isinstance(closed.value.__cause__, SupervisorClosedError)


def test_a_background_supervisor_refuses_misuse_with_clear_errors() -> None:
    bg = BackgroundSupervisor(transport=ScriptedTransport())
    with pytest.raises(RuntimeError, match="use it as"):
        _ = bg.supervisor
    with bg:
        with pytest.raises(RuntimeError, match="entered once"):
            bg.__enter__()

        async def from_its_own_loop() -> None:
            bg.call(asyncio.sleep(0))

        with pytest.raises(RuntimeError, match="would wait for itself"):
            bg.call(from_its_own_loop())
    with pytest.raises(RuntimeError, match="not running"):
        bg.call(asyncio.sleep(0))
