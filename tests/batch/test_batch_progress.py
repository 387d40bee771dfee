"""Progress display: bar, log lines, summary, input problems, and the reporter's pacing."""

from __future__ import annotations

import io
import math
from dataclasses import replace
from typing import Any

import pytest

from kimi_actors.batch.io import InputScan
from kimi_actors.batch.progress import (
    ProgressReporter,
    ProgressSnapshot,
    RunSummary,
    eta_seconds,
    format_count,
    format_duration,
    render_bar,
    render_log_line,
    render_problems,
    render_summary,
)
from kimi_actors.limits import Limits

TIER1 = Limits.tier(1)


def snapshot(**changes: Any) -> ProgressSnapshot:
    values: dict[str, Any] = {"total": 1000, "done": 250, "failed": 3, "retries": 7,
                              "rate_limited": 2, "in_flight": 40, "elapsed": 75.0,
                              "rpm": 190.0, "tpm": 1_234_567.0, "limits": TIER1}
    values.update(changes)
    return ProgressSnapshot(**values)


def summary(**changes: Any) -> RunSummary:
    values: dict[str, Any] = {
        "ok": 980, "failed_by_type": {"content_filter": 10, "invalid_request_error": 2},
        "not_finished": 8, "skipped_done": 100, "retries": 45, "resumes": 3,
        "rate_limited": 1, "prompt_tokens": 1_234_567, "completion_tokens": 234_567,
        "wall_seconds": 602.0, "achieved_rpm": 198.0, "achieved_tpm": 1_500_000.0,
        "limits": TIER1, "stopped_reason": None}
    values.update(changes)
    return RunSummary(**values)


