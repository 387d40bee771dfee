"""Streams and answers from servers that trickle, flood, lie about usage, ignore Partial Mode
or send numbers a fast JSON parser refuses."""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from hostile import (
    DONE,
    MODEL,
    QUESTION,
    Handler,
    chunk,
    completion,
    error_body,
    partial_prefix,
    raw_server,
    read_request,
    serve,
    start_stream,
)

from kimi_actors import (
    BreakerPolicy,
    FirstByteTimeoutError,
    KimiError,
    Limits,
    ProtocolError,
    ReadIdleTimeoutError,
    RequestTimeoutError,
    ResponseTimeoutError,
    ResumePolicy,
    RetryPolicy,
    Supervisor,
    Timeouts,
    estimate_prompt_tokens,
)
from kimi_actors.testing import FakeKimi, Faults, count_prompt_tokens, expected_reply
from kimi_actors.transport import Transport

KEY = "sk-test-hostile-streams"
ONCE = RetryPolicy(max_attempts=1)
FAST = RetryPolicy(base=0.01, cap=0.05, budget_ratio=1.0)
MANY_RESUMES = ResumePolicy(max_resumes=20)


# -- time: trickles and streams that never end ---------------------------------------------


@pytest.mark.parametrize("trickle", [b": keep-alive\n\n", b"d"])
async def test_a_trickle_that_completes_no_event_times_out(trickle: bytes) -> None:
    """One keep-alive comment, or one byte of a data line, every 20 ms: bytes keep coming,
    events never do."""
    sent = 0

    async def trickler(request: web.Request) -> web.StreamResponse:
        nonlocal sent
        response = await start_stream(request)
        for _ in range(500):  # bounded: 10 s at most
            await response.write(trickle)
            sent += 1
            await asyncio.sleep(0.02)  # the scenario: a server that trickles
        return response

    async with serve(trickler) as base_url, \
            Supervisor(api_key=KEY, base_url=base_url, retry=ONCE,
                       timeouts=Timeouts(read_idle=0.3)) as sup:
        with pytest.raises(RequestTimeoutError) as info:
            async with sup.stream(model=MODEL, messages=QUESTION) as stream:
                await stream.collect()
    assert info.value.phase == "read_idle"
    assert type(info.value) is ReadIdleTimeoutError
    assert info.value.timeout == 0.3
    assert "complete stream event" in str(info.value)
    assert 5 <= sent < 100


async def test_a_stream_that_never_ends_is_bounded_by_the_response_timeout() -> None:
    async def endless(request: web.Request) -> web.StreamResponse:
        response = await start_stream(request)
        await response.write(chunk("", role="assistant"))
        for i in range(500):  # bounded: 10 s at most
            await response.write(chunk(f"word{i} "))
            await asyncio.sleep(0.02)  # the scenario: a stream that flows and never ends
        return response

    async with serve(endless) as base_url, \
            Supervisor(api_key=KEY, base_url=base_url, retry=ONCE,
                       resume=ResumePolicy(max_resumes=0),
                       timeouts=Timeouts(read_idle=0.3, response=0.6)) as sup:
        got = ""
        with pytest.raises(RequestTimeoutError) as info:
            async with sup.stream(model=MODEL, messages=QUESTION) as stream:
                async for delta in stream:
                    got += delta.content
    assert info.value.phase == "response"
    assert type(info.value) is ResponseTimeoutError
    assert got.startswith("word0 word1 ")


async def test_a_non_stream_call_has_a_first_byte_bound_of_its_own() -> None:
    async def silent(request: web.Request) -> web.Response:
        await asyncio.sleep(10)  # the scenario: a server that never answers
        return web.json_response(completion("too late"))

    async with serve(silent) as base_url, \
            Supervisor(api_key=KEY, base_url=base_url, retry=ONCE,
                       timeouts=Timeouts(non_stream_first_byte=0.2)) as sup:
        with pytest.raises(RequestTimeoutError) as info:
            await sup.chat(model=MODEL, messages=QUESTION)
    assert info.value.phase == "first_byte"
    assert type(info.value) is FirstByteTimeoutError
    assert info.value.timeout == 0.2


