"""``kimi-actors run --report report.html``: one self-contained HTML page about a run.

:class:`RunRecorder` samples the run's progress at every tick and each request's latency
(from the moment the runner hands it to the supervisor to its result, queueing and retries
included). :func:`render_report` turns that into one HTML page with inline SVG charts. It
needs no script, no style sheet and no font from the network, so it opens offline and can be
mailed or archived as it is. It shows:

- the achieved rate against each limit over time: requests per window against the RPM,
  tokens per window against the TPM, and attempts in flight against the concurrency;
- 429s (rate limit and overload), retries and resumes per interval over time;
- latency percentiles (p50, p90, p99, max);
- errors by type (final errors, and those a re-run would retry).

The charts are plain SVG with ids and ``data-*`` attributes naming what they plot, so the
page can be checked by reading its DOM. Pure: nothing here does I/O.
"""

from __future__ import annotations

import html
import math
from array import array
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from ..limits import Limits
from ..redaction import redact_text
from .progress import ProgressSnapshot, RunSummary

__all__ = ["RunRecorder", "Sample", "render_report"]

#: Points kept per series when drawn: a long run is averaged down to this many.
MAX_POINTS = 400
_WIDTH, _HEIGHT = 760, 240
_LEFT, _RIGHT, _TOP, _BOTTOM = 72, 16, 28, 36
_COLOURS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e")


@dataclass(frozen=True, slots=True)
class Sample:
    """The run at one moment: rates over the last window, and running totals."""

    elapsed: float
    rpm: float
    tpm: float
    in_flight: int
    rate_limited: int
    overloaded: int
    retries: int
    resumes: int
    done: int


class RunRecorder:
    """What a report is drawn from, gathered while the run goes."""

    def __init__(self) -> None:
        self.samples: list[Sample] = []
        self.latencies = array("d")

    def sample(self, snapshot: ProgressSnapshot) -> None:
        if self.samples and snapshot.elapsed <= self.samples[-1].elapsed:
            return
        self.samples.append(Sample(
            elapsed=snapshot.elapsed, rpm=snapshot.rpm, tpm=snapshot.tpm,
            in_flight=snapshot.in_flight, rate_limited=snapshot.rate_limited,
            overloaded=snapshot.overloaded, retries=snapshot.retries,
            resumes=snapshot.resumes, done=snapshot.done))

    def latency(self, seconds: float) -> None:
        if math.isfinite(seconds) and seconds >= 0:
            self.latencies.append(seconds)


def percentile(values: Sequence[float], share: float) -> float:
    """The nearest-rank percentile of sorted ``values`` (0 for none)."""
    if not values:
        return 0.0
    rank = max(1, math.ceil(share * len(values)))
    return values[min(rank, len(values)) - 1]


