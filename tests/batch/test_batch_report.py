"""The run report: its pure rendering, `kimi-actors run --report`, and the page in Chromium.

The page's numbers are checked against figures computed here from the inputs (nearest-rank
percentiles, per-interval counts), not with the report's own helpers.
"""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path

from browser import browser, chromium, open_page, screenshot
from test_batch_e2e import child_env, command

from kimi_actors import Limits
from kimi_actors.batch.progress import ProgressSnapshot, RunSummary
from kimi_actors.batch.report import RunRecorder, render_report
from kimi_actors.redaction import register_secret
from kimi_actors.testing import FakeKimi, Faults, Latency

LIMITS = Limits(concurrency=8, rpm=120, tpm=50_000, minute=2.0)


def snapshot(elapsed: float, *, rpm: float, in_flight: int, retries: int = 0,
             rate_limited: int = 0, resumes: int = 0) -> ProgressSnapshot:
    return ProgressSnapshot(total=100, done=int(elapsed * 10), failed=0, retries=retries,
                            rate_limited=rate_limited, in_flight=in_flight, elapsed=elapsed,
                            rpm=rpm, tpm=rpm * 300, limits=LIMITS, resumes=resumes)


def summary(**overrides: object) -> RunSummary:
    values: dict[str, object] = {
        "ok": 97, "failed_by_type": {"BadRequestError": 2}, "not_finished": 1,
        "skipped_done": 0, "retries": 9, "resumes": 3, "rate_limited": 4,
        "prompt_tokens": 1000, "completion_tokens": 2000, "wall_seconds": 10.0,
        "achieved_rpm": 110.0, "achieved_tpm": 33_000.0, "limits": LIMITS}
    values.update(overrides)
    return RunSummary(**values)  # type: ignore[arg-type]