async def test_a_non_stream_body_that_stops_halfway_times_out_as_read_idle() -> None:
    async def halting(request: web.Request) -> web.StreamResponse:
        body = json.dumps(completion("never finished")).encode()
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        response.content_length = len(body)
        await response.prepare(request)
        await response.write(body[: len(body) // 2])
        await asyncio.sleep(10)  # the scenario: an answer that stops halfway
        return response

    async with serve(halting) as base_url, \
            Supervisor(api_key=KEY, base_url=base_url, retry=ONCE,
                       timeouts=Timeouts(read_idle=0.2)) as sup:
        with pytest.raises(RequestTimeoutError) as info:
            await sup.chat(model=MODEL, messages=QUESTION)
    assert type(info.value) is ReadIdleTimeoutError
    assert info.value.timeout == 0.2


async def test_the_transport_reports_each_request_sent_before_it_arrives() -> None:
    """``on_sent`` (the moment the rate windows count from) comes once per request sent, on a
    new connection and on a reused one, before the server has the request; a same-origin
    redirect followed is a second request."""
    events: list[str] = []

    async def answer(request: web.Request) -> web.StreamResponse:
        events.append(f"arrived {request.path}")
        if request.path.endswith("/moved"):
            raise web.HTTPPermanentRedirect("/v1/chat/completions")
        if (await request.json()).get("stream"):
            response = await start_stream(request)
            await response.write(chunk("hi", role="assistant", finish="stop") + DONE)
            return response
        return web.json_response(completion("hi"))

    routes = {("POST", "/v1/moved"): answer}
    async with serve(answer, routes=routes) as base_url:
        transport = Transport(base_url=base_url, api_key=KEY, timeouts=Timeouts())
        try:
            for _ in range(2):
                await transport.post("chat/completions", b"{}",
                                     on_sent=lambda: events.append("sent"))
            async with transport.stream("chat/completions", b'{"stream": true}',
                                        on_sent=lambda: events.append("sent")) as response:
                while await response.read_chunk():
                    pass
            await transport.post("moved", b"{}", on_sent=lambda: events.append("sent"))
        finally:
            await transport.close()
    chat = "arrived /v1/chat/completions"
    assert events == ["sent", chat, "sent", chat, "sent", chat,
                      "sent", "arrived /v1/moved", "sent", chat]


async def test_a_slow_consumer_does_not_count_against_read_idle() -> None:
    async def quick(request: web.Request) -> web.StreamResponse:
        response = await start_stream(request)
        for i in range(20):
            await response.write(chunk(f"{i} ", role="assistant" if i == 0 else None))
        await response.write(chunk("", finish="stop") + DONE)
        return response

    async with serve(quick) as base_url, \
            Supervisor(api_key=KEY, base_url=base_url, retry=ONCE, stream_buffer=2,
                       timeouts=Timeouts(read_idle=0.1)) as sup, \
            sup.stream(model=MODEL, messages=QUESTION) as stream:
        got = ""
        async for delta in stream:
            got += delta.content
            if delta.content == "0 ":
                await asyncio.sleep(0.4)  # the scenario: a consumer slower than read_idle
    assert got == "".join(f"{i} " for i in range(20))
    assert sup.statistics().resumes == 0


# -- memory: an unread stream --------------------------------------------------------------


async def test_an_unread_stream_holds_its_buffer_in_deltas_and_pauses_the_server() -> None:
    events = 200_000
    written = 0
    flooding: list[web.Request] = []

    async def flood(request: web.Request) -> web.StreamResponse:
        nonlocal written
        response = await start_stream(request)
        flooding.append(request)
        piece = b"".join(chunk("x", role="assistant" if i == 0 else None) for i in range(500))
        for _ in range(events // 500):
            await response.write(piece)
            written += 500
        await response.write(DONE)
        return response

    def pushed_back() -> bool:
        """asyncio paused the server's writing: the kernel's buffers are full."""
        protocol = flooding[0].protocol if flooding else None
        return protocol is not None and protocol.writing_paused

    async with serve(flood) as base_url, \
            Supervisor(api_key=KEY, base_url=base_url, stream_buffer=256) as sup, \
            sup.stream(model=MODEL, messages=QUESTION) as stream:
        first = await anext(stream)
        assert first.content == "x"
        await wait_until(pushed_back)
        assert stream.buffered <= 256
        assert written < events
        rest = "".join([delta.content async for delta in stream])
    assert len(first.content + rest) == events


async def wait_until(condition: Any, timeout: float = 20.0) -> None:
    """Poll a condition the server exposes no event for, failing loudly."""
    async with asyncio.timeout(timeout):
        while not condition():  # noqa: ASYNC110 - no event exists for this condition
            await asyncio.sleep(0.005)


# -- trust: reported usage and odd numbers -------------------------------------------------


async def test_absurd_reported_usage_cannot_stall_the_windows() -> None:
    answers = 0

    async def liar(request: web.Request) -> web.Response:
        nonlocal answers
        answers += 1
        usage = {"prompt_tokens": 10**15, "completion_tokens": 10**15,
                 "total_tokens": 2 * 10**15}
        return web.json_response(completion("ok", usage=usage))

    limits = Limits(tpm=100_000, tpd=1_000_000)
    async with serve(liar) as base_url, \
            Supervisor(api_key=KEY, base_url=base_url, limits=limits) as sup:
        first = await sup.chat(model=MODEL, messages=QUESTION, max_tokens=50)
        second = await asyncio.wait_for(
            sup.chat(model=MODEL, messages=QUESTION, max_tokens=50), 5)
        stats = sup.statistics()
    assert first.usage is not None
    assert first.usage.prompt_tokens == 10**15  # the result says what the server said
    assert second.content == "ok"
    assert answers == 2
    assert stats.usage_anomalies == 2
    assert stats.completion_tokens == 100  # bounded by the budget of 50 each
    assert 0 < stats.prompt_tokens < 2_000  # bounded by the bytes the prompt was sent in
    assert stats.governor.dimensions["tpm"].used < 5_000
    assert stats.governor.dimensions["tpd"].used < 5_000


async def test_a_number_beyond_a_double_does_not_drop_the_answer() -> None:
    calls = 0

    async def huge_number(request: web.Request) -> web.Response:
        nonlocal calls
        calls += 1
        body = json.dumps(completion("kept")).replace('"prompt_tokens": 9',
                                                      '"prompt_tokens": 1e400')
        assert "1e400" in body
        return web.Response(text=body, content_type="application/json")

    async with serve(huge_number) as base_url, \
            Supervisor(api_key=KEY, base_url=base_url) as sup:
        result = await sup.chat(model=MODEL, messages=QUESTION)
    assert result.content == "kept"
    assert calls == 1
    assert result.usage is not None
    assert result.usage.completion_tokens == 2


async def test_a_stream_chunk_with_a_huge_number_is_read() -> None:
    async def huge_in_stream(request: web.Request) -> web.StreamResponse:
        response = await start_stream(request)
        await response.write(chunk("big ", role="assistant"))
        event = chunk("number", finish="stop").replace(b'"created": 1', b'"created": 1e400')
        await response.write(event + DONE)
        return response

    async with serve(huge_in_stream) as base_url, \
            Supervisor(api_key=KEY, base_url=base_url, retry=ONCE) as sup, \
            sup.stream(model=MODEL, messages=QUESTION) as stream:
        result = await stream.collect()
    assert result.content == "big number"


def _chunk_failing_at_its_second_choice() -> bytes:
    """An event whose first choice is fine ("half") and whose second is malformed."""
    bad = json.loads(chunk("half")[len(b"data: "):])
    bad["choices"].append({"index": 1, "delta": "not an object", "finish_reason": None})
    return b"data: " + json.dumps(bad).encode() + b"\n\n"


async def _texts_until_the_error(handler: Handler, received: asyncio.Event | None = None,
                                 ) -> tuple[list[str], ProtocolError]:
    """The texts a stream from ``handler`` delivers before its ProtocolError (``received``
    is set at each one)."""
    texts: list[str] = []
    async with serve(handler) as base_url, \
            Supervisor(api_key=KEY, base_url=base_url, retry=ONCE) as sup, \
            sup.stream(model=MODEL, messages=QUESTION) as stream:
        with pytest.raises(ProtocolError) as info:
            async for delta in stream:
                if not delta.restart:
                    texts.append(delta.content)
                    if received is not None:
                        received.set()
    return texts, info.value


async def test_a_chunk_that_fails_delivers_none_of_its_deltas() -> None:
    """One network read: a good chunk, then a chunk whose first choice is fine and whose
    second is malformed. Every attempt delivers the good chunk's delta and none of the
    failing chunk's (the reader cuts back what it appended), then the stream ends with the
    typed error (each attempt's failure is retried from the start, up to the resume
    limit)."""
    event = _chunk_failing_at_its_second_choice()

    async def fails_mid_read(request: web.Request) -> web.StreamResponse:
        response = await start_stream(request)
        await response.write(chunk("ok ", role="assistant") + event + DONE)
        return response

    texts, error = await _texts_until_the_error(fails_mid_read)
    assert texts
    assert set(texts) == {"ok "}
    assert "choices[1].delta must be an object" in str(error)


async def test_a_chunk_that_fails_alone_in_its_read_delivers_none_of_its_deltas() -> None:
    """As above, with the failing chunk in a network read of its own (the reader's path for
    a stream sent event by event): the server sends it only once the consumer has the good
    chunk's delta."""
    event = _chunk_failing_at_its_second_choice()
    received = asyncio.Event()

    async def fails_in_its_own_read(request: web.Request) -> web.StreamResponse:
        response = await start_stream(request)
        await response.write(chunk("ok ", role="assistant"))
        await received.wait()
        await response.write(event)  # alone: it ends the stream before any [DONE]
        return response

    texts, error = await _texts_until_the_error(fails_in_its_own_read, received)
    assert texts
    assert set(texts) == {"ok "}
    assert "choices[1].delta must be an object" in str(error)


async def test_truncated_json_says_precisely_what_is_wrong() -> None:
    async def truncated(request: web.Request) -> web.Response:
        return web.Response(text='{"id": "x", "choices": [{"index": 0,',
                            content_type="application/json")

    async with serve(truncated) as base_url, \
            Supervisor(api_key=KEY, base_url=base_url, retry=ONCE) as sup:
        with pytest.raises(ProtocolError) as info:
            await sup.chat(model=MODEL, messages=QUESTION)
    assert "at line 1 column 37" in str(info.value)


# -- Partial Mode ignored ------------------------------------------------------------------

ANSWER = "Hello wörld, this answer is long enough to show a repeat."


def _pieces(text: str) -> list[str]:
    return [text[i:i + 4] for i in range(0, len(text), 4)]


async def test_a_server_that_ignores_partial_mode_is_detected_and_restarted() -> None:
    """The server drops the first attempt of each stream mid-way, and answers every request
    from the start, partial or not: the consumer gets a restart delta instead of
    'Hello Hello wörld'."""
    requests: list[dict[str, Any]] = []
    drop_next = True

    async def ignores_partial(request: web.Request) -> web.StreamResponse:
        nonlocal drop_next
        body = await request.json()
        requests.append(body)
        drop, drop_next = drop_next, False
        response = await start_stream(request)
        for i, piece in enumerate(_pieces(ANSWER)):
            await response.write(chunk(piece, role="assistant" if i == 0 else None))
            if drop and i == 5:
                assert request.transport is not None
                request.transport.close()  # the drop
                return response
        await response.write(chunk("", finish="stop") + DONE)
        return response

    async with serve(ignores_partial) as base_url, \
            Supervisor(api_key=KEY, base_url=base_url, retry=FAST) as sup:
        text, restarts = "", 0
        async with sup.stream(model=MODEL, messages=QUESTION) as stream:
            async for delta in stream:
                if delta.restart:
                    text, restarts = "", restarts + 1
                text += delta.content
        assert text == ANSWER
        assert stream.result.content == ANSWER
        assert restarts == 1
        assert [partial_prefix(body) is not None for body in requests] == [False, True, False]
        # Remembered for the endpoint: the next drop restarts without trying Partial Mode.
        requests.clear()
        drop_next = True
        async with sup.stream(model=MODEL, messages=QUESTION) as again:
            result = await again.collect()
        assert result.content == ANSWER
        assert [partial_prefix(body) is not None for body in requests] == [False, False]
        assert sup.statistics().restarts == 2


async def test_a_400_that_names_partial_turns_the_resume_into_a_restart() -> None:
    requests: list[dict[str, Any]] = []

    async def refuses_partial(request: web.Request) -> web.StreamResponse:
        body = await request.json()
        requests.append(body)
        if partial_prefix(body) is not None:
            return web.json_response(error_body(
                "invalid_request_error", "Extra inputs are not permitted: messages.1.partial"),
                status=400)
        response = await start_stream(request)
        for i, piece in enumerate(_pieces(ANSWER)):
            await response.write(chunk(piece, role="assistant" if i == 0 else None))
            if len(requests) == 1 and i == 3:
                assert request.transport is not None
                request.transport.close()
                return response
        await response.write(chunk("", finish="stop") + DONE)
        return response

    async with serve(refuses_partial) as base_url, \
            Supervisor(api_key=KEY, base_url=base_url, retry=FAST) as sup:
        text = ""
        async with sup.stream(model=MODEL, messages=QUESTION) as stream:
            async for delta in stream:
                text = "" if delta.restart else text
                text += delta.content
    assert text == ANSWER
    assert [partial_prefix(body) is not None for body in requests] == [False, True, False]


async def test_a_continuation_that_really_continues_is_not_mistaken_for_a_repeat() -> None:
    async with FakeKimi(faults=Faults(drop=0.3), seed=11) as fake, \
            Supervisor(api_key=fake.api_key, base_url=fake.base_url, retry=FAST,
                       resume=MANY_RESUMES) as sup:
        texts = await asyncio.gather(*(_read(sup, i) for i in range(30)))
        stats = sup.statistics()
    for i, (text, restarts) in enumerate(texts):
        assert text == expected_reply(MODEL, _question(i)).content
        assert restarts == 0
    assert stats.resumes > 5
    assert stats.restarts == 0


def _question(i: int) -> list[dict[str, Any]]:
    return [{"role": "user", "content": f"Tell me about rate limits, part {i}."}]


async def _read(sup: Supervisor, i: int, **body: Any) -> tuple[str, int]:
    text, restarts = "", 0
    async with sup.stream(model=MODEL, messages=_question(i), **body) as stream:
        async for delta in stream:
            if delta.restart:
                text, restarts = "", restarts + 1
            text += delta.content
    return text, restarts


# -- the budget under both spellings -------------------------------------------------------


@pytest.mark.parametrize("spelling", ["max_tokens", "max_completion_tokens"])
async def test_resumed_streams_keep_the_budget_in_either_spelling(spelling: str) -> None:
    async with FakeKimi(faults=Faults(drop=0.3), seed=4) as fake, \
            Supervisor(api_key=fake.api_key, base_url=fake.base_url, retry=FAST,
                       resume=MANY_RESUMES) as sup:
        texts = await asyncio.gather(*(_read(sup, i, **{spelling: 12}) for i in range(40)))
        stats = sup.statistics()
    assert stats.resumes > 5
    for i, (text, _) in enumerate(texts):
        assert text == expected_reply(MODEL, _question(i), max_tokens=12).content


@pytest.mark.parametrize("spelling", ["max_tokens", "max_completion_tokens"])
async def test_continue_on_length_keeps_the_budget_in_either_spelling(spelling: str) -> None:
    async with FakeKimi() as fake, \
            Supervisor(api_key=fake.api_key, base_url=fake.base_url,
                       resume=ResumePolicy(continue_on_length=2)) as sup:
        budget: dict[str, Any] = {spelling: 5}
        async with sup.stream(model=MODEL, messages=_question(1), **budget) as stream:
            result = await stream.collect()
        partials = fake.statistics().partial_requests
    assert sup.statistics().length_continuations == 2
    assert partials == 2
    assert result.content == expected_reply(MODEL, _question(1), max_tokens=15).content


# -- the breaker --------------------------------------------------------------------------


async def test_dropped_streams_that_were_flowing_do_not_trip_the_breaker() -> None:
    breaker = BreakerPolicy(min_calls=5, failure_rate=0.2, window=30)
    async with FakeKimi(faults=Faults(drop=0.3), seed=2) as fake, \
            Supervisor(api_key=fake.api_key, base_url=fake.base_url, retry=FAST,
                       breaker=breaker) as sup:
        texts = await asyncio.gather(*(_read(sup, i) for i in range(60)))
        stats = sup.statistics()
    assert all(text == expected_reply(MODEL, _question(i)).content
               for i, (text, _) in enumerate(texts))
    assert stats.resumes >= 10
    assert stats.breaker_trips == 0


async def test_connection_failures_before_a_response_still_trip_the_breaker() -> None:
    async def reset(request: web.Request) -> web.StreamResponse:
        assert request.transport is not None
        request.transport.close()
        return web.Response()

    breaker = BreakerPolicy(min_calls=3, failure_rate=0.5, window=30)
    async with serve(reset) as base_url, \
            Supervisor(api_key=KEY, base_url=base_url, breaker=breaker,
                       retry=RetryPolicy(max_attempts=1)) as sup:
        for _ in range(3):
            with pytest.raises(Exception):  # noqa: B017, PT011 - any transport error will do
                async with sup.stream(model=MODEL, messages=QUESTION) as stream:
                    await stream.collect()
        assert sup.statistics().breaker_trips == 1


# -- an estimate that errs both ways -------------------------------------------------------


@pytest.mark.parametrize("kind", ["under", "over"])
async def test_settle_and_429s_absorb_an_estimate_that_errs(kind: str) -> None:
    """FakeKimi counts on its own: digit-heavy prompts count more than the client estimates,
    plain prose less. At a binding TPM limit, every request is still answered, the server's
    window never goes over, and the 429s stay few."""
    def prompt(i: int) -> str:
        if kind == "under":
            return f"ids {i:06d}{i * 7919:012d}{i * 104729:012d} and {i * 31337:015d}"
        return f"Please explain, briefly and clearly, rate limit number {i} to a new user."

    bodies = [[{"role": "user", "content": prompt(i)}] for i in range(24)]
    estimates = [estimate_prompt_tokens({"messages": m}) for m in bodies]
    counts = [count_prompt_tokens({"messages": m}) for m in bodies]
    assert all((c > e) if kind == "under" else (c < e) for c, e in zip(counts, estimates,
                                                                          strict=True))
    limits = Limits(tpm=6 * (max(counts + estimates) + 16), minute=1.0)
    async with FakeKimi(limits=limits) as fake, \
            Supervisor(api_key=fake.api_key, base_url=fake.base_url, limits=limits,
                       retry=FAST) as sup:
        results = await asyncio.gather(*(sup.chat(model=MODEL, messages=m, max_tokens=16)
                                         for m in bodies))
        stats, server = sup.statistics(), fake.statistics()
    assert len(results) == 24
    assert limits.tpm is not None
    assert server.peak_tpm <= limits.tpm
    assert stats.rate_limited <= 6
    assert stats.governor.tokens_settled == sum(counts) + 24 * 16


@pytest.mark.parametrize("ending", ["end", "reset"])
async def test_a_read_that_never_waits_gives_what_arrived_and_nothing_more(ending: str) -> None:
    """``read_nowait``: the bytes already received, ``None`` while the server is silent,
    ``b""`` at the end, and a broken connection as our error."""
    go = asyncio.Event()
    first, rest = chunk("one", role="assistant"), chunk("two", finish="stop") + DONE

    async def respond(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        # A length the reset falls short of: the body is cut, not ended.
        length = len(first + rest) + (100 if ending == "reset" else 0)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                     b"Content-Length: %d\r\n\r\n" % length + first)
        await writer.drain()
        await go.wait()
        writer.write(rest)
        await writer.drain()
        if ending == "reset":
            writer.transport.abort()

    async with raw_server(respond) as base_url:
        transport = Transport(base_url=base_url, api_key=KEY, timeouts=Timeouts())
        try:
            async with transport.stream("chat/completions", b'{"stream": true}') as response:
                received = b""
                while len(received) < len(first):
                    received += await response.read_chunk()
                assert received == first
                assert response.read_nowait() is None  # the server waits: so would a read
                go.set()
                content = response._response.content
                if ending == "end":
                    await content.wait_eof()  # everything arrived, nothing taken
                    assert response.read_nowait() == rest
                    assert response.read_nowait() == b""
                    assert response.read_nowait() == b""
                else:
                    with contextlib.suppress(aiohttp.ClientError):
                        await content.wait_eof()  # the cut arrived
                    with pytest.raises(KimiError) as info:
                        for _ in range(3):  # what arrived before the cut may come first
                            response.read_nowait()
                    assert KEY not in repr(info.value)
        finally:
            await transport.close()