def _downsample(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    if len(points) <= MAX_POINTS:
        return points
    size = len(points) / MAX_POINTS
    out = []
    for number in range(MAX_POINTS):
        part = points[int(number * size):max(int(number * size) + 1, int((number + 1) * size))]
        out.append((part[-1][0], sum(y for _, y in part) / len(part)))
    return out


def _nice_step(value: float) -> float:
    """The smallest round number (1, 1.5, 2, 2.5, 3, 4, 5, 6, 8 times a power of ten) at least
    ``value``."""
    if value <= 0:
        return 1.0
    power = 10.0 ** math.floor(math.log10(value))
    for step in (1.0, 1.5, 2.0, 2.5, 3.0, 4.0, 5.0, 6.0, 8.0):
        if value <= step * power * (1 + 1e-9):
            return step * power
    return 10.0 * power


def _nice_max(value: float, ticks: int = 4) -> float:
    return ticks * _nice_step(value / ticks)


def _number(value: float) -> str:
    if abs(value) >= 1e6:
        return f"{value / 1e6:g}M"
    if abs(value) >= 1e4:
        return f"{value / 1e3:g}k"
    if value == int(value):
        return f"{value:,.0f}"
    return f"{value:.3g}" if abs(value) < 10 else f"{value:,.1f}"


def line_chart(chart_id: str, title: str, series: Sequence[tuple[str, list[tuple[float, float]]]],
               *, limits: Sequence[tuple[str, float]] = (), y_label: str = "",
               x_end: float | None = None) -> str:
    """An SVG line chart: one polyline per series, one dashed line per limit."""
    drawn = [(name, _downsample(points)) for name, points in series]
    x_max = x_end or max((x for _, points in drawn for x, _ in points), default=1.0) or 1.0
    y_top = _nice_max(max([y for _, points in drawn for _, y in points]
                          + [value for _, value in limits] + [0.0]) * 1.02)
    plot_w, plot_h = _WIDTH - _LEFT - _RIGHT, _HEIGHT - _TOP - _BOTTOM

    def at(x: float, y: float) -> str:
        return (f"{_LEFT + plot_w * min(x, x_max) / x_max:.1f},"
                f"{_TOP + plot_h * (1 - min(y, y_top) / y_top):.1f}")

    parts = [f'<svg class="chart" id="{chart_id}" role="img" viewBox="0 0 {_WIDTH} {_HEIGHT}" '
             f'width="{_WIDTH}" height="{_HEIGHT}" data-kind="line" '
             f'data-series="{html.escape(",".join(name for name, _ in drawn))}" '
             f'data-y-max="{y_top:g}">',
             f'<title>{html.escape(title)}</title>']
    for tick in range(5):
        value = y_top * tick / 4
        y = _TOP + plot_h * (1 - tick / 4)
        parts.append(f'<line x1="{_LEFT}" x2="{_WIDTH - _RIGHT}" y1="{y:.1f}" y2="{y:.1f}" '
                     f'stroke="#e5e5e5"/><text x="{_LEFT - 6}" y="{y + 4:.1f}" '
                     f'text-anchor="end" font-size="11">{_number(value)}</text>')
    x_step = _nice_step(x_max / 6)
    at_x = 0.0
    while at_x <= x_max * (1 + 1e-9):
        x = _LEFT + plot_w * at_x / x_max
        parts.append(f'<text x="{x:.1f}" y="{_HEIGHT - _BOTTOM + 16}" text-anchor="middle" '
                     f'font-size="11">{_number(at_x)} s</text>')
        at_x += x_step
    parts.append(f'<text x="14" y="{_TOP + plot_h / 2:.0f}" font-size="11" '
                 f'transform="rotate(-90 14 {_TOP + plot_h / 2:.0f})" text-anchor="middle">'
                 f'{html.escape(y_label)}</text>')
    for number, (name, value) in enumerate(limits):
        y = _TOP + plot_h * (1 - min(value, y_top) / y_top)
        parts.append(f'<line class="limit" data-name="{html.escape(name)}" '
                     f'data-value="{value:g}" x1="{_LEFT}" x2="{_WIDTH - _RIGHT}" '
                     f'y1="{y:.1f}" y2="{y:.1f}" stroke="{_COLOURS[(number + 1) % 5]}" '
                     f'stroke-dasharray="6 4"/><text x="{_WIDTH - _RIGHT - 4}" '
                     f'y="{y - 4:.1f}" text-anchor="end" font-size="11">'
                     f'{html.escape(name)} {_number(value)}</text>')
    for number, (name, points) in enumerate(drawn):
        colour = _COLOURS[number % len(_COLOURS)]
        peak = max((y for _, y in points), default=0.0)
        parts.append(f'<polyline class="series" data-name="{html.escape(name)}" '
                     f'data-points="{len(points)}" data-peak="{peak:g}" fill="none" '
                     f'stroke="{colour}" stroke-width="1.6" '
                     f'points="{" ".join(at(x, y) for x, y in points)}"/>')
        parts.append(f'<rect x="{_LEFT + 8 + 150 * number}" y="8" width="10" height="10" '
                     f'fill="{colour}"/><text x="{_LEFT + 22 + 150 * number}" y="17" '
                     f'font-size="11">{html.escape(name)}</text>')
    parts.append("</svg>")
    return "".join(parts)


def bar_chart(chart_id: str, title: str, bars: Sequence[tuple[str, float]], *,
              unit: str = "") -> str:
    """An SVG horizontal bar chart, one labelled bar per entry."""
    if not bars:
        return (f'<p class="empty" id="{chart_id}">{html.escape(title)}: none.</p>')
    top = _nice_max(max(value for _, value in bars))
    row = 26
    height = _TOP + row * len(bars) + 8
    label_w = 200
    plot_w = _WIDTH - label_w - 90
    parts = [f'<svg class="chart" id="{chart_id}" role="img" viewBox="0 0 {_WIDTH} {height}" '
             f'width="{_WIDTH}" height="{height}" data-kind="bar">',
             f'<title>{html.escape(title)}</title>']
    for number, (label, value) in enumerate(bars):
        y = _TOP + row * number
        width = plot_w * value / top if top else 0
        parts.append(f'<text x="{label_w - 8}" y="{y + 15}" text-anchor="end" font-size="12">'
                     f'{html.escape(label)}</text><rect class="bar" '
                     f'data-label="{html.escape(label)}" data-value="{value:g}" '
                     f'x="{label_w}" y="{y + 2}" width="{width:.1f}" height="18" '
                     f'fill="{_COLOURS[number % len(_COLOURS)]}"/><text '
                     f'x="{label_w + width + 6:.1f}" y="{y + 15}" font-size="12">'
                     f'{_number(value)}{html.escape(unit)}</text>')
    parts.append("</svg>")
    return "".join(parts)


def _per_interval(samples: Sequence[Sample], field: str,
                  interval: float) -> list[tuple[float, float]]:
    """A running total turned into counts per ``interval`` seconds."""
    points: list[tuple[float, float]] = []
    edge, before = interval, 0
    last = 0
    for sample in samples:
        last = getattr(sample, field)
        while sample.elapsed >= edge:
            points.append((edge, float(last - before)))
            before, edge = last, edge + interval
    if samples and (not points or points[-1][0] < samples[-1].elapsed):
        points.append((samples[-1].elapsed, float(last - before)))
    return points


def render_report(recorder: RunRecorder, summary: RunSummary, *, title: str,
                  not_final: Mapping[str, int], details: Sequence[tuple[str, str]] = ()
                  ) -> str:
    """The report page: a summary table and the charts (see the module docstring)."""
    samples = recorder.samples
    limits: Limits = summary.limits
    end = max(summary.wall_seconds, samples[-1].elapsed if samples else 0.0) or 1.0
    window = limits.minute
    per = "min" if window == 60 else f"{window:g} s"
    charts = [
        "<h2>Requests against the RPM limit</h2>",
        line_chart("rate-rpm", f"Requests per {per}", [
            ("requests", [(s.elapsed, s.rpm) for s in samples])],
            limits=[("RPM limit", float(limits.rpm))] if limits.rpm else [],
            y_label=f"requests / {per}", x_end=end),
        "<h2>Tokens against the TPM limit</h2>",
        line_chart("rate-tpm", f"Tokens per {per}", [
            ("tokens", [(s.elapsed, s.tpm) for s in samples])],
            limits=[("TPM limit", float(limits.tpm))] if limits.tpm else [],
            y_label=f"tokens / {per}", x_end=end),
        "<h2>In flight against the concurrency limit</h2>",
        line_chart("rate-concurrency", "Attempts in flight", [
            ("in flight", [(s.elapsed, float(s.in_flight)) for s in samples])],
            limits=[("concurrency limit", float(limits.concurrency))]
            if limits.concurrency else [], y_label="attempts", x_end=end),
    ]
    interval = max(1.0, end / 60)
    charts += [
        f"<h2>429s, retries and resumes (per {interval:g} s)</h2>",
        line_chart("pushback", "429s, retries and resumes over time", [
            ("rate-limit 429s", _per_interval(samples, "rate_limited", interval)),
            ("overload 429s", _per_interval(samples, "overloaded", interval)),
            ("retries", _per_interval(samples, "retries", interval)),
            ("resumes", _per_interval(samples, "resumes", interval))],
            y_label=f"per {interval:g} s", x_end=end),
    ]
    ordered = sorted(recorder.latencies)
    latency_bars = [(name, percentile(ordered, share)) for name, share in
                    (("p50", 0.5), ("p90", 0.9), ("p99", 0.99), ("max", 1.0))] \
        if ordered else []
    charts += ["<h2>Latency (queueing and retries included)</h2>",
               bar_chart("latency", "Latency percentiles", latency_bars, unit=" s")]
    errors = [(f"{name} (final)", float(count)) for name, count in
              sorted(summary.failed_by_type.items(), key=lambda kv: (-kv[1], kv[0]))]
    errors += [(f"{name} (re-run retries)", float(count)) for name, count in
               sorted(not_final.items(), key=lambda kv: (-kv[1], kv[0]))]
    charts += ["<h2>Errors by type</h2>", bar_chart("errors", "Errors by type", errors)]
    rows = [("answered", f"{summary.ok:,}"),
            ("failed (final)", f"{sum(summary.failed_by_type.values()):,}"),
            ("not finished", f"{summary.not_finished:,}"),
            ("wall time", f"{summary.wall_seconds:.1f} s"),
            ("achieved", f"{summary.achieved_rpm:,.0f} RPM, {summary.achieved_tpm:,.0f} TPM"),
            ("limits", str(limits)),
            ("429s", f"{summary.rate_limited:,} rate limit, {summary.overloaded:,} overload"),
            ("retries / resumes", f"{summary.retries:,} / {summary.resumes:,}"),
            ("tokens", f"{summary.prompt_tokens:,} prompt, {summary.completion_tokens:,} "
                       f"completion"),
            *details]
    if summary.stopped_reason:
        rows.append(("stopped", summary.stopped_reason))
    table = "".join(f"<tr><th>{html.escape(name)}</th><td>{html.escape(value)}</td></tr>"
                    for name, value in rows)
    page = (
        '<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{html.escape(title)}</title>"
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        "<style>body{font:14px/1.45 system-ui,sans-serif;max-width:800px;margin:24px auto;"
        "color:#222}h1{font-size:20px}h2{font-size:15px;margin:28px 0 6px}"
        "table{border-collapse:collapse}th,td{text-align:left;padding:3px 12px 3px 0;"
        "border-bottom:1px solid #eee}th{font-weight:600}svg{display:block}</style>"
        f"</head><body><h1>{html.escape(title)}</h1>"
        f'<table id="summary">{table}</table>{"".join(charts)}</body></html>\n')
    return redact_text(page)
