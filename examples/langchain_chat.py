"""LangChain's ChatOpenAI on kimi_actors: a framework keeps its code, the runtime does the rest.

ChatOpenAI takes an httpx client; give it one on ``sup.httpx_transport()`` and every call it
makes (``ainvoke``, ``astream``, ``abatch``) waits for the account's limits, is retried in one
place, and has its dropped streams continued through Partial Mode. The same works for any
framework built on the openai SDK that takes an ``http_client``/``http_async_client`` or an
openai client (pass ``sup.openai_client()`` there).

By default it runs against an embedded FakeKimi with a binding RPM and injected drops and
overloads, and checks every answer against the fake's deterministic reply (``--real`` sends to
the Kimi API with ``MOONSHOT_API_KEY``).

    pip install 'kimi-actors[openai]' langchain-openai
    python examples/langchain_chat.py [--real] [--count 24] [--model M]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import openai
from langchain_core.messages import BaseMessage, HumanMessage
from langchain_openai import ChatOpenAI
from pydantic import SecretStr

from kimi_actors import Limits, ResumePolicy, RetryPolicy, Supervisor
from kimi_actors.testing import FakeKimi, Faults, expected_reply

FAKE_LIMITS = Limits(concurrency=8, rpm=60, tpm=400_000, minute=1.0)
FAKE_FAULTS = Faults(drop=0.35, overload=0.05)


@asynccontextmanager
async def endpoint(use_fake: bool) -> AsyncIterator[dict[str, Any]]:
    if use_fake:
        async with FakeKimi(limits=FAKE_LIMITS, faults=FAKE_FAULTS, seed=9) as fake:
            yield {"api_key": fake.api_key, "base_url": fake.base_url, "limits": FAKE_LIMITS,
                   # a third of all connections drop: enough attempts and stream
                   # recoveries for every call
                   "retry": RetryPolicy(base=0.05, cap=2.0, max_attempts=12),
                   "resume": ResumePolicy(max_resumes=12)}
    else:
        yield {"limits": Limits.tier(1)}


def prompt(number: int) -> str:
    return f"Question {number}: what is a mare on the moon?"


def text_of(message: BaseMessage) -> str:
    return message.content if isinstance(message.content, str) else str(message.content)


async def main(args: argparse.Namespace) -> int:
    async with endpoint(not args.real) as options, Supervisor(**options) as sup:
        chat = ChatOpenAI(
            model=args.model, api_key=SecretStr("unused: the supervisor holds the key"),
            base_url=sup.base_url, max_retries=0,
            http_async_client=openai.DefaultAsyncHttpxClient(transport=sup.httpx_transport()))
        batched = args.count // 3
        batch = await chat.abatch([[HumanMessage(prompt(i))] for i in range(batched)])
        streamed = []
        for i in range(batched, args.count):
            parts = [text_of(part) async for part in chat.astream([HumanMessage(prompt(i))])]
            streamed.append("".join(parts))
        answers = [text_of(message) for message in batch] + streamed
        stats = sup.statistics()
    wrong = 0
    if not args.real:
        wrong = sum(1 for i, answer in enumerate(answers)
                    if answer != expected_reply(args.model, [{"role": "user",
                                                              "content": prompt(i)}]).content)
    print(f"langchain: {len(answers)}/{args.count} answered ({batched} by abatch, "
          f"{args.count - batched} by astream), {wrong} differ from the expected reply, "
          f"{stats.resumes} stream resumes, {stats.rate_limited} rate-limit 429s")
    print(f"  first answer: {answers[0][:60]!r}...")
    return 1 if wrong or len(answers) != args.count else 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--real", action="store_true", help="send to the Kimi API")
    parser.add_argument("--count", type=int, default=24)
    parser.add_argument("--model", default="kimi-k2-turbo-preview")
    sys.exit(asyncio.run(main(parser.parse_args())))
