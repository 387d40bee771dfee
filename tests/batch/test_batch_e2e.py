"""``kimi-actors run`` end to end: the command as a subprocess against FakeKimi.

Every run uses ``--fake`` (the embedded FakeKimi, in the child process) with short windows,
except the wrong-key test, which points ``--base-url`` at a FakeKimi in this process. Waits
for the child are bounded; waiting for "some lines are written" polls the output file, the
only signal a separate process gives.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pytest

from kimi_actors import Limits
from kimi_actors.testing import FakeKimi, Latency, expected_reply

MODEL = "kimi-k2-turbo-preview"
RUN_TIMEOUT = 60.0
POLL_TIMEOUT = 20.0


def child_env(**extra: str) -> dict[str, str]:
    """The environment of a child run: no real key, unless a test sets one."""
    env = {name: value for name, value in os.environ.items()
           if name not in ("MOONSHOT_API_KEY", "MOONSHOT_BASE_URL")}
    env.update(extra)
    return env


def command(*args: str | Path) -> list[str]:
    return [sys.executable, "-m", "kimi_actors", "run", *map(str, args)]


def run_cli(*args: str | Path, env: Mapping[str, str] | None = None
            ) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command(*args), env=dict(env or child_env()), capture_output=True,
                          text=True, timeout=RUN_TIMEOUT, check=False)


def write_input(path: Path, count: int, *, max_tokens: int = 16,
                prefix: str = "req") -> dict[str, dict[str, Any]]:
    """``count`` OpenAI Batch lines; returns their bodies by custom_id."""
    bodies = {}
    with open(path, "w", encoding="utf-8") as fh:
        for i in range(count):
            custom_id = f"{prefix}-{i:04d}"
            body = {"model": MODEL, "max_tokens": max_tokens,
                    "messages": [{"role": "user", "content": f"Question {i}: 你好, {i} + {i}?"}]}
            bodies[custom_id] = body
            fh.write(json.dumps({"custom_id": custom_id, "method": "POST",
                                 "url": "/v1/chat/completions", "body": body},
                                ensure_ascii=False) + "\n")
    return bodies


def read_output(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    with open(path, encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def assert_all_answered_once(output: Path, bodies: Mapping[str, Mapping[str, Any]], *,
                             exact_usage: bool = False) -> None:
    """Every custom_id exactly once, answered with FakeKimi's expected reply. ``exact_usage``
    also checks the billed completion tokens, which a stream resumed after a drop cannot know
    for the segment that broke before its usage arrived."""
    records = read_output(output)
    counts = Counter(record["custom_id"] for record in records)
    assert [custom_id for custom_id, count in counts.items() if count > 1] == []
    assert set(counts) == set(bodies)
    for record in records:
        assert record["error"] is None, record
        response = record["response"]
        assert response["status_code"] == 200
        body = bodies[record["custom_id"]]
        expected = expected_reply(body["model"], body["messages"], max_tokens=body["max_tokens"])
        choice = response["body"]["choices"][0]
        assert choice["message"]["content"] == expected.content, record["custom_id"]
        assert choice["finish_reason"] == expected.finish_reason
        assert response["body"]["object"] == "chat.completion"
        if exact_usage:
            assert response["body"]["usage"]["completion_tokens"] == expected.completion_tokens


def count_lines(path: Path) -> int:
    try:
        with open(path, "rb") as fh:
            return sum(1 for line in fh if line.endswith(b"\n"))
    except FileNotFoundError:
        return 0


def wait_for(condition: Callable[[], bool], process: subprocess.Popen[str]) -> None:
    """Poll ``condition`` until it holds; fail if the child exits first or time runs out."""
    deadline = time.monotonic() + POLL_TIMEOUT
    while not condition():
        if process.poll() is not None:
            pytest.fail(f"the run ended (exit {process.returncode}) before the condition held")
        if time.monotonic() > deadline:
            process.kill()
            pytest.fail("the condition did not hold in time")
        time.sleep(0.02)


def start_cli(stderr_path: Path, *args: str | Path) -> subprocess.Popen[str]:
    """Start a run whose stderr goes to a file, so a test can watch it while it runs."""
    with open(stderr_path, "w", encoding="utf-8") as stderr:
        return subprocess.Popen(command(*args), env=child_env(), stdout=subprocess.DEVNULL,
                                stderr=stderr, text=True)


def finish(process: subprocess.Popen[str], stderr_path: Path) -> str:
    """Wait (bounded) for a started run to end; return its stderr."""
    try:
        process.wait(timeout=RUN_TIMEOUT)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    return stderr_path.read_text(encoding="utf-8")


# A paced run: 240 requests at 80 per 1 s window take about 2 s, long enough to interrupt.
PACED = ("--fake", "--window-seconds", "1", "--rpm", "80")
PACED_REQUESTS = 240


def test_clean_run_answers_every_request_once(tmp_path: Path) -> None:
    bodies = write_input(tmp_path / "in.jsonl", 60)
    out = tmp_path / "out.jsonl"
    done = run_cli(tmp_path / "in.jsonl", "--output", out, "--fake", "--window-seconds", "1")
    assert done.returncode == 0, done.stderr
    assert_all_answered_once(out, bodies, exact_usage=True)
    assert "ok                     60" in done.stderr
    assert "achieved       " in done.stderr
    again = run_cli(tmp_path / "in.jsonl", "--output", out, "--fake", "--window-seconds", "1")
    assert again.returncode == 0, again.stderr
    assert "0 requests to send (60 already in" in again.stderr
    assert len(read_output(out)) == 60


def test_a_run_shares_the_limits_between_the_tenants_its_field_names(tmp_path: Path) -> None:
    bodies = write_input(tmp_path / "in.jsonl", 40)
    lines = (tmp_path / "in.jsonl").read_text(encoding="utf-8").splitlines()
    tagged = []
    for number, line in enumerate(lines):
        record = json.loads(line)
        record["body"]["user"] = "light" if number % 10 == 9 else "heavy"
        bodies[record["custom_id"]] = record["body"]
        tagged.append(json.dumps(record, ensure_ascii=False))
    (tmp_path / "in.jsonl").write_text("\n".join(tagged) + "\n", encoding="utf-8")
    out = tmp_path / "out.jsonl"
    done = run_cli(tmp_path / "in.jsonl", "--output", out, "--fake", "--window-seconds", "1",
                   "--tenant-field", "user")
    assert done.returncode == 0, done.stderr
    assert_all_answered_once(out, bodies, exact_usage=True)


def test_faults_on_streams_still_answer_everything(tmp_path: Path) -> None:
    bodies = write_input(tmp_path / "in.jsonl", 60, max_tokens=10)
    out = tmp_path / "out.jsonl"
    done = run_cli(tmp_path / "in.jsonl", "--output", out, "--fake", "--window-seconds", "1",
                   "--stream", "--fake-faults",
                   "overload=0.05,server_error=0.03,drop=0.1,split_writes")
    assert done.returncode == 0, done.stderr
    assert_all_answered_once(out, bodies)


def test_sigkill_mid_run_then_resume_writes_each_id_once(tmp_path: Path) -> None:
    bodies = write_input(tmp_path / "in.jsonl", PACED_REQUESTS)
    out = tmp_path / "out.jsonl"
    process = start_cli(tmp_path / "err.txt", tmp_path / "in.jsonl", "--output", out, *PACED)
    try:
        wait_for(lambda: count_lines(out) >= 40, process)
    finally:
        os.kill(process.pid, signal.SIGKILL)
        finish(process, tmp_path / "err.txt")
    assert process.returncode == -signal.SIGKILL
    written = count_lines(out)
    assert 40 <= written < PACED_REQUESTS
    # A kill can tear at most the line being written; tear one on purpose to see the repair.
    with open(out, "ab") as fh:
        fh.write(b'{"id":"batch_req_torn","custom_id":"req-99')
    resumed = run_cli(tmp_path / "in.jsonl", "--output", out, *PACED)
    assert resumed.returncode == 0, resumed.stderr
    assert "repaired" in resumed.stderr
    assert f"already in {out} are skipped" in resumed.stderr
    assert_all_answered_once(out, bodies)


def test_bad_lines_are_reported_with_line_numbers_before_sending(tmp_path: Path) -> None:
    bodies = write_input(tmp_path / "in.jsonl", 5)
    with open(tmp_path / "in.jsonl", "a", encoding="utf-8") as fh:
        fh.write('{"custom_id": "broken", "body": \n')  # line 6: not JSON
        fh.write(json.dumps({"custom_id": "req-0001", "body": bodies["req-0001"]}) + "\n")
        fh.write(json.dumps({"custom_id": "no-messages", "body": {"model": MODEL}}) + "\n")
    out = tmp_path / "out.jsonl"
    strict = run_cli(tmp_path / "in.jsonl", "--output", out, "--fake", "--window-seconds", "1")
    assert strict.returncode == 2
    assert "line 6: not valid JSON" in strict.stderr
    assert "line 7: duplicate custom_id 'req-0001' (first on line 2)" in strict.stderr
    assert "line 8: the chat body has no messages" in strict.stderr
    assert "Nothing was sent" in strict.stderr
    assert read_output(out) == []

    lenient = run_cli(tmp_path / "in.jsonl", "--output", out, "--fake", "--window-seconds", "1",
                      "--skip-bad")
    assert lenient.returncode == 0, lenient.stderr
    assert "line 6: not valid JSON" in lenient.stderr
    assert_all_answered_once(out, bodies)


def test_missing_key_is_a_usage_error(tmp_path: Path) -> None:
    write_input(tmp_path / "in.jsonl", 3)
    done = run_cli(tmp_path / "in.jsonl", "--output", tmp_path / "out.jsonl",
                   "--base-url", "http://127.0.0.1:9/v1")
    assert done.returncode == 2
    assert "MOONSHOT_API_KEY is not set" in done.stderr
    assert not (tmp_path / "out.jsonl").exists()


async def test_wrong_key_stops_the_run_with_one_message(tmp_path: Path) -> None:
    write_input(tmp_path / "in.jsonl", 200)
    out = tmp_path / "out.jsonl"
    wrong_key = "sk-wrong-key-0123456789abcdef"
    async with FakeKimi() as fake:
        process = await asyncio.create_subprocess_exec(
            *command(tmp_path / "in.jsonl", "--output", out, "--base-url", fake.base_url,
                     "--api-key-env", "KIMI_TEST_KEY", "--rpm", "10000"),
            env=child_env(KIMI_TEST_KEY=wrong_key), stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE)
        async with asyncio.timeout(RUN_TIMEOUT):
            stdout_bytes, stderr_bytes = await process.communicate()
        served = fake.statistics()
    stdout, stderr = stdout_bytes.decode(), stderr_bytes.decode()
    assert process.returncode == 3, stderr
    lines = stderr.splitlines()
    assert len([line for line in lines if line.startswith("error:")]) == 1
    # \b: FakeKimi's random port may contain 401 (127.0.0.1:40401 did), a status may not.
    assert len([line for line in lines
                if re.search(r"\b401\b", line) or "Incorrect API key" in line]) == 1
    assert stderr.count("rejected the API key from $KIMI_TEST_KEY") == 1
    assert wrong_key not in stdout + stderr
    assert read_output(out) == []
    assert served.rejected["auth"] >= 1
    assert served.rejected["auth"] < 200  # the run stopped instead of trying every request


def test_dry_run_plans_and_sends_nothing(tmp_path: Path) -> None:
    write_input(tmp_path / "in.jsonl", 30)
    out = tmp_path / "out.jsonl"
    done = run_cli(tmp_path / "in.jsonl", "--output", out, "--rpm", "10", "--dry-run")
    assert done.returncode == 0, done.stderr
    assert "Dry run: nothing was sent." in done.stdout
    assert "30" in done.stdout
    assert "estimated time at least 2m 00s: RPM binds" in done.stdout
    assert not out.exists()


def test_sigint_once_drains_then_resume_finishes(tmp_path: Path) -> None:
    bodies = write_input(tmp_path / "in.jsonl", PACED_REQUESTS)
    out = tmp_path / "out.jsonl"
    err = tmp_path / "err.txt"
    process = start_cli(err, tmp_path / "in.jsonl", "--output", out, "--stream", *PACED)
    try:
        wait_for(lambda: count_lines(out) >= 40, process)
    finally:
        process.send_signal(signal.SIGINT)
        stderr = finish(process, err)
    assert process.returncode == 130, stderr
    assert "SIGINT: stopping" in stderr
    assert "Stopped after" in stderr
    assert len(read_output(out)) < PACED_REQUESTS
    assert f"kimi-actors run {tmp_path / 'in.jsonl'} --output {out}" in stderr
    resumed = run_cli(tmp_path / "in.jsonl", "--output", out, "--stream", *PACED)
    assert resumed.returncode == 0, resumed.stderr
    assert_all_answered_once(out, bodies)


def test_sigint_twice_stops_a_stuck_drain_and_leaves_a_valid_output(tmp_path: Path) -> None:
    bodies = write_input(tmp_path / "in.jsonl", PACED_REQUESTS)
    out = tmp_path / "out.jsonl"
    err = tmp_path / "err.txt"
    # Stalled streams stay in flight (until a 60 s read timeout), so the drain cannot end.
    process = start_cli(err, tmp_path / "in.jsonl", "--output", out, "--stream",
                        "--fake-faults", "stall=0.3", *PACED)
    try:
        wait_for(lambda: count_lines(out) >= 20, process)
        process.send_signal(signal.SIGINT)
        wait_for(lambda: "SIGINT: stopping" in err.read_text(encoding="utf-8"), process)
    finally:
        process.send_signal(signal.SIGINT)
        stderr = finish(process, err)
    assert process.returncode == 130, stderr
    assert "SIGINT again: stopping now." in stderr
    assert "Stopped after" in stderr
    assert "interrupted twice" in stderr
    records = read_output(out)
    assert len({record["custom_id"] for record in records}) == len(records)
    resumed = run_cli(tmp_path / "in.jsonl", "--output", out, *PACED)
    assert resumed.returncode == 0, resumed.stderr
    assert_all_answered_once(out, bodies)


# -- the remaining exit codes ----------------------------------------------------------------


def test_an_exhausted_quota_stops_the_run_with_exit_code_3(tmp_path: Path) -> None:
    write_input(tmp_path / "in.jsonl", 50)
    out = tmp_path / "out.jsonl"
    done = run_cli(tmp_path / "in.jsonl", "--output", out, "--fake",
                   "--fake-faults", "quota_exhausted")
    assert done.returncode == 3, done.stderr
    assert "quota" in done.stderr
    assert len([line for line in done.stderr.splitlines() if line.startswith("error:")]) == 1
    assert read_output(out) == []  # a run-fatal error is not an answer: resume sends them


def test_sigterm_drains_then_exits_130_and_resume_finishes(tmp_path: Path) -> None:
    bodies = write_input(tmp_path / "in.jsonl", PACED_REQUESTS)
    out = tmp_path / "out.jsonl"
    err = tmp_path / "err.txt"
    process = start_cli(err, tmp_path / "in.jsonl", "--output", out, *PACED)
    try:
        wait_for(lambda: count_lines(out) >= 40, process)
    finally:
        process.send_signal(signal.SIGTERM)
        stderr = finish(process, err)
    assert process.returncode == 130, stderr
    assert "SIGTERM: stopping" in stderr
    assert len(read_output(out)) < PACED_REQUESTS
    resumed = run_cli(tmp_path / "in.jsonl", "--output", out, *PACED)
    assert resumed.returncode == 0, resumed.stderr
    assert_all_answered_once(out, bodies)


def _limit_file_size() -> None:
    import resource

    # Writes past 4 KiB fail with EFBIG (instead of SIGXFSZ killing the process): a disk
    # that fills up mid-run, without a disk.
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))


def test_an_output_that_cannot_be_written_exits_1_and_the_run_resumes(tmp_path: Path) -> None:
    bodies = write_input(tmp_path / "in.jsonl", 100)
    out = tmp_path / "out.jsonl"
    done = subprocess.run(command(tmp_path / "in.jsonl", "--output", out, "--fake"),
                          env=child_env(), capture_output=True, text=True, timeout=RUN_TIMEOUT,
                          check=False, preexec_fn=_limit_file_size)
    assert done.returncode == 1, done.stderr
    assert f"error: cannot write {out}: File too large" in done.stderr
    assert 0 < out.stat().st_size <= 4096
    resumed = run_cli(tmp_path / "in.jsonl", "--output", out, "--fake")
    assert resumed.returncode == 0, resumed.stderr
    assert_all_answered_once(out, bodies)


def test_a_log_file_that_cannot_be_opened_is_a_usage_error(tmp_path: Path) -> None:
    write_input(tmp_path / "in.jsonl", 5)
    out = tmp_path / "out.jsonl"
    log = tmp_path / "no-such-directory" / "run.log"
    done = run_cli(tmp_path / "in.jsonl", "--output", out, "--fake", "--log-file", log)
    assert done.returncode == 2, done.stderr
    assert f"cannot open the log file {log}" in done.stderr
    assert read_output(out) == []


async def test_two_runs_given_one_redis_share_the_accounts_limits(
        tmp_path: Path, redis_server: Any) -> None:
    # Each run is told the account's whole limits; only the shared governor keeps their sum
    # within them (without --redis these two runs draw concurrency 429s).
    limits = Limits(concurrency=4, rpm=10_000, tpm=10_000_000)
    async with FakeKimi(limits=limits, latency=Latency(first_token=0.05)) as fake:
        runs = []
        for name in ("a", "b"):
            bodies = write_input(tmp_path / f"{name}.jsonl", 40, prefix=name)
            process = await asyncio.create_subprocess_exec(
                *command(tmp_path / f"{name}.jsonl", "--output", tmp_path / f"{name}.out.jsonl",
                         "--base-url", fake.base_url, "--api-key-env", "KIMI_TEST_KEY",
                         "--concurrency", "4", "--rpm", "10000", "--redis", redis_server.url),
                env=child_env(KIMI_TEST_KEY=fake.api_key), stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE)
            runs.append((name, bodies, process))
        for _, _, process in runs:
            async with asyncio.timeout(RUN_TIMEOUT):
                _, stderr = await process.communicate()
            assert process.returncode == 0, stderr.decode()
        served = fake.statistics()
    for name, bodies, _ in runs:
        assert_all_answered_once(tmp_path / f"{name}.out.jsonl", bodies)
    assert served.rejected["concurrency"] == 0
    assert served.peak_concurrency == 4
    assert served.accepted == 80
