"""A web backend that streams Kimi's answers to browsers, from one shared Supervisor.

One Supervisor per process, created in the app's ``cleanup_ctx`` so it starts with the app and
drains when the app stops: every request handler uses it, so all of them together stay within
the account's limits, share one connection pool and one circuit breaker. Each user is a
tenant: the account's capacity is shared fairly between the users waiting (one user's burst of
questions cannot hold back another's one), and each user may have two answers streaming at
once. Endpoints:

* ``GET /`` a page that asks and shows the answer as it streams (``?user=..&q=..`` asks at
  once);
* ``GET /ask/sse?q=...&user=...`` the answer as server-sent events for ``EventSource``:
  ``event: delta`` (``{"content": ...}``), ``event: restart`` when the answer starts over,
  ``event: end`` (``{"finish_reason": ...}``), ``event: failed`` (``{"error": ...}``; not
  ``error``, which is EventSource's own name for a lost connection), then ``event: done``
  with ``data: [DONE]``, on which the page closes its EventSource (left open, a browser
  reconnects every 3 s, and every reconnect would be a new billed call). A comment line
  keeps the connection alive while the answer is slow, and ``X-Accel-Buffering: no`` keeps a
  proxy such as nginx from holding the events back;
* ``GET /ask?q=...&user=...`` the answer as plain text chunks;
* ``GET /stats`` the Supervisor's statistics as JSON;
* ``GET /metrics`` the OpenTelemetry metrics for Prometheus to scrape: the GenAI call
  durations, token usage and time to first chunk, and the runtime's queue depth, in-flight
  attempts, limit use, 429s, retries, resumes and breaker state (with the ``otel`` extra, the
  OpenTelemetry SDK and ``opentelemetry-exporter-prometheus`` installed; otherwise 501).

A client that goes away mid-answer makes the next write fail; leaving the ``async with
sup.stream(...)`` block then closes the upstream connection and frees its slot at once.

By default (without ``--real``) an embedded FakeKimi answers, dropping some
streams so resumes happen. ``--self-test`` starts the app on a free loopback port, asks it a
few questions over both endpoints at once, checks the answers and exits.

    python examples/web_backend.py [--real] [--host 127.0.0.1] [--port 8080]
    python examples/web_backend.py --self-test [--questions 4]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
from collections.abc import AsyncIterator
from dataclasses import asdict

import aiohttp
from aiohttp import web

from kimi_actors import (
    Delta,
    KimiError,
    Limits,
    SchedulePolicy,
    Stream,
    Supervisor,
    TenantPolicy,
)
from kimi_actors.testing import FakeKimi, Faults, Latency, expected_reply

MODEL = "kimi-k2.6"
MAX_TOKENS = 80
#: A comment line is sent when no event went out for this long (proxies drop idle streams).
KEEP_ALIVE = 15.0
#: Each user shares the account fairly with the others, with at most two answers at once.
SCHEDULE = SchedulePolicy(tenant_default=TenantPolicy(limits=Limits(concurrency=2)))
SUPERVISOR = web.AppKey("supervisor", Supervisor)
FAKE = web.AppKey("fake", FakeKimi)
USE_FAKE = web.AppKey("use_fake", bool)


def _messages(question: str) -> list[dict[str, str]]:
    return [{"role": "system", "content": "You are a concise assistant."},
            {"role": "user", "content": question}]


async def fake_ctx(app: web.Application) -> AsyncIterator[None]:
    """Start an embedded FakeKimi first (cleanup contexts start in order, stop in reverse)."""
    if app[USE_FAKE]:
        async with FakeKimi(faults=Faults(drop=0.2), latency=Latency(per_token=0.002),
                            seed=3) as fake:
            app[FAKE] = fake
            yield
    else:
        yield


async def supervisor_ctx(app: web.Application) -> AsyncIterator[None]:
    """The one Supervisor of this process: entered at startup, drained at shutdown."""
    fake = app.get(FAKE)
    async with Supervisor(api_key=fake.api_key if fake else None,
                          base_url=fake.base_url if fake else None,
                          limits=Limits.tier(1), schedule=SCHEDULE,
                          drain_timeout=10.0) as sup:
        app[SUPERVISOR] = sup
        yield


def _question(request: web.Request) -> str:
    question = request.query.get("q", "").strip()
    if not question:
        raise web.HTTPBadRequest(text="ask something: ?q=...")
    return question


def _user(request: web.Request) -> str:
    """The tenant: here a query parameter; in a real app, the logged-in user."""
    return request.query.get("user", "").strip()[:64] or "anonymous"


async def with_keep_alive(stream: Stream, interval: float) -> AsyncIterator[Delta | None]:
    """The stream's deltas, and ``None`` whenever ``interval`` seconds pass without one."""
    deltas = aiter(stream)
    while True:
        waiting = asyncio.ensure_future(anext(deltas))
        try:
            while not (await asyncio.wait({waiting}, timeout=interval))[0]:
                yield None
            try:
                delta = waiting.result()
            except StopAsyncIteration:
                return
        finally:
            waiting.cancel()
        yield delta


