"""The ``fake-server`` subcommand and the pytest fixture shipped with the package."""

from __future__ import annotations

import argparse
import asyncio
import importlib.metadata
import os
import re
import signal
import subprocess
import sys
from typing import Any

import aiohttp
import pytest

from kimi_actors.limits import Limits
from kimi_actors.testing import FAKE_API_KEY, FakeKimi, Faults, expected_reply
from kimi_actors.testing.__main__ import main as module_main
from kimi_actors.testing.cli import _key_hint, build_limits, register_cli, serve


def parser() -> argparse.ArgumentParser:
    main = argparse.ArgumentParser(prog="kimi-actors")
    register_cli(main.add_subparsers(dest="command"))
    return main


def test_defaults() -> None:
    args = parser().parse_args(["fake-server"])
    assert args.host == "127.0.0.1"
    assert args.port == 0
    assert args.tier is None
    assert args.window_seconds == 60.0
    assert args.api_key == FAKE_API_KEY
    assert args.faults == Faults()
    assert args.retry_after_header is False
    assert args.first_token_latency == 0.0
    assert args.token_latency == 0.0
    assert args.seed == 0
    assert callable(args.func)


def test_every_option_parses() -> None:
    args = parser().parse_args([
        "fake-server", "--host", "0.0.0.0", "--port", "8123", "--tier", "3",
        "--window-seconds", "1.5", "--api-key", "sk-x", "--faults",
        "overload=0.05,server_error=0.03,drop=0.1,split_writes", "--retry-after-header",
        "--first-token-latency", "0.2", "--token-latency", "0.01", "--seed", "9"])
    assert (args.host, args.port, args.tier, args.window_seconds) == ("0.0.0.0", 8123, 3, 1.5)
    assert args.faults == Faults(overload=0.05, server_error=0.03, drop=0.1, split_writes=True)
    assert args.retry_after_header is True
    assert (args.first_token_latency, args.token_latency, args.seed) == (0.2, 0.01, 9)


@pytest.mark.parametrize(("argv", "message"), [
    (["--faults", "boom=1"], "unknown fault 'boom'"),
    (["--tier", "7"], "invalid choice"),
    (["--window-seconds", "0"], "must be > 0"),
    (["--window-seconds", "x"], "is not a number"),
    (["--token-latency", "-1"], "must be >= 0"),
])
def test_bad_options_are_refused(argv: list[str], message: str,
                                 capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        parser().parse_args(["fake-server", *argv])
    assert message in capsys.readouterr().err


def test_build_limits_scales_both_windows() -> None:
    assert build_limits(None, 2.0) == Limits(minute=2.0, day=2880.0)
    assert build_limits(1, 1.0) == Limits.tier(1, minute=1.0, day=1440.0)


async def test_serve_runs_until_stopped(capsys: pytest.CaptureFixture[str]) -> None:
    args = parser().parse_args(["fake-server", "--tier", "0", "--api-key",
                                "sk-secret-custom-key"])
    stop = asyncio.Event()
    ready: asyncio.Future[FakeKimi] = asyncio.get_running_loop().create_future()
    serving = asyncio.ensure_future(serve(args, on_ready=ready.set_result, stop=stop))
    fake = await ready
    headers = {"Authorization": "Bearer sk-secret-custom-key"}
    body = {"model": "moonshot-v1-8k", "messages": [{"role": "user", "content": "hi"}]}
    statuses = []
    async with aiohttp.ClientSession(headers=headers) as session:
        for _ in range(4):
            async with session.post(f"{fake.base_url}/chat/completions", json=body) as response:
                statuses.append(response.status)
    assert statuses == [200, 200, 200, 429]
    stop.set()
    assert await serving == 0
    out = capsys.readouterr().out
    assert f"FakeKimi serving {fake.base_url}" in out
    assert "tier 0" in out
    assert "sk-secret-custom-key" not in out
    assert "...-key" in out
    assert "stopped after 4 requests (3 accepted, 3 completed)" in out


async def test_the_command_serves_until_sigterm() -> None:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "kimi_actors.testing", "fake-server", "--port", "0",
        "--faults", "split_writes", stdout=subprocess.PIPE,
        env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        assert process.stdout is not None
        first = (await asyncio.wait_for(process.stdout.readline(), timeout=30)).decode()
        match = re.search(r"http://127\.0\.0\.1:\d+/v1", first)
        assert match is not None, first
        assert FAKE_API_KEY in (await process.stdout.readline()).decode()
        base_url = match.group(0)
        messages = [{"role": "user", "content": "over the wire"}]
        async with aiohttp.ClientSession(
                headers={"Authorization": f"Bearer {FAKE_API_KEY}"}) as session, \
                session.post(f"{base_url}/chat/completions",
                             json={"model": "kimi-k2-turbo-preview",
                                   "messages": messages}) as response:
            data = await response.json()
        assert data["choices"][0]["message"]["content"] == \
            expected_reply("kimi-k2-turbo-preview", messages).content
        process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(process.wait(), timeout=10) == 0
        assert "stopped after 1 requests" in (await process.stdout.read()).decode()
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


def test_the_pytest_plugin_is_registered(pytestconfig: pytest.Config) -> None:
    entry_points = importlib.metadata.entry_points(group="pytest11")
    assert any(point.value == "kimi_actors.testing.pytest_plugin" for point in entry_points)
    assert pytestconfig.pluginmanager.has_plugin("kimi_actors")


async def test_the_fixture_serves(fake_kimi: FakeKimi) -> None:
    body = {"model": "moonshot-v1-8k", "messages": [{"role": "user", "content": "fixture"}]}
    async with aiohttp.ClientSession(
            headers={"Authorization": f"Bearer {fake_kimi.api_key}"}) as session, \
            session.post(f"{fake_kimi.base_url}/chat/completions", json=body) as answer:
        assert answer.status == 200
    assert fake_kimi.statistics().completed == 1


@pytest.mark.parametrize("fake_kimi_options", [{"api_key": "sk-param", "seed": 3}],
                         indirect=True)
async def test_the_fixture_takes_options_by_indirect_parametrization(
        fake_kimi: FakeKimi) -> None:
    assert fake_kimi.api_key == "sk-param"


class TestOverriddenOptions:
    @pytest.fixture
    def fake_kimi_options(self) -> dict[str, Any]:
        return {"limits": Limits(rpm=1), "faults": Faults(overload=1.0)}

    async def test_the_override_configures_the_server(self, fake_kimi: FakeKimi) -> None:
        assert "rpm=1" in repr(fake_kimi)
        assert "overload=1.0" in repr(fake_kimi)


def test_the_plugin_defines_nothing_without_pytest_asyncio() -> None:
    code = (
        "import importlib.util as u\n"
        "real = u.find_spec\n"
        "u.find_spec = lambda name, *a: None if name == 'pytest_asyncio' else real(name, *a)\n"
        "import kimi_actors.testing.pytest_plugin as plugin\n"
        "print(plugin.__all__, hasattr(plugin, 'fake_kimi'))\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=True, timeout=60)
    assert result.stdout.strip() == "[] False"


def test_module_entry_point_parses_the_same_options(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        module_main(["fake-server", "--tier", "9"])
    assert exit_info.value.code == 2
    assert "invalid choice" in capsys.readouterr().err


def test_short_custom_keys_are_not_hinted() -> None:
    assert _key_hint("sk-1") == "the one given with --api-key"
    assert _key_hint(FAKE_API_KEY).startswith(FAKE_API_KEY)
