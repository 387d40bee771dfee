"""The ``kimi-actors`` command: version, tiers, the subcommands it wires in, and the demo."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from kimi_actors import TIERS, __version__
from kimi_actors.batch.runner import EXIT_CODES
from kimi_actors.cli import build_parser, main


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["--version"])
    assert exited.value.code == 0
    assert capsys.readouterr().out.strip() == f"kimi-actors {__version__}"


def test_tiers_prints_every_tier(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["tiers"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["tier", "concurrency", "RPM", "TPM", "TPD"]
    rows = {int(line.split()[0]): line.split()[1:] for line in lines[1:]}
    assert set(rows) == set(TIERS)
    assert rows[1] == ["50", "200", "2,000,000", "unlimited"]
    assert rows[0] == ["1", "3", "500,000", "1,500,000"]


def test_no_command_prints_help_and_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2
    out = capsys.readouterr().out
    for command in ("run", "demo", "tiers", "fake-server"):
        assert command in out


def test_run_help_documents_the_exit_codes(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["run", "--help"])
    assert exited.value.code == 0
    help_text = capsys.readouterr().out
    for code in EXIT_CODES:
        assert f"  {code:<4} " in help_text
    assert "--log-file" in help_text


def test_run_rejects_options_that_need_fake(tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "in.jsonl").write_text("")
    with pytest.raises(SystemExit) as exited:
        main(["run", str(tmp_path / "in.jsonl"), "--output", str(tmp_path / "out.jsonl"),
              "--window-seconds", "1"])
    assert exited.value.code == 2
    assert "window_seconds needs fake" in capsys.readouterr().err


def test_fake_server_subcommand_is_wired_in() -> None:
    args = build_parser().parse_args(["fake-server", "--tier", "2", "--window-seconds", "2"])
    assert (args.tier, args.window_seconds) == (2, 2.0)
    assert callable(args.func)


def test_demo_runs_and_verifies_every_answer(tmp_path: Path) -> None:
    env = {name: value for name, value in os.environ.items() if name != "MOONSHOT_API_KEY"}
    done = subprocess.run(
        [sys.executable, "-m", "kimi_actors", "demo", "--requests", "40", "--window-seconds",
         "1", "--output", str(tmp_path / "demo.jsonl")],
        env=env, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    assert "verified 40/40 answers against FakeKimi's expected replies" in done.stdout
    assert "Finished in" in done.stderr
    assert len((tmp_path / "demo.jsonl").read_text(encoding="utf-8").splitlines()) == 40
