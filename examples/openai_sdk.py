"""Keep your openai-SDK code; run it on kimi_actors' governor, breaker, retries and resume.

``sup.openai_client()`` is a real ``openai.AsyncOpenAI``: ``chat.completions.create`` returns
the SDK's own ``ChatCompletion``, streams are the SDK's ``AsyncStream``, and errors are the
SDK's exception classes. Underneath, every request waits for the account's limits, a stream
that drops is continued through Partial Mode (the SDK sees one unbroken stream), and retries
happen once, in the supervisor (the client's ``max_retries`` is 0).

The second half does the same from synchronous code: ``BackgroundSupervisor`` runs the
supervisor on an event loop in its own thread and hands out an ``openai.OpenAI`` that any
number of threads share under one governor.

By default it runs against an embedded FakeKimi with a binding RPM and injected drops,
overloads and 500s, and checks every answer against the fake's deterministic reply
(``--real`` sends to the Kimi API with ``MOONSHOT_API_KEY``).

    pip install 'kimi-actors[openai]'
    python examples/openai_sdk.py [--real] [--count 60] [--threads 8] [--model M]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import openai
from openai.types.chat import ChatCompletionMessageParam

from kimi_actors import Limits, ResumePolicy, RetryPolicy, Supervisor
from kimi_actors.openai_sdk import BackgroundSupervisor
from kimi_actors.testing import FakeKimi, Faults, expected_reply

FAKE_LIMITS = Limits(concurrency=16, rpm=120, tpm=400_000, minute=2.0)
FAKE_FAULTS = Faults(drop=0.25, overload=0.05, server_error=0.03)
# The fake drops a quarter of all connections, non-stream calls included, far more than a real
# server: enough attempts that no call runs out of them (0.28**12 per call), and enough
# stream recoveries too (with the default 5, one of 30 streams gave up in about 4% of runs).
RETRY = RetryPolicy(base=0.05, cap=2.0, max_attempts=12)
RESUME = ResumePolicy(max_resumes=12)


def question(number: int) -> list[ChatCompletionMessageParam]:
    return [{"role": "user", "content": f"Question {number}: name one crater of the moon."}]


@asynccontextmanager
async def endpoint(use_fake: bool) -> AsyncIterator[dict[str, Any]]:
    """Supervisor options for an embedded FakeKimi, or for the real API from the environment."""
    if use_fake:
        async with FakeKimi(limits=FAKE_LIMITS, faults=FAKE_FAULTS, seed=3) as fake:
            yield {"api_key": fake.api_key, "base_url": fake.base_url, "limits": FAKE_LIMITS,
                   "retry": RETRY, "resume": RESUME}
    else:
        yield {"limits": Limits.tier(1)}


async def ask(client: openai.AsyncOpenAI, model: str, number: int, stream: bool) -> str:
    """One question through the SDK, as any SDK code would ask it."""
    if not stream:
        completion = await client.chat.completions.create(
            model=model, messages=question(number), max_tokens=64)
        return completion.choices[0].message.content or ""
    text = ""
    async for chunk in await client.chat.completions.create(
            model=model, messages=question(number), max_tokens=64,
            stream=True):
        if chunk.choices:
            text += chunk.choices[0].delta.content or ""
    return text


def expected(model: str, number: int) -> str:
    return expected_reply(model, question(number), max_tokens=64).content


async def fan_out(options: dict[str, Any], args: argparse.Namespace, fake: bool) -> int:
    async with Supervisor(**options) as sup:
        client = sup.openai_client()
        answers = await asyncio.gather(
            *(ask(client, args.model, i, stream=i % 2 == 0) for i in range(args.count)),
            return_exceptions=True)
        stats = sup.statistics()
    failed = [a for a in answers if isinstance(a, BaseException)]
    for error in failed[:3]:
        print(f"  failed: {type(error).__name__}: {error}")
    wrong = sum(1 for i, a in enumerate(answers)
                if fake and isinstance(a, str) and a != expected(args.model, i))
    print(f"openai sdk (async): {args.count - len(failed)}/{args.count} answered, "
          f"{wrong} differ from the expected reply, {stats.resumes} stream resumes, "
          f"{stats.retries} retries, {stats.rate_limited} rate-limit 429s")
    return len(failed) + wrong


def threads(options: dict[str, Any], args: argparse.Namespace, fake: bool) -> int:
    with BackgroundSupervisor(**options) as bg:
        client = bg.openai_client()
        answers: dict[int, str] = {}

        def work(number: int) -> None:
            completion = client.chat.completions.create(
                model=args.model, messages=question(number), max_tokens=64)
            answers[number] = completion.choices[0].message.content or ""

        workers = [threading.Thread(target=work, args=(i,)) for i in range(args.threads)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
    wrong = sum(1 for i, a in answers.items() if fake and a != expected(args.model, i))
    print(f"openai sdk (threads): {len(answers)}/{args.threads} answered, {wrong} differ "
          f"from the expected reply")
    count: int = args.threads
    return count - len(answers) + wrong


async def main(args: argparse.Namespace) -> int:
    async with endpoint(not args.real) as options:
        problems = await fan_out(options, args, not args.real)
        # The synchronous client is meant for code without a loop: run it off this one.
        problems += await asyncio.to_thread(threads, options, args, not args.real)
    return 1 if problems else 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--real", action="store_true", help="send to the Kimi API")
    parser.add_argument("--count", type=int, default=60)
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--model", default="kimi-k2-turbo-preview")
    sys.exit(asyncio.run(main(parser.parse_args())))