async def ask_text(request: web.Request) -> web.StreamResponse:
    """Plain text, written as the deltas arrive."""
    question = _question(request)
    sup = request.app[SUPERVISOR]
    response = web.StreamResponse(headers={"Content-Type": "text/plain; charset=utf-8",
                                           "Cache-Control": "no-cache",
                                           "X-Accel-Buffering": "no"})
    await response.prepare(request)
    try:
        async with sup.stream(model=MODEL, messages=_messages(question),
                              max_tokens=MAX_TOKENS, tenant=_user(request)) as stream:
            async for delta in stream:
                if delta.restart:
                    await response.write(b"\n[the answer starts over]\n")
                elif delta.content:
                    await response.write(delta.content.encode())
    except KimiError as exc:
        await response.write(f"\n[error: {type(exc).__name__}]\n".encode())
    except ConnectionResetError:
        return response  # the client left; the stream is closed already
    await response.write_eof()
    return response


async def ask_sse(request: web.Request) -> web.StreamResponse:
    """Server-sent events for EventSource: see the module docstring for the event names."""
    question = _question(request)
    sup = request.app[SUPERVISOR]
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream",
                                           "Cache-Control": "no-cache",
                                           "X-Accel-Buffering": "no"})
    await response.prepare(request)

    async def send(event: str, data: str) -> None:
        await response.write(f"event: {event}\ndata: {data}\n\n".encode())

    try:
        await response.write(b": connected\n\n")
        try:
            async with sup.stream(model=MODEL, messages=_messages(question),
                                  max_tokens=MAX_TOKENS, tenant=_user(request)) as stream:
                async for delta in with_keep_alive(stream, KEEP_ALIVE):
                    if delta is None:
                        await response.write(b": keep-alive\n\n")
                    elif delta.restart:
                        await send("restart", "{}")
                    elif delta.content:
                        await send("delta", json.dumps({"content": delta.content},
                                                       ensure_ascii=False))
            await send("end", json.dumps({"finish_reason": stream.result.finish_reason}))
        except KimiError as exc:
            await send("failed", json.dumps({"error": type(exc).__name__}))
        await send("done", "[DONE]")
        await response.write_eof()
    except ConnectionResetError:
        pass  # the client left; leaving the block closed the upstream stream
    return response


PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>Ask Kimi</title>
<style>
  body { font: 16px/1.5 system-ui, sans-serif; max-width: 44rem; margin: 2rem auto; }
  #answer { white-space: pre-wrap; border: 1px solid #ccc; padding: 1rem; min-height: 4rem; }
  #status { color: #666; }
</style>
</head>
<body>
<h1>Ask Kimi</h1>
<form id="ask">
  <input id="user" placeholder="your name" required>
  <input id="q" placeholder="your question" size="40" required>
  <button>Ask</button>
</form>
<p id="status">idle</p>
<div id="answer"></div>
<script>
"use strict";
const answer = document.getElementById("answer");
const statusLine = document.getElementById("status");
let source = null;

function ask(user, question) {
  if (source) source.close();
  answer.textContent = "";
  statusLine.textContent = "streaming";
  const url = "/ask/sse?" + new URLSearchParams({user: user, q: question});
  source = new EventSource(url);
  source.addEventListener("delta", (e) => {
    answer.textContent += JSON.parse(e.data).content;
  });
  source.addEventListener("restart", () => { answer.textContent = ""; });
  source.addEventListener("end", (e) => {
    statusLine.textContent = "finished: " + JSON.parse(e.data).finish_reason;
  });
  source.addEventListener("failed", (e) => {
    statusLine.textContent = "failed: " + JSON.parse(e.data).error;
  });
  source.addEventListener("done", () => {
    source.close();  // left open, the browser would reconnect: a new, billed question
    statusLine.textContent += " (done)";
  });
  source.onerror = () => {
    if (source.readyState !== EventSource.CLOSED) {
      source.close();
      statusLine.textContent = "connection lost";
    }
  };
}

document.getElementById("ask").addEventListener("submit", (e) => {
  e.preventDefault();
  ask(document.getElementById("user").value, document.getElementById("q").value);
});
const params = new URLSearchParams(location.search);
if (params.get("user") && params.get("q")) {
  document.getElementById("user").value = params.get("user");
  document.getElementById("q").value = params.get("q");
  ask(params.get("user"), params.get("q"));
}
</script>
</body>
</html>
"""


async def page(request: web.Request) -> web.Response:
    return web.Response(text=PAGE, content_type="text/html")


async def stats(request: web.Request) -> web.Response:
    snapshot = asdict(request.app[SUPERVISOR].statistics())
    return web.json_response(snapshot, dumps=lambda data: json.dumps(data, default=str))


def setup_metrics() -> bool:
    """Make OpenTelemetry's Prometheus exporter the process's metrics reader (once per
    process, at start-up, as an application would). False when it is not installed."""
    global _metrics_ready
    if _metrics_ready is None:
        try:
            from opentelemetry import metrics
            from opentelemetry.exporter.prometheus import PrometheusMetricReader
            from opentelemetry.sdk.metrics import MeterProvider
        except ImportError:
            _metrics_ready = False
        else:
            metrics.set_meter_provider(MeterProvider(metric_readers=[PrometheusMetricReader()]))
            _metrics_ready = True
    return _metrics_ready


_metrics_ready: bool | None = None


async def prometheus(request: web.Request) -> web.Response:
    """The metrics in Prometheus' text format (what ``prometheus_client`` collects)."""
    if not setup_metrics():
        raise web.HTTPNotImplemented(text="pip install 'kimi-actors[otel]' opentelemetry-sdk "
                                          "opentelemetry-exporter-prometheus")
    from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

    body = await asyncio.to_thread(generate_latest)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


