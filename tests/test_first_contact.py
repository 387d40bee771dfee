"""What a new user meets on the command line, each case run as a subprocess: counts that agree,
honest rates, the base URL from the environment, an unreachable host named, a busy port, a dry
run without an output, a bar that keeps its width, and `kimi-actors models`."""

from __future__ import annotations

import asyncio
import fcntl
import json
import os
import pty
import re
import select
import socket
import struct
import subprocess
import sys
import termios
from pathlib import Path

from kimi_actors.testing import FakeKimi

MODEL = "kimi-k2.6"
TIMEOUT = 90


def env(**extra: str) -> dict[str, str]:
    clean = {name: value for name, value in os.environ.items()
             if name not in ("MOONSHOT_API_KEY", "MOONSHOT_BASE_URL")}
    return {**clean, **extra}


def kimi(*args: str | Path, environ: dict[str, str] | None = None
         ) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "kimi_actors", *map(str, args)],
                          env=environ or env(), capture_output=True, text=True,
                          timeout=TIMEOUT, check=False)


def write_input(path: Path, count: int) -> Path:
    with open(path, "w", encoding="utf-8") as fh:
        for i in range(count):
            body = {"model": MODEL, "max_tokens": 16,
                    "messages": [{"role": "user", "content": f"Question {i}?"}]}
            fh.write(json.dumps({"custom_id": f"q{i}", "method": "POST",
                                 "url": "/v1/chat/completions", "body": body}) + "\n")
    return path


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_the_summary_names_each_kind_of_push_back_and_fails_only_final_errors(
        tmp_path: Path) -> None:
    source = write_input(tmp_path / "in.jsonl", 80)
    done = kimi("run", source, "-o", tmp_path / "out.jsonl", "--fake", "--window-seconds", "1",
                "--fake-faults", "overload=0.06,server_error=0.04")
    assert done.returncode == 0, done.stderr
    assert re.search(r"failed\s+0\b", done.stderr)
    overloaded = int(re.search(r"overloaded (\d+)", done.stderr).group(1))  # type: ignore[union-attr]
    server = int(re.search(r"5xx (\d+)", done.stderr).group(1))  # type: ignore[union-attr]
    assert overloaded > 0
    assert server > 0
    assert "rate-limited 0" in done.stderr
    assert "resumed" in done.stderr


def test_a_run_shorter_than_a_window_says_so_instead_of_a_zero_rate(tmp_path: Path) -> None:
    source = write_input(tmp_path / "in.jsonl", 20)
    done = kimi("run", source, "-o", tmp_path / "out.jsonl", "--fake")
    assert done.returncode == 0, done.stderr
    assert "too short to measure a rate" in done.stderr
    assert "achieved       RPM" not in done.stderr


async def test_run_and_models_honour_moonshot_base_url(tmp_path: Path) -> None:
    source = write_input(tmp_path / "in.jsonl", 5)
    async with FakeKimi() as fake:
        environ = env(MOONSHOT_BASE_URL=fake.base_url, MOONSHOT_API_KEY=fake.api_key)
        done = await asyncio.to_thread(kimi, "run", source, "-o", tmp_path / "out.jsonl",
                                       environ=environ)
        models = await asyncio.to_thread(kimi, "models", environ=environ)
        served = fake.statistics().completed
    assert done.returncode == 0, done.stderr
    assert served == 5
    assert models.returncode == 0, models.stderr
    assert MODEL in models.stdout.split()


def test_an_unreachable_host_is_named_with_what_to_check(tmp_path: Path) -> None:
    port = free_port()
    source = write_input(tmp_path / "in.jsonl", 3)
    done = kimi("run", source, "-o", tmp_path / "out.jsonl", "--max-attempts", "3",
                "--base-url", f"http://127.0.0.1:{port}/v1",
                environ=env(MOONSHOT_API_KEY="sk-test-unreachable"))
    assert done.returncode == 1
    assert f"cannot connect to 127.0.0.1:{port} (refused;" in done.stderr
    assert "check the port in --base-url and that the server is up" in done.stderr
    assert done.stderr.count("warning: cannot connect") == 1


def test_fake_server_on_a_busy_port_says_which_and_exits_2() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        done = kimi("fake-server", "--port", str(port))
    assert done.returncode == 2
    assert f"error: port {port} on 127.0.0.1 is already in use" in done.stderr
    assert "Traceback" not in done.stderr


def test_a_dry_run_needs_no_output_and_shows_real_bounds(tmp_path: Path) -> None:
    source = write_input(tmp_path / "in.jsonl", 450)
    done = kimi("run", source, "--dry-run", "--tier", "1")
    assert done.returncode == 0, done.stderr
    assert "RPM 2m 00s" in done.stdout  # 450 at 200 a minute: two more windows after the first
    assert "TPM fits in one 1m 00s window" in done.stdout
    assert "TPD no limit" in done.stdout
    assert " 0s" not in done.stdout
    small = kimi("run", write_input(tmp_path / "small.jsonl", 3), "--dry-run", "--tier", "0")
    assert "TPD fits in one day" in small.stdout
    assert "RPM fits in one 1m 00s window" in small.stdout


def test_the_progress_bar_keeps_its_width_on_a_terminal(tmp_path: Path) -> None:
    """Run on a pseudo-terminal, so the bar (not the log lines) is drawn."""
    source = write_input(tmp_path / "in.jsonl", 300)
    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 150, 0, 0))
    process = subprocess.Popen(
        [sys.executable, "-m", "kimi_actors", "run", str(source), "-o",
         str(tmp_path / "out.jsonl"), "--fake", "--window-seconds", "0.5", "--rpm", "100"],
        env=env(), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
        stderr=follower)
    os.close(follower)
    output = bytearray()
    try:
        while True:
            ready, _, _ = select.select([leader], [], [], TIMEOUT)
            if not ready:
                raise AssertionError("the run wrote nothing for too long")
            try:
                data = os.read(leader, 65536)
            except OSError:  # the child closed the terminal
                break
            if not data:
                break
            output += data
    finally:
        os.close(leader)
        assert process.wait(TIMEOUT) == 0
    frames = [frame.split("\x1b[K")[-1].rstrip("\r\n")
              for frame in output.decode().split("\r") if frame.startswith("[")]
    bars = [frame.split("\n")[0] for frame in frames if "] " in frame]
    assert len(bars) >= 5
    assert len({len(bar.rstrip()) for bar in bars}) == 1, bars
    assert len({bar.index("| ETA") for bar in bars}) == 1
