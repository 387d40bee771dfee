"""The examples run end to end against FakeKimi, as a user would start them.

Each example runs in its own process (FakeKimi is the default) with small counts, and
must exit 0 and print its summary line with the counts it promised: every answer present and
exact, resumes and restarts where drops were injected, no 429 where the governor paces.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
HANG_GUARD = 120


def run_example(name: str, *args: str) -> str:
    # A key in the environment must not switch an example to the real API: only --real does.
    env = {**os.environ, "MOONSHOT_API_KEY": "sk-must-not-be-used",
           "MOONSHOT_BASE_URL": "http://127.0.0.1:9/v1"}
    done = subprocess.run([sys.executable, str(EXAMPLES / name), *args], env=env,
                          capture_output=True, text=True, timeout=HANG_GUARD, check=False)
    assert done.returncode == 0, f"{name} exited {done.returncode}:\n{done.stdout}\n{done.stderr}"
    return done.stdout


def summary(pattern: str, output: str) -> tuple[int, ...]:
    match = re.search(pattern, output)
    assert match is not None, f"no line matching {pattern!r} in:\n{output}"
    return tuple(int(group) for group in match.groups())


def test_fan_out_answers_everything_through_map_and_gather() -> None:
    output = run_example("fan_out.py", "--count", "60", "--gather", "20")
    mapped, asked_map, gathered, asked_gather = summary(
        r"fan-out: (\d+)/(\d+) via map .*?, (\d+)/(\d+) via gather", output)
    assert (mapped, gathered) == (asked_map, asked_gather) == (60, 20)
    assert "differ from the expected reply: 0" in output


def test_streaming_consumer_recovers_dropped_streams_both_ways() -> None:
    output = run_example("streaming_consumer.py", "--count", "3", "--drop", "0.5")
    exact, answers, resumes, restarts = summary(
        r"streaming: (\d+)/(\d+) answers complete and exact, (\d+) resumes, (\d+) restarts",
        output)
    assert exact == answers == 6
    assert resumes >= 1
    assert restarts >= 1
    assert "[connection lost: the answer starts over]" in output


def test_web_backend_self_test_streams_correct_answers() -> None:
    output = run_example("web_backend.py", "--self-test", "--questions", "2")
    good, total = summary(r"self-test: (\d+)/(\d+) answers streamed and correct", output)
    assert good == total == 4
    # Prometheus scraped the OpenTelemetry metrics: every call timed, the runtime's series.
    _, timed, series = summary(r"/metrics: (\d+) lines; calls timed (\d+); runtime series "
                               r"(\d+)", output)
    assert timed == 4
    assert series == 7


def test_tier_tuning_paces_without_429_and_adopts_the_server_limit() -> None:
    output = run_example("tier_tuning.py", "--window", "0.5", "--requests", "6")
    requests, rejected, configured, adopted = summary(
        r"tier tuning: (\d+) requests .*?, (\d+) 429s; server-named limit adopted: "
        r"rpm (\d+) -> (\d+)", output)
    assert requests == 6
    assert rejected == 0
    assert configured > adopted == 3
    assert "Limits.tier(3).with_overrides" in output


def test_openai_sdk_fan_out_and_threads_answer_everything_exactly() -> None:
    # 30 streams at a 25% drop rate: none resumed in about 2e-4 of runs.
    output = run_example("openai_sdk.py", "--count", "60", "--threads", "6")
    answered, asked, wrong, resumed, _, limited = summary(
        r"openai sdk \(async\): (\d+)/(\d+) answered, (\d+) differ from the expected reply, "
        r"(\d+) stream resumes, (\d+) retries, (\d+) rate-limit 429s", output)
    assert answered == asked == 60
    assert wrong == limited == 0
    assert resumed >= 1
    threaded, threads, threaded_wrong = summary(
        r"openai sdk \(threads\): (\d+)/(\d+) answered, (\d+) differ", output)
    assert threaded == threads == 6
    assert threaded_wrong == 0


def test_langchain_chat_openai_runs_on_the_supervisor() -> None:
    # 20 streams at a 35% drop rate: none resumed in about 2e-4 of runs.
    output = run_example("langchain_chat.py", "--count", "30")
    answered, asked, _, _, wrong, resumed, limited = summary(
        r"langchain: (\d+)/(\d+) answered \((\d+) by abatch, (\d+) by astream\), (\d+) differ "
        r"from the expected reply, (\d+) stream resumes, (\d+) rate-limit 429s", output)
    assert answered == asked == 30
    assert wrong == limited == 0
    assert resumed >= 1


def test_openai_web_handler_streams_correct_answers_per_user() -> None:
    output = run_example("openai_web.py", "--self-test", "--questions", "3")
    good, total = summary(r"self-test: (\d+)/(\d+) answers streamed through the openai SDK",
                          output)
    assert good == total == 6
