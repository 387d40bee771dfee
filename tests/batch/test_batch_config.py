"""``kimi-actors run`` options: parsing, limits from tiers and overrides, validation."""

from __future__ import annotations

import argparse
import shlex
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kimi_actors.batch.config import (
    DEFAULT_TIER,
    RunConfig,
    add_run_arguments,
    config_from_args,
)
from kimi_actors.limits import Limits
from kimi_actors.testing.faults import Faults


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kimi-actors run", exit_on_error=False)
    add_run_arguments(parser)
    return parser


def parse(*argv: str) -> RunConfig:
    return config_from_args(parser().parse_args(argv))


def test_defaults() -> None:
    config = parse("in.jsonl", "--output", "out.jsonl")
    assert config.input == Path("in.jsonl")
    assert config.output == Path("out.jsonl")
    assert config.base_url == "https://api.moonshot.cn/v1"
    assert config.api_key_env == "MOONSHOT_API_KEY"
    assert config.max_attempts == 6
    assert [config.stream, config.fake, config.dry_run, config.skip_bad] == [False] * 4
    assert config.limits() == Limits.tier(DEFAULT_TIER)
    assert config.retry_policy().max_attempts == 6


def test_every_option() -> None:
    config = parse("in.jsonl", "-o", "out.jsonl", "--tier", "3", "--concurrency", "7",
                   "--rpm", "1,000", "--tpm", "2_500_000", "--tpd", "9000000",
                   "--base-url", "http://127.0.0.1:9/v1", "--api-key-env", "MY_KEY",
                   "--model", "kimi-k2", "--max-attempts", "3", "--stream", "--fake",
                   "--dry-run", "--skip-bad", "--window-seconds", "1.5",
                   "--fake-faults", "overload=0.1,split_writes")
    assert (config.tier, config.concurrency, config.rpm, config.tpm, config.tpd) == \
        (3, 7, 1000, 2_500_000, 9_000_000)
    assert config.base_url == "http://127.0.0.1:9/v1"
    assert config.api_key_env == "MY_KEY"
    assert config.model == "kimi-k2"
    assert config.max_attempts == 3
    assert [config.stream, config.fake, config.dry_run, config.skip_bad] == [True] * 4
    assert config.window_seconds == 1.5
    assert config.fake_faults == "overload=0.1,split_writes"
    assert config.faults() == Faults(overload=0.1, split_writes=True)
    assert config.retry_policy().max_attempts == 3


def test_explicit_limits_override_the_tier() -> None:
    limits = parse("i", "-o", "o", "--tier", "0", "--rpm", "10", "--tpd", "5").limits()
    tier0 = Limits.tier(0)
    assert limits.rpm == 10
    assert limits.tpd == 5
    assert limits.concurrency == tier0.concurrency
    assert limits.tpm == tier0.tpm


def test_limits_without_tier_fill_in_from_the_default_tier() -> None:
    limits = parse("i", "-o", "o", "--rpm", "7").limits()
    default = Limits.tier(DEFAULT_TIER)
    assert limits.rpm == 7
    assert (limits.concurrency, limits.tpm, limits.tpd) == \
        (default.concurrency, default.tpm, default.tpd)


def test_window_seconds_shortens_minute_and_day_in_proportion() -> None:
    limits = parse("i", "-o", "o", "--fake", "--tier", "0", "--window-seconds", "2").limits()
    assert limits.minute == 2.0
    assert limits.day == 2.0 * 1440
    assert limits.rpm == Limits.tier(0).rpm


@pytest.mark.parametrize("argv", [
    ["i", "-o", "o", "--tier", "6"],
    ["i", "-o", "o", "--tier", "one"],
    ["i", "-o", "o", "--rpm", "0"],
    ["i", "-o", "o", "--tpm", "lots"],
    ["i", "-o", "o", "--max-attempts", "-2"],
    ["i", "-o", "o", "--fake", "--window-seconds", "0"],
    ["i", "-o", "o", "--fake", "--window-seconds", "nan"],
    ["i", "-o", "o", "--fake", "--window-seconds", "soon"],
    ["i", "-o", "o", "--fake", "--fake-faults", "gremlins=0.5"],
])
def test_the_parser_rejects_bad_values(argv: list[str]) -> None:
    with pytest.raises((argparse.ArgumentError, SystemExit)):
        parser().parse_args(argv)


