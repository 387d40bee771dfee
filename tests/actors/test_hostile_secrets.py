"""The key never leaves the library, whatever a hostile server echoes, and never travels where
it should not: redaction at every exit, cleartext warnings, no redirects followed."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import socket
import traceback
import uuid
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from hostile import (
    DONE,
    MODEL,
    QUESTION,
    chunk,
    completion,
    error_body,
    raw_server,
    read_request,
    serve,
    start_stream,
)

from kimi_actors import (
    APIError,
    ConnectionFailedError,
    KimiError,
    ProtocolError,
    RedirectError,
    RetryPolicy,
    Supervisor,
)
from kimi_actors.batch import RunConfig, run_batch

#: Not shaped like a key: only the registry of the Supervisor's own key can mask it.
KEY = "moonshot-account-key-7f3a9c2e5b1d4f60"
ONCE = RetryPolicy(max_attempts=1)


def everything_shown(error: BaseException) -> str:
    """Every text a user, a log or a traceback can get out of an error."""
    parts = [str(error), repr(error), "".join(traceback.format_exception(error)),
             str(getattr(error, "__notes__", ""))]
    if isinstance(error, KimiError):
        parts.append(error.message)
    if isinstance(error, APIError):
        parts += [str(error.error_type), (error.body or b"").decode("utf-8", "replace")]
    return "\n".join(parts)


@pytest.mark.parametrize(("status", "error_type"), [
    (400, "invalid_request_error"), (401, "invalid_authentication_error"),
    (403, "permission_denied_error"), (404, "resource_not_found_error"),
    (429, "rate_limit_reached_error"), (500, "server_error"), (200, "invalid_request_error"),
])
async def test_the_key_echoed_in_an_error_body_is_masked_everywhere(
        status: int, error_type: str) -> None:
    async def echo(request: web.Request) -> web.Response:
        auth = request.headers["Authorization"]
        body = error_body(error_type, f"gateway refused header Authorization: {auth} ({KEY})")
        body["echo"] = {"authorization": auth, "type": f"{error_type}"}
        return web.json_response(body, status=status)

    async with serve(echo) as base_url, \
            Supervisor(api_key=KEY, base_url=base_url, retry=ONCE) as sup:
        with pytest.raises(APIError) as info:
            await sup.chat(model=MODEL, messages=QUESTION)
    shown = everything_shown(info.value)
    assert KEY not in shown
    assert "Authorization: Bearer [redacted] ([redacted])" in info.value.message
    assert b"[redacted]" in (info.value.body or b"")


async def test_the_key_echoed_in_an_error_chunk_of_a_stream_is_masked() -> None:
    async def echo_in_stream(request: web.Request) -> web.StreamResponse:
        response = await start_stream(request)
        await response.write(chunk("Hello", role="assistant"))
        leak = error_body("invalid_request_error",
                          f"upstream said: {request.headers['Authorization']}")
        await response.write(b"data: " + json.dumps(leak).encode() + b"\n\n")
        return response

    async with serve(echo_in_stream) as base_url, \
            Supervisor(api_key=KEY, base_url=base_url, retry=ONCE) as sup:
        got = ""
        with pytest.raises(APIError) as info:
            async with sup.stream(model=MODEL, messages=QUESTION) as stream:
                async for delta in stream:
                    got += delta.content
    assert got == "Hello"
    assert KEY not in everything_shown(info.value)
    assert "upstream said: Bearer [redacted]" in str(info.value)


async def test_the_key_quoted_by_aiohttps_parser_is_masked() -> None:
    """aiohttp quotes the raw status line, truncated: only the Bearer shape can catch it."""

    async def bad_status_line(reader: Any, writer: Any) -> None:
        _, headers, _ = await read_request(reader)
        writer.write(f"HTTP/1.1 2x0 {headers['authorization']}\r\n\r\n".encode())
        await writer.drain()

    async with raw_server(bad_status_line) as base_url, \
            Supervisor(api_key=KEY, base_url=base_url, retry=ONCE) as sup:
        with pytest.raises(ProtocolError) as info:
            await sup.chat(model=MODEL, messages=QUESTION)
    shown = everything_shown(info.value)
    assert KEY[:20] not in shown
    assert "Bearer [redacted]" in shown
    assert info.value.__cause__ is None  # aiohttp's error holds the request's headers
    assert info.value.__context__ is None


async def test_a_safe_transport_failure_keeps_its_cause() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    async with Supervisor(api_key=KEY, base_url=f"http://127.0.0.1:{port}/v1",
                          retry=ONCE) as sup:
        with pytest.raises(ConnectionFailedError) as info:
            await sup.chat(model=MODEL, messages=QUESTION)
    assert isinstance(info.value.__cause__, aiohttp.ClientConnectorError)


async def test_logs_carry_no_key_when_a_server_echoes_it(caplog: pytest.LogCaptureFixture
                                                          ) -> None:
    calls = 0

    async def echo_then_answer(request: web.Request) -> web.Response:
        nonlocal calls
        calls += 1
        if calls == 1:
            return web.json_response(
                error_body("server_error", f"backend saw {request.headers['Authorization']}"),
                status=500)
        return web.json_response(completion("fine"))

    caplog.set_level(logging.INFO, logger="kimi_actors")
    async with serve(echo_then_answer) as base_url, \
            Supervisor(api_key=KEY, base_url=base_url,
                       retry=RetryPolicy(base=0.01, cap=0.02)) as sup:
        result = await sup.chat(model=MODEL, messages=QUESTION)
    assert result.content == "fine"
    assert calls == 2
    assert any("retry" in record.getMessage() for record in caplog.records)
    assert KEY not in caplog.text


async def test_a_key_pasted_into_base_url_is_masked_in_reprs_and_errors() -> None:
    pasted = "sk-pasted0123456789abcdefghijklmnop"

    async def not_found(request: web.Request) -> web.Response:
        return web.json_response(error_body("resource_not_found_error",
                                            f"Not found: {request.path_qs}"), status=404)

    async with serve(routes={("POST", "/{tail:.*}"): not_found}) as base_url, \
            Supervisor(api_key=KEY, base_url=f"{base_url}/{pasted}?key={pasted}") as sup:
        assert pasted not in repr(sup)
        with pytest.raises(APIError) as info:
            await sup.chat(model=MODEL, messages=QUESTION)
    assert "Not found: /v1/[redacted]/chat/completions" in str(info.value)
    assert pasted not in everything_shown(info.value)


def test_the_printed_resume_command_masks_a_key_in_base_url(tmp_path: Path) -> None:
    pasted = "sk-pasted0123456789abcdefghijklmnop"
    config = RunConfig(input=tmp_path / "in.jsonl", output=tmp_path / "out.jsonl",
                       base_url=f"https://user:{pasted}@api.example/v1?api_key={pasted}")
    assert pasted not in config.command_line()
    assert pasted not in repr(config)
    assert "https://user:[redacted]@api.example/v1?api_key=[redacted]" in config.command_line()


async def test_the_batch_output_file_carries_no_echoed_key(tmp_path: Path) -> None:
    """Final errors and answers are written to the file: both echo the key here."""

    async def echo(request: web.Request) -> web.Response:
        body = await request.json()
        auth = request.headers["Authorization"]
        if body["messages"][0]["content"] == "bad":
            return web.json_response(error_body("invalid_request_error", f"bad {auth}"),
                                     status=400)
        return web.json_response(completion(f"you sent {auth} and {KEY}"))

    source = tmp_path / "requests.jsonl"
    lines = [{"custom_id": f"r{i}", "method": "POST", "url": "/v1/chat/completions",
              "body": {"model": MODEL, "messages": [{"role": "user",
                                                     "content": "bad" if i else "good"}]}}
             for i in range(2)]
    source.write_text("".join(json.dumps(line) + "\n" for line in lines))
    output = tmp_path / "answers.jsonl"
    async with serve(echo) as base_url:
        config = RunConfig(input=source, output=output, base_url=base_url)
        result = await _run_in_thread(config)
    assert result.exit_code == 1  # one final error
    text = output.read_text()
    assert KEY not in text
    records = [json.loads(line) for line in text.splitlines()]
    assert len(records) == 2
    assert text.count("[redacted]") >= 3


async def _run_in_thread(config: RunConfig) -> Any:
    stderr = io.StringIO()
    return await asyncio.to_thread(run_batch, config, stderr=stderr,
                                   environ={"MOONSHOT_API_KEY": KEY}, is_tty=False)


# -- cleartext ----------------------------------------------------------------------------


def test_plain_http_to_a_remote_host_warns_once(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="kimi_actors")
    host = f"api-{uuid.uuid4().hex}.example"  # once per process: a host no other run has used
    Supervisor(api_key=KEY, base_url=f"http://{host}/v1")
    Supervisor(api_key=KEY, base_url=f"http://{host}/v1")
    Supervisor(api_key=KEY, base_url="http://127.0.0.1:9/v1")
    Supervisor(api_key=KEY, base_url="http://localhost:9/v1")
    Supervisor(api_key=KEY, base_url="https://api.encrypted.example/v1")
    warnings = [r for r in caplog.records if "cleartext_api_key" in r.getMessage()]
    assert len(warnings) == 1
    assert host in warnings[0].getMessage()


def test_the_cli_warns_of_plain_http_to_a_remote_host(tmp_path: Path) -> None:
    source = tmp_path / "requests.jsonl"
    source.write_text("not json\n")  # stops the run before anything is sent
    stderr = io.StringIO()
    result = run_batch(RunConfig(input=source, output=tmp_path / "out.jsonl",
                                 base_url="http://api.unencrypted-cli.example/v1"),
                       stderr=stderr, environ={"MOONSHOT_API_KEY": KEY}, is_tty=False)
    assert result.exit_code == 2
    assert "plain http:// to api.unencrypted-cli.example" in stderr.getvalue()
    loopback = io.StringIO()
    run_batch(RunConfig(input=source, output=tmp_path / "out2.jsonl",
                        base_url="http://127.0.0.1:9/v1"),
              stderr=loopback, environ={"MOONSHOT_API_KEY": KEY}, is_tty=False)
    assert "plain http://" not in loopback.getvalue()


# -- redirects ----------------------------------------------------------------------------


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
@pytest.mark.parametrize("stream", [False, True])
async def test_a_redirect_to_another_origin_is_not_followed(status: int, stream: bool) -> None:
    reached: list[str] = []

    async def elsewhere(request: web.Request) -> web.Response:
        reached.append(request.headers.get("Authorization", ""))
        return web.json_response(completion("answer from elsewhere"))

    async with serve(routes={("*", "/{tail:.*}"): elsewhere}) as other:
        target = f"{other}/chat/completions"

        async def redirect(request: web.Request) -> web.Response:
            return web.Response(status=status, headers={"Location": target})

        async with serve(redirect) as base_url, \
                Supervisor(api_key=KEY, base_url=base_url) as sup:
            with pytest.raises(RedirectError) as info:
                if stream:
                    async with sup.stream(model=MODEL, messages=QUESTION) as s:
                        await s.collect()
                else:
                    await sup.chat(model=MODEL, messages=QUESTION)
    assert reached == []
    assert info.value.status == status
    assert info.value.location == target
    assert f"HTTP {status} redirect to {target}" in str(info.value)
    assert info.value.attempts == 1


@pytest.mark.parametrize("status", [301, 302, 303])
async def test_a_same_origin_redirect_that_would_turn_post_into_get_is_not_followed(
        status: int) -> None:
    gets = 0

    async def moved(request: web.Request) -> web.Response:
        return web.Response(status=status, headers={"Location": "/v2/chat/completions"})

    async def as_get(request: web.Request) -> web.Response:
        nonlocal gets
        gets += 1
        return web.json_response(completion("a GET answer"))

    async with serve(moved, routes={("GET", "/v2/chat/completions"): as_get}) as base_url, \
            Supervisor(api_key=KEY, base_url=base_url) as sup:
        with pytest.raises(RedirectError):
            await sup.chat(model=MODEL, messages=QUESTION)
    assert gets == 0


@pytest.mark.parametrize("status", [307, 308])
@pytest.mark.parametrize("stream", [False, True])
async def test_a_same_origin_307_or_308_is_followed_with_method_and_body(
        status: int, stream: bool) -> None:
    seen: list[dict[str, Any]] = []

    async def moved(request: web.Request) -> web.Response:
        return web.Response(status=status, headers={"Location": "/v2/chat/completions"})

    async def answer(request: web.Request) -> web.StreamResponse:
        body = await request.json()
        seen.append({"method": request.method, "body": body,
                     "auth": request.headers.get("Authorization")})
        if body.get("stream"):
            response = await start_stream(request)
            await response.write(chunk("moved ", role="assistant") + chunk("here", finish="stop")
                                 + DONE)
            return response
        return web.json_response(completion("moved here"))

    async with serve(moved, routes={("POST", "/v2/chat/completions"): answer}) as base_url, \
            Supervisor(api_key=KEY, base_url=base_url) as sup:
        if stream:
            async with sup.stream(model=MODEL, messages=QUESTION) as s:
                result = await s.collect()
        else:
            result = await sup.chat(model=MODEL, messages=QUESTION)
    assert result.content == "moved here"
    assert len(seen) == 1
    assert seen[0]["method"] == "POST"
    assert seen[0]["body"]["messages"] == QUESTION
    assert seen[0]["auth"] == f"Bearer {KEY}"
