"""A web handler written against the openai SDK, served by one Supervisor per process.

The handler is ordinary openai-SDK code: ``await client.chat.completions.create(...,
stream=True)`` and ``async for chunk in stream``. The client comes from
``sup.openai_client()``, made once at start-up, so every request of every handler shares the
account's limits, one connection pool and one breaker; each user is a tenant (the
``kimi-actors-tenant`` header), so one user's burst cannot hold back another's question. A
dropped upstream stream is continued through Partial Mode: the browser gets no gap and no
repeat. A browser that leaves mid-answer closes the SDK stream, which cancels the upstream
request at once.

    GET /ask?q=...&user=...   the answer as plain text, written as it streams

By default (without ``--real``) an embedded FakeKimi answers and drops some streams.
``--self-test`` serves on a free loopback port, asks a few questions for two users at once,
checks every answer and exits.

    pip install 'kimi-actors[openai]'
    python examples/openai_web.py [--real] [--port 8080]
    python examples/openai_web.py --self-test [--questions 4]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack

import aiohttp
import openai
from aiohttp import web
from openai.types.chat import ChatCompletionMessageParam

from kimi_actors import Limits, SchedulePolicy, Supervisor, TenantPolicy
from kimi_actors.testing import FakeKimi, Faults, Latency, expected_reply

MODEL = "kimi-k2.6"
MAX_TOKENS = 80
SCHEDULE = SchedulePolicy(tenant_default=TenantPolicy(limits=Limits(concurrency=2)))
CLIENT = web.AppKey("client", openai.AsyncOpenAI)
USE_FAKE = web.AppKey("use_fake", bool)


def messages(question: str) -> list[ChatCompletionMessageParam]:
    return [{"role": "system", "content": "You are a concise assistant."},
            {"role": "user", "content": question}]


async def runtime_ctx(app: web.Application) -> AsyncIterator[None]:
    """FakeKimi (unless --real), the Supervisor, and the SDK client on it: made at start-up,
    drained at shutdown."""
    async with AsyncExitStack() as stack:
        api_key = base_url = None  # --real: $MOONSHOT_API_KEY and the default endpoint
        if app[USE_FAKE]:
            fake = await stack.enter_async_context(FakeKimi(
                faults=Faults(drop=0.3), latency=Latency(per_token=0.002), seed=5))
            api_key, base_url = fake.api_key, fake.base_url
        sup = await stack.enter_async_context(Supervisor(
            api_key=api_key, base_url=base_url, limits=Limits.tier(1), schedule=SCHEDULE))
        app[CLIENT] = sup.openai_client()
        yield


async def ask(request: web.Request) -> web.StreamResponse:
    question = request.query.get("q", "").strip()
    if not question:
        raise web.HTTPBadRequest(text="ask something: ?q=...")
    user = request.query.get("user", "").strip()[:64] or "anonymous"
    client = request.app[CLIENT]
    response = web.StreamResponse(headers={"Content-Type": "text/plain; charset=utf-8",
                                           "Cache-Control": "no-cache",
                                           "X-Accel-Buffering": "no"})
    await response.prepare(request)
    try:
        stream = await client.chat.completions.create(
            model=MODEL, messages=messages(question), max_tokens=MAX_TOKENS, stream=True,
            extra_headers={"kimi-actors-tenant": user})
        async with stream:  # leaving early (a client gone) closes the upstream stream
            async for chunk in stream:
                if chunk.choices and chunk.choices[0].delta.content:
                    await response.write(chunk.choices[0].delta.content.encode())
    except openai.APIError as exc:
        await response.write(f"\n[error: {type(exc).__name__}]\n".encode())
    except ConnectionResetError:
        return response
    await response.write_eof()
    return response


def build_app(use_fake: bool) -> web.Application:
    app = web.Application()
    app[USE_FAKE] = use_fake
    app.cleanup_ctx.append(runtime_ctx)
    app.router.add_get("/ask", ask)
    return app


async def self_test(questions: int, use_fake: bool) -> int:
    runner = web.AppRunner(build_app(use_fake))
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        host, port = runner.addresses[0][:2]
        asked = [(user, f"question {n} from {user}: what is on the moon?")
                 for user in ("ann", "bob") for n in range(questions)]
        async with aiohttp.ClientSession() as session:
            async def get(user: str, question: str) -> str:
                async with session.get(f"http://{host}:{port}/ask",
                                       params={"q": question, "user": user}) as answer:
                    answer.raise_for_status()
                    return await answer.text()

            answers = await asyncio.gather(*(get(user, q) for user, q in asked))
        if use_fake:
            good = sum(answer == expected_reply(MODEL, messages(q),
                                                max_tokens=MAX_TOKENS).content
                       for (_, q), answer in zip(asked, answers, strict=True))
        else:
            good = sum(bool(answer) and "[error" not in answer for answer in answers)
        print(f"  first answer: {answers[0][:70]!r}...")
        print(f"self-test: {good}/{len(asked)} answers streamed through the openai SDK and "
              f"correct")
        return 0 if good == len(asked) else 1
    finally:
        await runner.cleanup()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--real", action="store_true", help="send to the Kimi API")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--self-test", action="store_true")
    parser.add_argument("--questions", type=int, default=4)
    args = parser.parse_args()
    if args.self_test:
        return asyncio.run(self_test(args.questions, not args.real))
    web.run_app(build_app(not args.real), host=args.host, port=args.port)
    return 0


if __name__ == "__main__":
    sys.exit(main())