@pytest.mark.parametrize(("argv", "message"), [
    (["same.jsonl", "-o", "./same.jsonl"], "another file than the input"),
    (["i", "-o", "o", "--window-seconds", "2"], "window_seconds needs fake"),
    (["i", "-o", "o", "--fake-faults", "overload=0.1"], "fake_faults needs fake"),
    (["i", "-o", "o", "--base-url", "api.moonshot.cn"], "base_url"),
    (["i", "-o", "o", "--api-key-env", "MY-KEY"], "api_key_env"),
    (["i", "-o", "o", "--api-key-env", "sk-abc123"], "api_key_env"),
    (["i", "-o", "o", "--model", ""], "model"),
    (["i", "-o", "o", "--redis", "localhost:6379"], "redis://"),
    (["i", "-o", "o", "--redis-unreachable", "fallback"], "redis_unreachable needs redis"),
    (["i", "-o", "o", "--tenant-field", "metadata..tenant"], "tenant_field"),
    (["i", "-o", "o", "--tenant-field", ""], "tenant_field"),
])
def test_combinations_the_parser_cannot_check(argv: list[str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse(*argv)


@pytest.mark.parametrize(("changes", "message"), [
    ({"tier": True}, "tier"), ({"tier": 9}, "tier"), ({"rpm": 0}, "rpm"),
    ({"concurrency": 2.5}, "concurrency"), ({"max_attempts": 0}, "max_attempts"),
    ({"window_seconds": -1.0, "fake": True}, "window_seconds"),
    ({"window_seconds": True, "fake": True}, "window_seconds"),
])
def test_run_config_validates_direct_construction(changes: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        RunConfig(input=Path("i"), output=Path("o"), **changes)


def test_fault_specs_are_checked_and_parsed() -> None:
    with pytest.raises(ValueError, match="unknown fault"):
        RunConfig(input=Path("i"), output=Path("o"), fake=True, fake_faults="gremlins=1")
    assert RunConfig(input=Path("i"), output=Path("o"), fake=True).faults() == Faults()


def test_paths_given_as_strings_become_paths() -> None:
    config = RunConfig(input="i.jsonl", output="o.jsonl")  # type: ignore[arg-type]
    assert config.input == Path("i.jsonl")
    assert isinstance(config.output, Path)


def test_the_key_is_never_part_of_the_config(monkeypatch: pytest.MonkeyPatch) -> None:
    secret = "sk-this-is-a-secret-key-0123456789"
    monkeypatch.setenv("MOONSHOT_API_KEY", secret)
    monkeypatch.setenv("OTHER_KEY", secret)
    config = parse("i", "-o", "o", "--api-key-env", "OTHER_KEY")
    assert secret not in repr(config)
    assert secret not in config.command_line()
    assert "OTHER_KEY" in config.command_line()


def test_a_redis_password_is_masked_wherever_the_config_is_shown() -> None:
    config = parse("i", "-o", "o", "--redis", "redis://:hunter2-pw@cache:6379/0")
    assert "hunter2-pw" not in repr(config)
    assert "hunter2-pw" not in config.command_line()
    shared = config.redis_config()
    assert shared is not None
    assert shared.url == "redis://:hunter2-pw@cache:6379/0"
    assert shared.unreachable == "wait"
    assert "hunter2-pw" not in repr(shared)
    assert parse("i", "-o", "o").redis_config() is None


def test_command_line_round_trips_every_option() -> None:
    config = parse("my input.jsonl", "-o", "out.jsonl", "--tier", "2", "--tpd", "100",
                   "--model", "kimi k2", "--fake", "--window-seconds", "0.5",
                   "--fake-faults", "drop=0.2, overload=0.1", "--stream", "--skip-bad",
                   "--max-attempts", "2", "--base-url", "http://x/v1", "--api-key-env", "K",
                   "--redis", "redis://cache:6380/2", "--redis-unreachable", "fallback",
                   "--tenant-field", "metadata.tenant", "--report", "run report.html")
    assert config.tenant_field == "metadata.tenant"
    assert config.report == Path("run report.html")
    command = config.command_line()
    assert command.startswith("kimi-actors run 'my input.jsonl'")
    assert parse(*shlex.split(command)[2:]) == config
    assert config.command_line("python -m kimi_actors run").startswith("python -m kimi_actors")


@given(tier=st.none() | st.integers(0, 5),
       limits=st.tuples(*[st.none() | st.integers(1, 10**7)] * 4),
       flags=st.tuples(*[st.booleans()] * 4),
       window=st.none() | st.floats(0.01, 1e4),
       attempts=st.integers(1, 20))
def test_to_argv_round_trips(tier: int | None, limits: tuple[int | None, ...],
                             flags: tuple[bool, ...], window: float | None,
                             attempts: int) -> None:
    stream, fake, dry_run, skip_bad = flags
    config = RunConfig(input=Path("in.jsonl"), output=Path("out.jsonl"), tier=tier,
                       concurrency=limits[0], rpm=limits[1], tpm=limits[2], tpd=limits[3],
                       stream=stream, fake=fake or window is not None, dry_run=dry_run,
                       skip_bad=skip_bad, window_seconds=window, max_attempts=attempts)
    assert parse(*config.to_argv()) == config
    assert config.limits() == parse(*config.to_argv()).limits()


def test_only_a_dry_run_may_go_without_an_output(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="an output file is needed"):
        RunConfig(input=tmp_path / "in.jsonl")
    config = RunConfig(input=tmp_path / "in.jsonl", dry_run=True)
    assert config.output is None
    assert "--output" not in config.to_argv()


def test_the_report_may_not_overwrite_the_input_or_the_output(tmp_path: Path) -> None:
    for taken in ("in.jsonl", "out.jsonl"):
        with pytest.raises(ValueError, match="the report must be another file"):
            RunConfig(input=tmp_path / "in.jsonl", output=tmp_path / "out.jsonl",
                      report=tmp_path / taken)
    assert RunConfig(input=tmp_path / "in.jsonl", output=tmp_path / "out.jsonl",
                     report=str(tmp_path / "r.html")).report == tmp_path / "r.html"  # type: ignore[arg-type]


def test_the_tenant_field_names_each_requests_tenant() -> None:
    config = parse("i", "-o", "o", "--tenant-field", "metadata.tenant")
    assert config.tenant_field == "metadata.tenant"
    assert config.tenant_of({"metadata": {"tenant": "acme"}}) == "acme"
    assert config.tenant_of({"metadata": {"tenant": 42}}) == "42"
    for body in ({}, {"metadata": "acme"}, {"metadata": {"tenant": None}},
                 {"metadata": {"tenant": True}}, {"metadata": {"tenant": ["a"]}}):
        assert config.tenant_of(body) is None  # the default tenant
    assert parse("i", "-o", "o").tenant_of({"user": "acme"}) is None
    assert parse("i", "-o", "o", "--tenant-field", "user").tenant_of({"user": "acme"}) == "acme"