def build_app(use_fake: bool) -> web.Application:
    setup_metrics()
    app = web.Application()
    app[USE_FAKE] = use_fake
    app.cleanup_ctx.append(fake_ctx)
    app.cleanup_ctx.append(supervisor_ctx)
    app.router.add_get("/", page)
    app.router.add_get("/ask", ask_text)
    app.router.add_get("/ask/sse", ask_sse)
    app.router.add_get("/stats", stats)
    app.router.add_get("/metrics", prometheus)
    return app


async def _read_sse(response: aiohttp.ClientResponse) -> str:
    """The answer the page would show: delta events, reset on ``restart``."""
    text: list[str] = []
    event = ""
    async for raw in response.content:
        line = raw.decode().rstrip("\r\n")
        if line.startswith("event: "):
            event = line[7:]
        elif line.startswith("data: "):
            data = line[6:]
            if event == "done":
                break
            if event == "restart":
                text.clear()
            elif event == "failed":
                raise RuntimeError(f"the backend reported {data}")
            elif event == "delta":
                text.append(json.loads(data)["content"])
        elif not line:
            event = ""
    return "".join(text)


async def self_test(questions: int, use_fake: bool) -> int:
    """Serve on a free loopback port, ask ``questions`` questions on each endpoint at once."""
    runner = web.AppRunner(build_app(use_fake))
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        host, port = runner.addresses[0][:2]
        base = f"http://{host}:{port}"
        print(f"serving on {base} ({'embedded FakeKimi' if use_fake else 'Kimi API'})")
        asked = [f"question {number}: what is on the moon?" for number in range(questions)]

        async with aiohttp.ClientSession() as client:
            async def plain(question: str) -> str:
                async with client.get(f"{base}/ask",
                                      params={"q": question, "user": "ann"}) as response:
                    response.raise_for_status()
                    return await response.text()

            async def sse(question: str) -> str:
                async with client.get(f"{base}/ask/sse",
                                      params={"q": question, "user": "bob"}) as response:
                    response.raise_for_status()
                    return await _read_sse(response)

            answers = await asyncio.gather(*(plain(q) for q in asked),
                                           *(sse(q) for q in asked))
            async with client.get(f"{base}/stats") as response:
                backend = await response.json()
            async with client.get(f"{base}/metrics") as response:
                scraped = await response.text() if response.status == 200 else ""
        good = 0
        for question, answer in zip(asked * 2, answers, strict=True):
            if use_fake:
                expected = expected_reply(MODEL, _messages(question), max_tokens=MAX_TOKENS)
                good += answer == expected.content
            else:
                good += bool(answer) and "[error" not in answer
        print(f"  first answer: {answers[0][:70]!r}...")
        print(f"  backend supervisor: completed {backend['completed']}, resumes "
              f"{backend['resumes']}, restarts {backend['restarts']}, in flight "
              f"{backend['in_flight']}")
        durations = re.search(r"^gen_ai_client_operation_duration_seconds_count\{[^}]*\} "
                              r"(\S+)$", scraped, re.MULTILINE)
        print(f"  /metrics: {len(scraped.splitlines())} lines; calls timed "
              f"{float(durations.group(1)) if durations else 0:.0f}; runtime series "
              f"{len(set(re.findall(r'^(kimi_actors_[a-z_]+)', scraped, re.MULTILINE)))}")
        print(f"self-test: {good}/{len(answers)} answers streamed and correct "
              f"({questions} plain text, {questions} SSE, concurrently)")
        return 0 if good == len(answers) else 1
    finally:
        await runner.cleanup()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--real", action="store_true",
                        help="send to the real Kimi API (billed): needs MOONSHOT_API_KEY, "
                             "and MOONSHOT_BASE_URL for another endpoint; without it the "
                             "embedded FakeKimi answers")
    parser.add_argument("--self-test", action="store_true",
                        help="serve on loopback, ask a few questions, check, exit")
    parser.add_argument("--questions", type=int, default=4,
                        help="questions per endpoint in --self-test")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080)
    args = parser.parse_args()
    use_fake = not args.real
    if args.self_test:
        return asyncio.run(self_test(args.questions, use_fake))
    web.run_app(build_app(use_fake), host=args.host, port=args.port)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