def recorded() -> RunRecorder:
    recorder = RunRecorder()
    for tick in range(101):
        elapsed = tick / 10
        recorder.sample(snapshot(elapsed, rpm=min(118.0, tick * 4.0), in_flight=tick % 9,
                                 retries=tick // 10, rate_limited=tick // 25,
                                 resumes=tick // 40))
    for number in range(1, 101):
        recorder.latency(number / 10)  # 0.1 ... 10.0 s
    return recorder


def test_the_page_has_every_chart_with_the_figures_of_the_run() -> None:
    page = render_report(recorded(), summary(), title="run of test.jsonl",
                         not_final={"ConnectionFailedError": 1})
    for chart in ("rate-rpm", "rate-tpm", "rate-concurrency", "pushback", "latency", "errors"):
        assert f'id="{chart}"' in page
    limits = dict(re.findall(r'class="limit" data-name="([^"]+)" data-value="([^"]+)"', page))
    assert limits == {"RPM limit": "120", "TPM limit": "50000", "concurrency limit": "8"}
    peaks = dict(re.findall(r'class="series" data-name="([^"]+)" data-points="\d+" '
                            r'data-peak="([^"]+)"', page))
    assert float(peaks["requests"]) == 118.0
    assert float(peaks["in flight"]) == 8.0
    # Per second: retries go up by one every second; rate-limit 429s once every 2.5 s.
    assert float(peaks["retries"]) == 1.0
    assert float(peaks["rate-limit 429s"]) == 1.0
    bars = dict(re.findall(r'class="bar" data-label="([^"]+)" data-value="([^"]+)"', page))
    # Nearest rank over 0.1 ... 10.0: p50 is the 50th value, p90 the 90th, p99 the 99th.
    assert {name: float(bars[name]) for name in ("p50", "p90", "p99", "max")} == {
        "p50": 5.0, "p90": 9.0, "p99": 9.9, "max": 10.0}
    assert float(bars["BadRequestError (final)"]) == 2.0
    assert float(bars["ConnectionFailedError (re-run retries)"]) == 1.0
    assert "<script" not in page
    assert not re.search(r'(src|href)="', page)  # nothing is fetched: the page stands alone


def test_a_long_run_is_drawn_with_a_bounded_number_of_points() -> None:
    recorder = RunRecorder()
    for tick in range(20_000):
        recorder.sample(snapshot(tick / 10, rpm=100.0, in_flight=3))
    page = render_report(recorder, summary(wall_seconds=2000.0), title="long",
                         not_final={})
    counts = [int(n) for n in re.findall(r'data-points="(\d+)"', page)]
    assert counts
    assert max(counts) <= 400
    assert len(page) < 200_000


def test_an_empty_run_and_a_key_in_the_details_are_rendered_safely() -> None:
    key = "sk-report-secret-0123456789abcdef"
    register_secret(key)
    page = render_report(RunRecorder(), summary(ok=0, failed_by_type={}), title="<empty>",
                         not_final={}, details=[("server", f"https://x/?key={key}")])
    assert key not in page
    assert "&lt;empty&gt;" in page
    assert 'id="latency"' in page  # "none" instead of a chart


def _write_input(path: Path, count: int) -> None:
    with path.open("w", encoding="utf-8") as fh:
        for number in range(count):
            fh.write(json.dumps({"custom_id": f"r{number}", "method": "POST",
                                 "url": "/v1/chat/completions",
                                 "body": {"model": "kimi-k2-turbo-preview", "max_tokens": 30,
                                          "messages": [{"role": "user",
                                                        "content": f"Question {number}"}]}})
                     + "\n")


async def _run_with_report(tmp_path: Path, count: int = 120) -> tuple[Path, str]:
    # Every answer takes a tick of the run's progress (0.1 s) or more: requests are in flight
    # for the whole run, not in one burst that the samples may fall either side of. (A real
    # minute: an RPM that the retries and resumes cannot exhaust.)
    source, output, report = tmp_path / "in.jsonl", tmp_path / "out.jsonl", tmp_path / "r.html"
    _write_input(source, count)
    async with FakeKimi(faults=Faults(overload=0.05, drop=0.1),
                        latency=Latency(first_token=0.1)) as fake:
        process = await asyncio.create_subprocess_exec(
            *command(source, "--output", output, "--base-url", fake.base_url,
                     "--api-key-env", "KIMI_TEST_KEY", "--rpm", "1000", "--concurrency", "8",
                     "--stream", "--report", report),
            env=child_env(KIMI_TEST_KEY=fake.api_key),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        async with asyncio.timeout(120):
            stdout, stderr = await process.communicate()
    assert process.returncode == 0, stderr.decode()
    return report, stderr.decode() + stdout.decode()


async def test_run_writes_the_report_and_the_summary_points_to_it(tmp_path: Path) -> None:
    report, said = await _run_with_report(tmp_path)
    assert f"report: {report}" in said
    page = report.read_text(encoding="utf-8")
    rows = dict(re.findall(r"<tr><th>([^<]+)</th><td>([^<]+)</td></tr>", page))
    assert rows["answered"] == "120"
    assert rows["not finished"] == "0"
    limits = dict(re.findall(r'class="limit" data-name="([^"]+)" data-value="([^"]+)"', page))
    assert limits["RPM limit"] == "1000"
    peaks = dict(re.findall(r'class="series" data-name="([^"]+)" data-points="\d+" '
                            r'data-peak="([^"]+)"', page))
    assert 0 < float(peaks["requests"]) <= 1000
    assert 0 < float(peaks["in flight"]) <= 8


async def test_the_report_shows_its_charts_in_a_browser(tmp_path: Path) -> None:
    chromium_path = chromium()
    report, _ = await _run_with_report(tmp_path, 60)
    async with browser(chromium_path, tmp_path / "profile") as devtools:
        page = await open_page(devtools, report.as_uri())
        async with asyncio.timeout(30):
            # The tab opens on about:blank first: wait for the report's own table.
            loaded = "document.readyState == 'complete' && !!document.getElementById('summary')"
            while not await devtools.evaluate(page, loaded):  # noqa: ASYNC110 - no event
                await asyncio.sleep(0.02)
        charts = await devtools.evaluate(
            page, "[...document.querySelectorAll('svg.chart')].map(c => [c.id, "
                  "c.getBoundingClientRect().width, c.querySelectorAll('polyline,rect.bar')"
                  ".length])")
        answered = await devtools.evaluate(
            page, "document.querySelector('#summary tr td').textContent")
        rpm_line = await devtools.evaluate(
            page, "document.querySelector('#rate-rpm line.limit').dataset.value")
        bars = await devtools.evaluate(
            page, "[...document.querySelectorAll('#latency rect.bar')].map(b => "
                  "[b.dataset.label, b.getBoundingClientRect().width])")
        png = await screenshot(devtools, page)
    shown = {name: (width, marks) for name, width, marks in charts}
    assert set(shown) >= {"rate-rpm", "rate-tpm", "rate-concurrency", "pushback", "latency"}
    assert all(width > 300 and marks >= 1 for width, marks in shown.values())
    assert answered == "60"
    assert rpm_line == "1000"
    assert [label for label, _ in bars] == ["p50", "p90", "p99", "max"]
    assert all(width > 0 for _, width in bars)
    assert bars[-1][1] >= bars[0][1]  # max is drawn at least as long as p50
    assert png.startswith(b"\x89PNG\r\n\x1a\n")
    width, height = int.from_bytes(png[16:20], "big"), int.from_bytes(png[20:24], "big")
    assert width >= 700
    assert height >= 1000  # the whole page, every chart, not just a blank viewport
    (tmp_path / "report.png").write_bytes(png)
