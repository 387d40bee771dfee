"""OpenTelemetry spans and metrics, read back with the OpenTelemetry SDK's in-memory exporters.

The global providers are set for each test and reset after it (the way OpenTelemetry's own
tests do), so every other test runs with no provider: the quiet path.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from aiohttp import web
from hostile import QUESTION, error_body, serve
from opentelemetry import metrics as otel_metrics
from opentelemetry import trace as otel_trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode
from opentelemetry.util._once import Once

from kimi_actors import (
    ModelNotFoundError,
    RetryPolicy,
    Supervisor,
    TelemetryPolicy,
    telemetry,
)
from kimi_actors.testing import FakeKimi, Faults, Respond, ScriptedTransport, expected_reply

MODEL = "kimi-k2-turbo-preview"
FAST = RetryPolicy(base=0.01, cap=0.05, max_attempts=6, budget_ratio=1.0)


def _reset_globals() -> None:
    otel_trace._TRACER_PROVIDER_SET_ONCE = Once()
    otel_trace._TRACER_PROVIDER = None
    otel_metrics._internal._METER_PROVIDER_SET_ONCE = Once()
    otel_metrics._internal._METER_PROVIDER = None
    telemetry._instruments = None


class Otel:
    def __init__(self) -> None:
        self.spans = InMemorySpanExporter()
        self.reader = InMemoryMetricReader()
        tracer_provider = TracerProvider()
        tracer_provider.add_span_processor(SimpleSpanProcessor(self.spans))
        otel_trace.set_tracer_provider(tracer_provider)
        otel_metrics.set_meter_provider(MeterProvider(metric_readers=[self.reader]))
        self.tracer = tracer_provider.get_tracer("test")

    def finished(self, name: str | None = None) -> list[ReadableSpan]:
        return [span for span in self.spans.get_finished_spans()
                if name is None or span.name == name]

    def metrics(self) -> dict[str, Any]:
        data = self.reader.get_metrics_data()
        found: dict[str, Any] = {}
        for resource in data.resource_metrics if data else ():
            for scope in resource.scope_metrics:
                for metric in scope.metrics:
                    found[metric.name] = metric
        return found


@pytest.fixture
def otel() -> Iterator[Otel]:
    _reset_globals()
    try:
        yield Otel()
    finally:
        _reset_globals()


def ask(i: int) -> list[dict[str, Any]]:
    return [{"role": "user", "content": f"Question {i}: what is {i} + {i}?"}]


def points(metric: Any) -> list[Any]:
    return list(metric.data.data_points)


async def test_a_call_is_one_client_span_over_its_attempt_with_genai_attributes(
        otel: Otel) -> None:
    async with FakeKimi() as fake, \
            Supervisor(api_key=fake.api_key, base_url=fake.base_url) as sup:
        with otel.tracer.start_as_current_span("handler") as handler:
            result = await sup.chat(model=MODEL, messages=ask(1), max_tokens=40)
        metrics = otel.metrics()
    [call] = otel.finished(f"chat {MODEL}")
    [attempt] = otel.finished("POST")
    assert call.kind is SpanKind.CLIENT
    assert attempt.kind is SpanKind.CLIENT
    assert call.parent is not None
    assert call.parent.span_id == handler.get_span_context().span_id
    assert attempt.parent is not None
    assert attempt.parent.span_id == call.context.span_id
    attributes = dict(call.attributes or {})
    assert result.usage is not None
    assert attributes == {
        "gen_ai.operation.name": "chat", "gen_ai.provider.name": "moonshot_ai",
        "server.address": "127.0.0.1", "server.port": int(fake.base_url.split(":")[2][:-3]),
        "gen_ai.request.model": MODEL, "gen_ai.request.max_tokens": 40,
        "kimi_actors.stream": False, "kimi_actors.priority": 0,
        "gen_ai.response.id": result.id, "gen_ai.response.model": MODEL,
        "gen_ai.response.finish_reasons": ("length",) if result.finish_reason == "length"
        else ("stop",),
        "gen_ai.usage.input_tokens": result.usage.prompt_tokens,
        "gen_ai.usage.output_tokens": result.usage.completion_tokens,
        "kimi_actors.attempts": 1}
    assert dict(attempt.attributes or {})["http.response.status_code"] == 200
    assert "http.request.resend_count" not in (attempt.attributes or {})
    assert [event.name for event in call.events] == ["kimi_actors.admission"]
    duration = metrics["gen_ai.client.operation.duration"]
    assert duration.unit == "s"
    [point] = points(duration)
    assert point.count == 1
    assert list(point.explicit_bounds)[:3] == [0.01, 0.02, 0.04]
    assert dict(point.attributes)["gen_ai.response.model"] == MODEL
    tokens = {dict(p.attributes)["gen_ai.token.type"]: p.sum
              for p in points(metrics["gen_ai.client.token.usage"])}
    assert tokens == {"input": result.usage.prompt_tokens,
                      "output": result.usage.completion_tokens}
    assert metrics["gen_ai.client.token.usage"].unit == "{token}"


async def test_a_resumed_stream_is_one_call_span_over_several_attempt_spans(otel: Otel) -> None:
    async with FakeKimi(faults=Faults(drop=0.6), seed=2) as fake, \
            Supervisor(api_key=fake.api_key, base_url=fake.base_url, retry=FAST) as sup:
        texts = []
        for i in range(6):
            async with sup.stream(model=MODEL, messages=ask(i)) as stream:
                texts.append((await stream.collect()).content)
        resumes = sup.statistics().resumes
        metrics = otel.metrics()
    assert texts == [expected_reply(MODEL, ask(i)).content for i in range(6)]
    assert resumes > 0
    calls = otel.finished(f"chat {MODEL}")
    attempts = otel.finished("POST")
    assert len(calls) == 6
    assert len(attempts) > 6
    by_call: dict[int, list[ReadableSpan]] = {}
    for span in attempts:
        assert span.parent is not None
        by_call.setdefault(span.parent.span_id, []).append(span)
    assert set(by_call) == {call.context.span_id for call in calls}
    resumed = [call for call in calls
               if any(event.name == "stream_resumed" for event in call.events)]
    assert resumed
    for call in resumed:
        tries = sorted(by_call[call.context.span_id], key=lambda span: span.start_time or 0)
        assert len(tries) >= 2
        assert [dict(span.attributes or {}).get("http.request.resend_count") for span in tries] \
            == [None, *range(1, len(tries))]
        assert dict(call.attributes or {})["kimi_actors.stream"] is True
        assert call.status.status_code is StatusCode.UNSET
    [first_chunk] = points(metrics["gen_ai.client.operation.time_to_first_chunk"])
    assert first_chunk.count == 6


async def test_a_failed_call_ends_its_span_in_error_with_the_error_type(otel: Otel) -> None:
    async with FakeKimi() as fake, \
            Supervisor(api_key=fake.api_key, base_url=fake.base_url) as sup:
        with pytest.raises(ModelNotFoundError):
            await sup.chat(model="kimi-nonexistent", messages=ask(1))
        metrics = otel.metrics()
    [call] = otel.finished("chat kimi-nonexistent")
    [attempt] = otel.finished("POST")
    assert call.status.status_code is StatusCode.ERROR
    assert "Not found the model" in (call.status.description or "")
    assert dict(call.attributes or {})["error.type"] == "ModelNotFoundError"
    assert any(event.name == "exception" for event in call.events)
    assert dict(attempt.attributes or {})["http.response.status_code"] == 404
    assert dict(attempt.attributes or {})["error.type"] == "ModelNotFoundError"
    [point] = points(metrics["gen_ai.client.operation.duration"])
    assert dict(point.attributes)["error.type"] == "ModelNotFoundError"


async def test_a_retried_attempt_records_its_failure_and_the_retry_its_resend_count(
        otel: Otel) -> None:
    answer = {"id": "c1", "object": "chat.completion", "created": 1, "model": MODEL,
              "choices": [{"index": 0, "finish_reason": "stop",
                           "message": {"role": "assistant", "content": "ok"}}],
              "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4}}
    transport = ScriptedTransport(
        Respond.json(error_body("server_error", "boom"), status=500), Respond.json(answer))
    async with Supervisor(api_key="sk-otel-test-key-000000", transport=transport,
                          retry=FAST) as sup:
        await sup.chat(model=MODEL, messages=QUESTION)
        metrics = otel.metrics()
    first, second = sorted(otel.finished("POST"), key=lambda span: span.start_time or 0)
    assert dict(first.attributes or {})["http.response.status_code"] == 500
    assert dict(first.attributes or {})["error.type"] == "ServerError"
    assert first.status.status_code is StatusCode.ERROR
    [call] = otel.finished(f"chat {MODEL}")
    assert [event.name for event in call.events] == [
        "kimi_actors.admission", "retry", "kimi_actors.admission"]
    assert dict(call.events[1].attributes or {})["error_type"] == "ServerError"
    assert dict(second.attributes or {})["http.request.resend_count"] == 1
    assert dict(second.attributes or {})["http.response.status_code"] == 200
    [retries] = points(metrics["kimi_actors.retries"])
    assert retries.value == 1


async def test_the_runtime_instruments_read_each_open_supervisor(otel: Otel) -> None:
    async with FakeKimi() as fake, \
            Supervisor(api_key=fake.api_key, base_url=fake.base_url) as sup:
        await sup.chat(model=MODEL, messages=ask(2))
        metrics = otel.metrics()
    names = {"kimi_actors.queue.depth", "kimi_actors.in_flight",
             "kimi_actors.governor.utilization", "kimi_actors.responses.throttled",
             "kimi_actors.retries", "kimi_actors.resumes", "kimi_actors.breaker.state"}
    assert names <= set(metrics)
    dimensions = {dict(p.attributes)["kimi_actors.dimension"]: p.value
                  for p in points(metrics["kimi_actors.governor.utilization"])}
    assert set(dimensions) >= {"rpm", "tpm"}
    assert 0 < dimensions["rpm"] <= 1
    kinds = {dict(p.attributes)["kimi_actors.kind"] for p in
             points(metrics["kimi_actors.responses.throttled"])}
    assert kinds == {"rate_limit", "overloaded"}
    [state] = points(metrics["kimi_actors.breaker.state"])
    assert state.value == 0
    assert dict(state.attributes)["server.address"] == "127.0.0.1"
    after = otel.metrics()  # the supervisor is closed: it is no longer observed
    assert "kimi_actors.in_flight" not in after or not points(after["kimi_actors.in_flight"])


async def test_contents_only_on_request_and_the_key_never(otel: Otel) -> None:
    key = "sk-telemetry-secret-0123456789"

    async def echo(request: web.Request) -> web.StreamResponse:
        said = request.headers.get("Authorization", "")
        return web.json_response(error_body("invalid_request_error", f"bad {said}"),
                                 status=400)

    async with FakeKimi() as fake:
        async with Supervisor(api_key=fake.api_key, base_url=fake.base_url) as sup:
            await sup.chat(model=MODEL, messages=ask(3))
        [quiet] = otel.finished(f"chat {MODEL}")
        otel.spans.clear()
        async with Supervisor(api_key=fake.api_key, base_url=fake.base_url,
                              telemetry=TelemetryPolicy(record_content=True)) as sup:
            result = await sup.chat(model=MODEL, messages=ask(3))
        [loud] = otel.finished(f"chat {MODEL}")
    assert not any("messages" in name for name in quiet.attributes or {})
    recorded = dict(loud.attributes or {})
    assert json.loads(str(recorded["gen_ai.input.messages"])) == ask(3)
    output = json.loads(str(recorded["gen_ai.output.messages"]))
    assert output[0]["parts"][0]["content"] == result.content
    otel.spans.clear()
    async with serve(echo) as base_url, \
            Supervisor(api_key=key, base_url=base_url,
                       telemetry=TelemetryPolicy(record_content=True)) as sup:
        with pytest.raises(Exception, match="bad"):
            await sup.chat(model=MODEL, messages=QUESTION)
    exported = "".join(span.to_json() for span in otel.finished())
    assert "bad" in exported
    assert key not in exported


def test_without_a_provider_nothing_is_made() -> None:
    _reset_globals()
    call = telemetry.CallTelemetry({"model": MODEL}, stream=False, now=lambda: 0.0,
                                   server="h", port=None, tenant=None, priority=0,
                                   record_content=False)
    assert call.quiet
    with call:
        pass
    assert telemetry._instruments is None
