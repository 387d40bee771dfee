"""Print a streamed answer as it arrives, surviving dropped connections.

``async for delta in stream`` yields only new text. When the connection drops mid-answer the
stream actor resumes it through Kimi's Partial Mode, so the consumer sees no gap and no
duplicate, and writes nothing special. With ``ResumePolicy(mode=ResumeMode.RESTART)`` the actor
sends the request again from scratch instead, and first hands the consumer a delta with
``restart=True``: everything received so far must then be discarded. A careful consumer
handles both, as this one does.

By default it runs against an embedded FakeKimi (``--real`` sends to the Kimi API) that
sends a token every few milliseconds and drops a good share of connections mid-stream, then
checks each answer against the fake's deterministic reply.

    python examples/streaming_consumer.py [--real] [--count 3] [--drop 0.5]
                                          [--mode resume|restart|both]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from kimi_actors import Limits, ResumeMode, ResumePolicy, Supervisor
from kimi_actors.testing import FakeKimi, Faults, Latency, expected_reply

PROMPTS = (
    "Tell me a short story about the far side of the moon.",
    "Explain rate limits to a five-year-old.",
    "Write a haiku about streaming tokens.",
    "Why do connections drop?",
    "Name three craters.",
)
MAX_TOKENS = 60


@asynccontextmanager
async def endpoint(use_fake: bool, drop: float) -> AsyncIterator[tuple[str | None, str | None,
                                                                      FakeKimi | None]]:
    """(base_url, api_key, fake): an embedded, flaky FakeKimi, or the real API."""
    if use_fake:
        async with FakeKimi(faults=Faults(drop=drop), latency=Latency(per_token=0.003),
                            seed=11) as fake:
            yield fake.base_url, fake.api_key, fake
    else:
        yield None, None, None


async def consume(sup: Supervisor, model: str, prompt: str) -> str:
    """Print one answer as it streams; return the text the consumer kept."""
    messages = [{"role": "user", "content": prompt}]
    kept: list[str] = []
    print(f"\n> {prompt}\n", end="", flush=True)
    async with sup.stream(model=model, messages=messages, max_tokens=MAX_TOKENS) as stream:
        async for delta in stream:
            if delta.restart:
                kept.clear()
                print(" [connection lost: the answer starts over]\n", end="", flush=True)
                continue
            if delta.content:
                kept.append(delta.content)
                sys.stdout.write(delta.content)
                sys.stdout.flush()
        result = stream.result
    billed = result.usage.completion_tokens if result.usage is not None else "?"
    print(f"\n  (finish_reason {result.finish_reason}, {billed} completion tokens billed)")
    text = "".join(kept)
    if text != result.content:
        raise AssertionError("the text the consumer kept differs from the assembled result")
    return text


async def run(mode: ResumeMode, args: argparse.Namespace) -> tuple[int, int, int, int]:
    """Stream the prompts with one recovery mode; (answers, matching, resumes, restarts)."""
    async with endpoint(not args.real, args.drop) as (base_url, api_key, fake):
        print(f"=== recovery mode: {mode.value} "
              f"({'embedded FakeKimi, drop ' + str(args.drop) if fake else 'Kimi API'})")
        resume = ResumePolicy(mode=mode, max_resumes=10)
        matching = 0
        async with Supervisor(api_key=api_key, base_url=base_url, limits=Limits.tier(1),
                              resume=resume) as sup:
            prompts = [PROMPTS[number % len(PROMPTS)] for number in range(args.count)]
            for prompt in prompts:
                text = await consume(sup, args.model, prompt)
                if fake is not None:
                    expected = expected_reply(args.model, [{"role": "user", "content": prompt}],
                                              max_tokens=MAX_TOKENS)
                    matching += text == expected.content
            stats = sup.statistics()
        if fake is None:
            matching = len(prompts)
        dropped = fake.statistics().faults["drop"] if fake is not None else 0
        print(f"\n  {len(prompts)} answers, {dropped} connections dropped by the server, "
              f"{stats.resumes} resumed, {stats.restarts} restarted")
        return len(prompts), matching, stats.resumes, stats.restarts


async def main(args: argparse.Namespace) -> int:
    modes = {"resume": [ResumeMode.RESUME], "restart": [ResumeMode.RESTART],
             "both": [ResumeMode.RESUME, ResumeMode.RESTART]}[args.mode]
    answers = matching = resumes = restarts = 0
    for mode in modes:
        counts = await run(mode, args)
        answers += counts[0]
        matching += counts[1]
        resumes += counts[2]
        restarts += counts[3]
    print(f"streaming: {matching}/{answers} answers complete and exact, {resumes} resumes, "
          f"{restarts} restarts")
    return 0 if matching == answers else 1


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--real", action="store_true",
                        help="send to the real Kimi API (billed): needs MOONSHOT_API_KEY, "
                             "and MOONSHOT_BASE_URL for another endpoint; without it the "
                             "embedded FakeKimi answers")
    parser.add_argument("--count", type=int, default=3, help="answers to stream per mode")
    parser.add_argument("--drop", type=float, default=0.5,
                        help="FakeKimi's chance of dropping a stream mid-way (default 0.5)")
    parser.add_argument("--mode", choices=("resume", "restart", "both"), default="both")
    parser.add_argument("--model", default="kimi-k2.6")
    raise SystemExit(asyncio.run(main(parser.parse_args())))
