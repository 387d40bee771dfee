"""What the OpenTelemetry instrumentation costs: client CPU per request, off and on.

FakeKimi runs in its own process; the same ``sup.chat`` and ``sup.stream`` phases as
bench_overhead.py run alternately with no provider (the default: nothing is recorded) and
with the OpenTelemetry SDK recording every span (a BatchSpanProcessor into an exporter that
drops them, as a real exporter would ship them from its own thread) and every measurement
(a MeterProvider with a reader). The global providers are reset between phases the way
OpenTelemetry's own tests reset them. Prints medians and the on/off ratio.

    python benchmarks/bench_telemetry.py [--requests 1000] [--concurrency 50] [--rounds 5]
"""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Sequence

from _common import fake_server, median, server_spec
from bench_overhead import Runner, make_bodies, measure, runtime_chat, runtime_stream
from opentelemetry import metrics as otel_metrics
from opentelemetry import trace as otel_trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.util._once import Once

from kimi_actors import telemetry


class Dropping(SpanExporter):
    def __init__(self) -> None:
        self.spans = 0

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        self.spans += len(spans)
        return SpanExportResult.SUCCESS


def reset() -> None:
    otel_trace._TRACER_PROVIDER_SET_ONCE = Once()
    otel_trace._TRACER_PROVIDER = None
    otel_metrics._internal._METER_PROVIDER_SET_ONCE = Once()
    otel_metrics._internal._METER_PROVIDER = None
    telemetry._instruments = None


def switch_on(exporter: Dropping) -> TracerProvider:
    reset()
    provider = TracerProvider()
    provider.add_span_processor(BatchSpanProcessor(exporter, max_queue_size=1 << 16))
    otel_trace.set_tracer_provider(provider)
    otel_metrics.set_meter_provider(MeterProvider(metric_readers=[InMemoryMetricReader()]))
    return provider


async def compare(label: str, run: Runner, args: argparse.Namespace) -> None:
    with fake_server(server_spec()) as server:
        bodies = make_bodies(args.requests, args.max_tokens, label)
        off: list[float] = []
        on: list[float] = []
        exporter = Dropping()
        for number in range(args.rounds + 1):
            order = ("off", "on") if number % 2 else ("on", "off")
            for state in order:
                provider = switch_on(exporter) if state == "on" else None
                if provider is None:
                    reset()
                phase = await measure(run, server, bodies, args.concurrency)
                if provider is not None:
                    provider.shutdown()
                if number:  # the first round warms up
                    (on if state == "on" else off).append(phase.cpu_us_per_request)
        reset()
        off_us, on_us = median(off), median(on)
        print(f"telemetry ({label}): off {off_us:.0f} µs/req, on {on_us:.0f} µs/req, ratio "
              f"{on_us / off_us:.2f} (+{on_us - off_us:.0f} µs per call); "
              f"{exporter.spans:,} spans exported", flush=True)


async def main(args: argparse.Namespace) -> None:
    print(f"{args.requests} requests x {args.rounds} rounds, {args.concurrency} workers",
          flush=True)
    await compare("chat", runtime_chat, args)
    await compare("stream", runtime_stream, args)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--max-tokens", type=int, default=50)
    asyncio.run(main(parser.parse_args()))