@pytest.mark.parametrize(("seconds", "text"), [
    (0, "0s"), (0.2, "1s"), (45, "45s"), (59.5, "1m 00s"), (60, "1m 00s"), (185, "3m 05s"),
    (3_600, "1h 00m"), (7_380, "2h 03m"), (86_400 * 3 + 4 * 3_600, "3d 04h"),
    (-1, "--"), (math.inf, "--"), (math.nan, "--"),
])
def test_format_duration(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text


@pytest.mark.parametrize(("value", "text"), [
    (0, "0"), (950, "950"), (1000, "1k"), (12_500, "12.5k"), (2_000_000, "2M"),
    (1_234_567, "1.2M"), (3e9, "3B"),
])
def test_format_count(value: float, text: str) -> None:
    assert format_count(value) == text


def test_eta_uses_the_current_rate_then_the_average() -> None:
    assert eta_seconds(snapshot(rpm=150.0)) == pytest.approx(750 * 60 / 150)
    assert eta_seconds(snapshot(rpm=0.0)) == pytest.approx(750 * 75.0 / 250)
    assert eta_seconds(snapshot(rpm=0.0, done=0, failed=0)) is None
    assert eta_seconds(snapshot(done=1000)) == 0.0
    short_minute = snapshot(rpm=100.0, limits=Limits(rpm=100, minute=2.0))
    assert eta_seconds(short_minute) == pytest.approx(750 * 2.0 / 100)


def test_render_bar_shows_every_figure_within_width() -> None:
    s = snapshot()
    line = render_bar(s, 240)
    assert len(line) == 240
    for figure in ("250/1,000", "25%", "failed     3", "rate-limited     2", "overloaded     0",
                   "5xx     0", "resumed     0", "unfinished     0", "in flight    40",
                   "RPM   190/200", "TPM  1.2M/2M", "ETA  3m 57s"):
        assert figure in line, figure
    bar = line[1:line.index("]")]
    assert bar.count("#") == len(bar) // 4
    assert line.isascii()


@pytest.mark.parametrize("width", [0, 10, 40, 80, 120, 300])
def test_render_bar_never_exceeds_width(width: int) -> None:
    assert len(render_bar(snapshot(), width)) <= width


def test_render_bar_narrow_drops_the_least_useful_figures_first() -> None:
    line = render_bar(snapshot(), 79)
    assert line.startswith("[")
    assert "ETA  3m 57s" in line
    assert "RPM   190/200" in line
    assert "in flight" not in line
    no_bar = render_bar(snapshot(), 30)
    assert no_bar == "  250/1,000  25% | ETA  3m 57s"
    assert render_bar(snapshot(), 12) == "  250/1,000 "


def test_render_bar_keeps_its_width_as_figures_change() -> None:
    """Every figure has a fixed width: the line does not jump as the run goes on."""
    lines = [render_bar(snapshot(done=done, failed=min(done, failed), rpm=rpm), 200)
             for done, failed, rpm in ((0, 0, 0.0), (9, 1, 9.0), (250, 3, 190.0),
                                       (1000, 99, 199.5))]
    assert len({len(line) for line in lines}) == 1
    assert len({line.index("ETA") for line in lines}) == 1
    assert len({line.index("failed") for line in lines}) == 1


def test_render_bar_edges() -> None:
    done = render_bar(snapshot(done=1000, failed=0), 200)
    assert "-" not in done[:done.index("]")]
    empty = render_bar(snapshot(total=0, done=0, failed=0), 200)
    assert "100%" in empty
    unlimited = render_bar(snapshot(limits=Limits.unlimited()), 200)
    assert "RPM   190 |" in unlimited
    assert "ETA      --" in render_bar(snapshot(rpm=0.0, done=0, failed=0), 200)


def test_render_log_line_has_full_figures() -> None:
    line = render_log_line(snapshot())
    for figure in ("[1m 15s]", "250/1,000 done (25.0%)", "3 failed", "7 retries",
                   "2 rate-limited", "0 overloaded", "0 5xx", "0 resumed", "40 in flight",
                   "RPM 190/200", "TPM 1,234,567/2,000,000", "ETA 3m 57s"):
        assert figure in line, figure
    assert "ETA unknown" in render_log_line(snapshot(rpm=0.0, done=0, failed=0))
    assert "TPM 1,234,567," in render_log_line(snapshot(limits=Limits(rpm=200)))


@pytest.mark.parametrize(("changes", "message"), [
    ({"done": -1}, "done"), ({"failed": 300}, "cannot exceed"), ({"elapsed": math.nan}, "elapsed"),
    ({"rpm": -1.0}, "rpm"), ({"total": 1.5}, "total"), ({"retries": True}, "retries"),
])
def test_snapshot_validates(changes: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        snapshot(**changes)


def test_render_summary_figures_and_resume() -> None:
    text = render_summary(summary(), resume_command="kimi-actors run in.jsonl -o out.jsonl")
    for figure in ("Finished in 10m 02s", "980", "12", "content_filter 10",
                   "invalid_request_error 2", "not finished", "8", "100",
                   "in the output from an earlier run", "45", "3   streams that dropped",
                   "rate-limited 1",
                   "prompt 1,234,567", "completion 234,567",
                   "RPM 198.0 = 99.0% of 200", "TPM 1,500,000 = 75.0% of 2,000,000",
                   "8 unfinished requests", "kimi-actors run in.jsonl -o out.jsonl"):
        assert figure in text, figure
    assert text.index("content_filter 10") < text.index("invalid_request_error 2")


def test_render_summary_when_everything_finished() -> None:
    text = render_summary(summary(not_finished=0, skipped_done=0, failed_by_type={}),
                          resume_command="kimi-actors run x")
    assert "kimi-actors run x" not in text
    assert "not finished" not in text
    assert "already done" not in text
    assert "failed                  0" in text


def test_render_summary_stopped_and_unlimited() -> None:
    text = render_summary(summary(stopped_reason="interrupted", not_finished=1,
                                  limits=Limits(minute=2.0)), resume_command=None)
    assert text.startswith("Stopped after 10m 02s: interrupted")
    assert "RPM 198.0 (no limit)" in text
    assert "a minute lasts 2 s" in text
    assert "1 unfinished request," in text
    assert "run the same command again" in text


def test_run_summary_validates() -> None:
    with pytest.raises(ValueError, match="ok"):
        summary(ok=-1)
    with pytest.raises(ValueError, match="failed_by_type"):
        summary(failed_by_type={"x": -2})
    with pytest.raises(ValueError, match="wall_seconds"):
        summary(wall_seconds=math.inf)
    assert summary().failed == 12


def test_render_problems() -> None:
    scan = InputScan(requests=5, bad=((2, "not valid JSON"),), bad_total=4,
                     duplicates=((9, "duplicate custom_id 'a' (first on line 1)"),))
    text = render_problems(scan, "in.jsonl", skip_bad=False)
    assert text.splitlines()[0] == "in.jsonl: 4 bad lines and 1 duplicate custom_id"
    assert "  line 2: not valid JSON" in text
    assert "  line 9: duplicate custom_id 'a'" in text
    assert "... and 3 more" in text
    assert "Nothing was sent" in text
    assert "--skip-bad" in text
    skipped = render_problems(scan, "in.jsonl", skip_bad=True)
    assert "skipped" in skipped
    assert "Nothing was sent" not in skipped
    one_bad = render_problems(InputScan(requests=0, bad=((1, "x"),)), "f", skip_bad=False)
    assert one_bad.splitlines()[0] == "f: 1 bad line"
    many_dups = InputScan(requests=0, duplicates=((1, "d"), (2, "d")))
    assert "2 duplicate custom_ids" in render_problems(many_dups, "f", skip_bad=False)
    assert "... and" not in one_bad
    assert render_problems(InputScan(requests=3), "f", skip_bad=False) == "f: no problems"


# ProgressReporter ----------------------------------------------------------------------------

class FakeTerminal(io.StringIO):
    def __init__(self, tty: bool) -> None:
        super().__init__()
        self.tty = tty
        self.flushes = 0

    def isatty(self) -> bool:
        return self.tty

    def flush(self) -> None:
        self.flushes += 1
        super().flush()


def test_tty_reporter_redraws_at_most_ten_times_a_second() -> None:
    term = FakeTerminal(tty=True)
    reporter = ProgressReporter(term, width=140)
    assert reporter.is_tty
    for step in range(21):  # 0 .. 1.25 s in steps of 1/16 s: a redraw every second step
        reporter.update(snapshot(done=step, failed=0), now=step / 16)
    frames = term.getvalue().split("\r")[1:]
    assert len(frames) == 11
    assert all(len(frame) == 140 for frame in frames)
    assert "20/1,000" in frames[-1]
    assert "\n" not in term.getvalue()
    reporter.finish(snapshot(done=1000, failed=0))
    assert term.getvalue().endswith("\n")
    assert "1,000/1,000" in term.getvalue().split("\r")[-1]
    assert term.flushes >= 12


def test_tty_reporter_pads_over_a_longer_previous_line() -> None:
    term = FakeTerminal(tty=True)
    reporter = ProgressReporter(term, width=200)
    reporter.update(snapshot(), now=0.0)
    first = term.getvalue()
    reporter._width = 120  # the terminal got narrower
    reporter.update(snapshot(), now=1.0)
    second = term.getvalue()[len(first):]
    assert len(second) == len(first)
    assert second.endswith(" " * 80)


def test_non_tty_reporter_logs_every_interval() -> None:
    stream = FakeTerminal(tty=False)
    reporter = ProgressReporter(stream, log_every=10.0)
    assert not reporter.is_tty
    for second in range(0, 35):
        reporter.update(snapshot(elapsed=float(second)), now=100.0 + second)
    lines = stream.getvalue().splitlines()
    assert len(lines) == 4  # at 0, 10, 20 and 30 s
    assert "\r" not in stream.getvalue()
    assert lines[1].startswith("[10s]")
    reporter.finish(snapshot(done=1000, failed=0, elapsed=34.0))
    assert stream.getvalue().splitlines()[-1].startswith("[34s] 1,000/1,000 done")


def test_reporter_detects_tty_and_width() -> None:
    class Closed(io.StringIO):
        def isatty(self) -> bool:
            raise ValueError("I/O operation on closed file")

    assert not ProgressReporter(Closed()).is_tty
    assert not ProgressReporter(io.StringIO()).is_tty
    term = FakeTerminal(tty=True)
    reporter = ProgressReporter(term)
    reporter.update(snapshot(), now=0.0)
    assert len(term.getvalue()) == 1 + 79  # no real terminal behind it: 80 columns less one
    forced = ProgressReporter(io.StringIO(), is_tty=True)
    assert forced.is_tty
    with pytest.raises(ValueError, match="log_every"):
        ProgressReporter(io.StringIO(), log_every=0)


def test_snapshot_replace_keeps_validation() -> None:
    with pytest.raises(ValueError, match="failed"):
        replace(snapshot(), done=1)
