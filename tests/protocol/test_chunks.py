"""ChunkAssembler and parse_completion: Kimi's stream habits, continuation, malformed input."""

from __future__ import annotations

import itertools
import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kimi_actors.errors import (
    ContentFilterError,
    EngineOverloadedError,
    IncompleteStreamError,
    ProtocolError,
    RateLimitError,
)
from kimi_actors.limits import Dimension
from kimi_actors.protocol.chunks import (
    ChatResult,
    Choice,
    ChunkAssembler,
    Delta,
    ToolCall,
    Usage,
    parse_completion,
)
from kimi_actors.protocol.sse import SSEEvent

DONE = SSEEvent(data="[DONE]")


def chunk(*choices: dict[str, Any], usage: Any = None, with_usage_key: bool = False,
          **extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"id": "chatcmpl-1", "object": "chat.completion.chunk",
                            "created": 1_700_000_000, "model": "kimi-k2", "choices": list(choices)}
    if usage is not None or with_usage_key:
        body["usage"] = usage
    body.update(extra)
    return body


def choice(index: int = 0, finish_reason: str | None = None, usage: Any = None,
           **delta: Any) -> dict[str, Any]:
    entry: dict[str, Any] = {"index": index, "delta": delta, "finish_reason": finish_reason}
    if usage is not None:
        entry["usage"] = usage
    return entry


def event(body: Any) -> SSEEvent:
    return SSEEvent(data=json.dumps(body))


def feed_all(assembler: ChunkAssembler, *bodies: Any, done: bool = True) -> list[Delta]:
    deltas: list[Delta] = []
    for body in bodies:
        deltas.extend(assembler.feed_event(event(body)))
    if done:
        assert assembler.feed_event(DONE) == []
    return deltas


USAGE: dict[str, Any] = {"prompt_tokens": 19, "completion_tokens": 13, "total_tokens": 32}


def test_plain_stream() -> None:
    assembler = ChunkAssembler()
    deltas = feed_all(
        assembler,
        chunk(choice(role="assistant", content="")),
        chunk(choice(content="Hel")),
        chunk(choice(content="lo")),
        chunk(choice(finish_reason="stop", usage=USAGE)),
    )
    assert [d.content for d in deltas] == ["", "Hel", "lo", ""]
    assert [d.role for d in deltas] == ["assistant", None, None, None]
    assert deltas[-1].finish_reason == "stop"
    assert deltas[-1].usage == Usage(prompt_tokens=19, completion_tokens=13, total_tokens=32)
    assert assembler.done
    assert assembler.chunks == 2
    result = assembler.result(request_id="req-7")
    assert result.content == "Hello"
    assert result.finish_reason == "stop"
    assert result.reasoning_content == ""
    assert result.tool_calls == ()
    assert result.choices == (Choice(index=0, role="assistant", content="Hello",
                                     finish_reason="stop"),)
    assert result.usage == Usage(prompt_tokens=19, completion_tokens=13, total_tokens=32)
    assert result.usage.raw == USAGE
    assert (result.id, result.model, result.created) == ("chatcmpl-1", "kimi-k2", 1_700_000_000)
    assert result.request_id == "req-7"
    assert result.raw["choices"][0]["finish_reason"] == "stop"


def test_role_only_published_once_even_if_repeated() -> None:
    assembler = ChunkAssembler()
    deltas = feed_all(assembler,
                      chunk(choice(role="assistant", content="a")),
                      chunk(choice(role="assistant", content="b")))
    assert [d.role for d in deltas] == ["assistant", None]
    assert assembler.result().content == "ab"


def test_role_defaults_to_assistant() -> None:
    assembler = ChunkAssembler()
    feed_all(assembler, chunk(choice(content="x")))
    assert assembler.result().choices[0].role == "assistant"


def test_reasoning_then_content() -> None:
    assembler = ChunkAssembler()
    deltas = feed_all(
        assembler,
        chunk(choice(role="assistant", reasoning_content="Let me ")),
        chunk(choice(reasoning_content="think.")),
        chunk(choice(content="Answer: 4")),
        chunk(choice(finish_reason="stop")),
    )
    assert [d.reasoning_content for d in deltas] == ["Let me ", "think.", "", ""]
    assert assembler.has_reasoning()
    assert not assembler.has_reasoning(1)
    assert assembler.chunks == 3
    result = assembler.result()
    assert result.reasoning_content == "Let me think."
    assert result.content == "Answer: 4"


def tool_fragment(index: int, *, tool_id: str | None = None, name: str | None = None,
                  arguments: Any = None) -> dict[str, Any]:
    function: dict[str, Any] = {}
    if name is not None:
        function["name"] = name
    if arguments is not None:
        function["arguments"] = arguments
    fragment: dict[str, Any] = {"index": index, "function": function}
    if tool_id is not None:
        fragment["id"] = tool_id
        fragment["type"] = "function"
    return fragment


def test_tool_calls_over_several_chunks_and_tools() -> None:
    assembler = ChunkAssembler()
    deltas = feed_all(
        assembler,
        chunk(choice(role="assistant", content=None, tool_calls=[
            tool_fragment(0, tool_id="functions.add:0", name="add", arguments="")])),
        chunk(choice(tool_calls=[tool_fragment(0, arguments='{"a": ')])),
        chunk(choice(tool_calls=[tool_fragment(0, arguments='2, "b": 3}')])),
        chunk(choice(tool_calls=[
            tool_fragment(1, tool_id="functions.multiply:1", name="multiply",
                          arguments='{"a"')])),
        chunk(choice(tool_calls=[tool_fragment(1, arguments=': 2, "b": 3}')])),
        chunk(choice(finish_reason="tool_calls")),
    )
    assert assembler.has_tool_calls()
    assert not assembler.has_tool_calls(3)
    assert deltas[1].tool_calls == ({"index": 0, "function": {"arguments": '{"a": '}},)
    result = assembler.result()
    assert result.finish_reason == "tool_calls"
    assert result.content == ""
    assert result.tool_calls == (
        ToolCall(index=0, id="functions.add:0", type="function", name="add",
                 arguments='{"a": 2, "b": 3}'),
        ToolCall(index=1, id="functions.multiply:1", type="function", name="multiply",
                 arguments='{"a": 2, "b": 3}'),
    )
    assert [json.loads(call.arguments) for call in result.tool_calls] == [{"a": 2, "b": 3}] * 2


def test_two_tools_in_one_chunk_and_out_of_order() -> None:
    assembler = ChunkAssembler()
    feed_all(
        assembler,
        chunk(choice(tool_calls=[tool_fragment(1, tool_id="b", name="second", arguments="{"),
                                 tool_fragment(0, tool_id="a", name="first", arguments="[")])),
        chunk(choice(tool_calls=[tool_fragment(0, arguments="]"),
                                 tool_fragment(1, arguments="}")])),
    )
    calls = assembler.result().tool_calls
    assert [(c.index, c.id, c.name, c.arguments) for c in calls] == [
        (0, "a", "first", "[]"), (1, "b", "second", "{}")]


def test_tool_fragments_without_index() -> None:
    assembler = ChunkAssembler()
    no_index = [
        {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{"}},
        {"function": {"arguments": "}"}},
        {"id": "call_2", "function": {"name": "g", "arguments": "["}},
        {"id": "call_2", "function": {"arguments": "]"}},
    ]
    feed_all(assembler, *(chunk(choice(tool_calls=[fragment])) for fragment in no_index))
    calls = assembler.result().tool_calls
    assert [(c.index, c.id, c.name, c.arguments) for c in calls] == [
        (0, "call_1", "f", "{}"), (1, "call_2", "g", "[]")]


def test_tool_arguments_given_as_object_become_json_text() -> None:
    assembler = ChunkAssembler()
    feed_all(assembler, chunk(choice(tool_calls=[
        tool_fragment(0, tool_id="t", name="f", arguments={"city": "北京"})])))
    call = assembler.result().tool_calls[0]
    assert json.loads(call.arguments) == {"city": "北京"}
    assert call.type == "function"


def test_n2_interleaved_routed_by_index() -> None:
    assembler = ChunkAssembler()
    deltas = feed_all(
        assembler,
        chunk(choice(1, role="assistant", content="")),
        chunk(choice(0, role="assistant", content="")),
        chunk(choice(1, content="B1 ")),
        chunk(choice(0, content="A1 ")),
        chunk(choice(0, content="A2")),
        chunk(choice(1, content="B2")),
        chunk(choice(1, finish_reason="length")),
        chunk(choice(0, finish_reason="stop")),
    )
    assert [d.index for d in deltas if d.role] == [1, 0]
    assert assembler.choice_indices() == (0, 1)
    assert assembler.content(0) == "A1 A2"
    assert assembler.content(1) == "B1 B2"
    assert assembler.content(5) == ""
    result = assembler.result()
    assert [(c.index, c.content, c.finish_reason) for c in result.choices] == [
        (0, "A1 A2", "stop"), (1, "B1 B2", "length")]
    assert result.content == "A1 A2"


def test_n2_in_one_chunk_without_index_uses_position() -> None:
    assembler = ChunkAssembler()
    deltas = feed_all(assembler, {"choices": [{"delta": {"content": "a"}},
                                              {"delta": {"content": "b"}}]})
    assert [(d.index, d.content) for d in deltas] == [(0, "a"), (1, "b")]
    assert assembler.chunks == 1


def test_usage_inside_choice() -> None:
    assembler = ChunkAssembler()
    feed_all(assembler, chunk(choice(content="hi")),
             chunk(choice(finish_reason="stop", usage=USAGE)))
    assert assembler.result().usage == Usage(prompt_tokens=19, completion_tokens=13,
                                             total_tokens=32)


def test_usage_in_top_level_extra_chunk() -> None:
    assembler = ChunkAssembler()
    deltas = feed_all(
        assembler,
        chunk(choice(content="hi"), with_usage_key=True),
        chunk(choice(finish_reason="stop"), with_usage_key=True),
        chunk(usage=USAGE),
    )
    assert deltas[-1] == Delta(index=0, usage=Usage(prompt_tokens=19, completion_tokens=13,
                                                    total_tokens=32))
    assert all(d.usage is None for d in deltas[:-1])
    assert assembler.result().usage == Usage(prompt_tokens=19, completion_tokens=13,
                                             total_tokens=32)


def test_usage_in_both_places_counts_once() -> None:
    same_chunk = ChunkAssembler()
    deltas = feed_all(same_chunk, chunk(choice(content="hi")),
                      chunk(choice(finish_reason="stop", usage=USAGE), usage=USAGE))
    assert [d.usage is not None for d in deltas] == [False, True]
    expected = Usage(prompt_tokens=19, completion_tokens=13, total_tokens=32)
    assert same_chunk.result().usage == expected

    separate_chunks = ChunkAssembler()
    feed_all(separate_chunks, chunk(choice(content="hi")),
             chunk(choice(finish_reason="stop", usage=USAGE)), chunk(usage=USAGE))
    assert separate_chunks.result().usage == expected


def test_top_level_usage_rides_on_first_delta_of_its_chunk() -> None:
    assembler = ChunkAssembler()
    deltas = feed_all(assembler, chunk(choice(content="x", finish_reason="stop"), usage=USAGE))
    assert len(deltas) == 1
    assert deltas[0].usage is not None
    assert deltas[0].content == "x"


def test_top_level_usage_with_empty_choice_entries() -> None:
    assembler = ChunkAssembler()
    deltas = feed_all(assembler, chunk(choice(3), usage=USAGE))
    assert deltas == [Delta(index=0, usage=Usage.from_dict(USAGE))]


def test_n2_usages_per_choice() -> None:
    same = ChunkAssembler()
    feed_all(same, chunk(choice(0, finish_reason="stop", usage=USAGE)),
             chunk(choice(1, finish_reason="stop", usage=USAGE)))
    assert same.result().usage == Usage.from_dict(USAGE)

    per_choice = ChunkAssembler()
    feed_all(per_choice,
             chunk(choice(0, finish_reason="stop", usage={
                 "prompt_tokens": 10, "completion_tokens": 3, "total_tokens": 13,
                 "cached_tokens": 4})),
             chunk(choice(1, finish_reason="stop", usage={
                 "prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15})))
    assert per_choice.result().usage == Usage(prompt_tokens=10, completion_tokens=8,
                                              total_tokens=18, cached_tokens=4)


def test_no_usage_at_all() -> None:
    assembler = ChunkAssembler()
    feed_all(assembler, chunk(choice(content="x")), chunk(usage={"note": "nothing"}))
    assert assembler.result().usage is None


def test_error_chunk_raises_typed_error() -> None:
    assembler = ChunkAssembler()
    feed_all(assembler, chunk(choice(content="partial")), done=False)
    overloaded = {"error": {"type": "engine_overloaded_error",
                            "message": "The engine is currently overloaded, "
                                       "please try again later"}}
    with pytest.raises(EngineOverloadedError) as caught:
        assembler.feed_event(event(overloaded))
    assert caught.value.status == 200
    assert caught.value.error_type == "engine_overloaded_error"


def test_error_chunk_rate_limit_and_content_filter() -> None:
    limited = {"error": {"type": "rate_limit_reached_error",
                         "message": "request reached organization max RPM: 3, "
                                    "please try again after 20 seconds"}}
    with pytest.raises(RateLimitError) as caught:
        ChunkAssembler().feed(limited)
    assert caught.value.retry_after == 20.0
    assert caught.value.dimension is Dimension.RPM
    with pytest.raises(ContentFilterError):
        ChunkAssembler().feed({"error": {"type": "content_filter", "message": "high risk"}})


def test_result_before_done_is_incomplete() -> None:
    assembler = ChunkAssembler()
    feed_all(assembler, chunk(choice(role="assistant", reasoning_content="hmm")),
             chunk(choice(content="Hello")),
             chunk(choice(finish_reason="stop")), done=False)
    assert not assembler.done
    with pytest.raises(IncompleteStreamError) as caught:
        assembler.result(request_id="r1")
    message = str(caught.value)
    assert "[DONE]" in message
    assert "finish_reason stop" in message
    assert "2 chunks" in message
    assert "5 characters of content" in message
    assert "3 of reasoning" in message
    assert caught.value.request_id == "r1"
    snapshot = assembler.snapshot(request_id="r1")
    assert snapshot.content == "Hello"
    assert snapshot.request_id == "r1"


def test_empty_assembler() -> None:
    assembler = ChunkAssembler()
    assert not assembler.done
    assert assembler.chunks == 0
    assert assembler.choice_indices() == ()
    assert assembler.content() == ""
    assert not assembler.has_tool_calls()
    assert not assembler.has_reasoning()
    with pytest.raises(IncompleteStreamError, match="0 chunks"):
        assembler.result()
    snapshot = assembler.snapshot()
    assert snapshot == ChatResult()
    assert (snapshot.content, snapshot.tool_calls, snapshot.finish_reason) == ("", (), None)


def test_continuation_merges_text_without_repeating_role_and_sums_usage() -> None:
    assembler = ChunkAssembler()
    feed_all(assembler, chunk(choice(role="assistant", content="Hello, wo")),
             chunk(choice(finish_reason="length", usage=USAGE), usage=USAGE))
    assert assembler.result().finish_reason == "length"
    assembler.begin_continuation()
    assert not assembler.done
    assert assembler.snapshot().finish_reason is None
    assert assembler.content() == "Hello, wo"
    deltas = feed_all(
        assembler,
        chunk(choice(role="assistant", content=""), id="chatcmpl-2"),
        chunk(choice(content="rld")),
        chunk(choice(finish_reason="stop", usage={"prompt_tokens": 25, "completion_tokens": 2,
                                                  "total_tokens": 27, "cached_tokens": 20})),
    )
    assert all(d.role is None for d in deltas)
    assert [d.content for d in deltas] == ["rld", ""]
    result = assembler.result()
    assert result.content == "Hello, world"
    assert result.finish_reason == "stop"
    assert result.id == "chatcmpl-1"
    assert result.usage == Usage(prompt_tokens=44, completion_tokens=15, total_tokens=59,
                                 cached_tokens=20)
    assert result.usage.raw == {}


def test_continuation_after_a_drop_keeps_tools_and_reasoning() -> None:
    assembler = ChunkAssembler()
    feed_all(assembler, chunk(choice(role="assistant", reasoning_content="plan")),
             chunk(choice(content="par")), done=False)
    assembler.begin_continuation()
    feed_all(assembler, chunk(choice(role="assistant", content="tial")),
             chunk(choice(finish_reason="stop")), chunk(usage=USAGE))
    result = assembler.result()
    assert (result.reasoning_content, result.content) == ("plan", "partial")
    assert result.usage == Usage.from_dict(USAGE)


def test_three_segments_sum_usages() -> None:
    assembler = ChunkAssembler()
    small = {"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3}
    for text in ("a", "b", "c"):
        feed_all(assembler, chunk(choice(content=text, finish_reason="length", usage=small)))
        if text != "c":
            assembler.begin_continuation()
    assert assembler.result().usage == Usage(prompt_tokens=3, completion_tokens=6,
                                             total_tokens=9)
    assert assembler.result().content == "abc"


def test_chunk_identity_from_first_chunk_and_raw_is_last() -> None:
    assembler = ChunkAssembler()
    feed_all(assembler, {"choices": [], "id": 5, "model": "m1", "created": True}, done=False)
    result = assembler.snapshot()
    assert (result.id, result.model, result.created) == (None, "m1", None)
    second = chunk(choice(content="x"), id="c2", model="m2", created=2)
    last = chunk(choice(content="y"), id="c3", model="m3", created=3)
    feed_all(assembler, second, last, done=False)
    result = assembler.snapshot()
    assert (result.id, result.model, result.created) == ("c2", "m1", 2)
    assert result.raw == last


def test_deltas_carry_the_chunk_as_raw() -> None:
    assembler = ChunkAssembler()
    body = chunk(choice(content="x"))
    (delta,) = assembler.feed(body)
    assert delta.raw is body


def test_deltas_of_an_event_hold_its_text_until_raw_is_read() -> None:
    import gc

    from kimi_actors.protocol.results import delta_source

    body = chunk(choice(content="x", index=0), choice(content="y", index=1), t=1.5,
                 extra={"nested": [1, {"deep": True}]})
    first, second = ChunkAssembler().feed_event(event(body))
    # Nothing the collector tracks stays alive with a delta: the chunk is kept as text.
    held = [item for item in gc.get_referents(first) if item is not Delta]
    assert [item for item in held if gc.is_tracked(item)] == []
    assert delta_source(first) is delta_source(second)
    assert first.raw == body == second.raw
    assert first.raw is first.raw  # parsed once
    assert first.raw["t"] == 1.5
    with pytest.raises(TypeError, match="mapping or None"):
        Delta(content="x", raw='{"id": "x"}')  # type: ignore[arg-type]


def test_a_stream_result_keeps_the_last_event_as_a_parsed_chunk() -> None:
    assembler = ChunkAssembler()
    last = chunk(choice(content="y", finish_reason="stop"), id="c9")
    feed_all(assembler, chunk(choice(content="x")), last)
    assert assembler.result().raw == last
    assert type(assembler.result().raw) is dict


def test_a_stream_result_holds_the_last_event_as_text_until_raw_is_read() -> None:
    import gc

    assembler = ChunkAssembler()
    last = chunk(choice(content="y", finish_reason="stop"), id="c9", extra={"deep": [{}]})
    feed_all(assembler, chunk(choice(content="x")), last)
    result = assembler.result()
    assert not [item for item in gc.get_referents(result)
                if gc.is_tracked(item) and isinstance(item, dict)]
    assert result.raw == last
    assert result.raw is result.raw  # parsed once
    assert result.to_dict()["choices"][0]["message"]["content"] == "xy"
    with pytest.raises(TypeError, match="not a str"):
        ChatResult(raw='{"id": "x"}')


def test_chunk_with_nothing_gives_no_delta() -> None:
    assembler = ChunkAssembler()
    assert assembler.feed(chunk(choice())) == []
    assert assembler.feed({"choices": [{"index": 0, "delta": {}}]}) == []
    assert assembler.feed({"choices": [{"index": 0}]}) == []
    assert assembler.feed({"choices": []}) == []
    assert assembler.feed({"id": "x"}) == []
    assert assembler.chunks == 0


def test_finish_reason_only_chunk_gives_a_delta() -> None:
    assembler = ChunkAssembler()
    assert assembler.feed(chunk(choice(finish_reason="stop"))) == [
        Delta(index=0, finish_reason="stop")]


def test_content_called_repeatedly_is_stable() -> None:
    assembler = ChunkAssembler()
    feed_all(assembler, chunk(choice(content="a")), chunk(choice(content="b")), done=False)
    assert assembler.content() == "ab"
    assert assembler.content() == "ab"
    feed_all(assembler, chunk(choice(content="c")), done=False)
    assert assembler.content() == "abc"
    assert assembler.snapshot().content == "abc"


@pytest.mark.parametrize(("data", "match"), [
    ('{"choices": [', "not valid JSON"),
    ("", "not valid JSON"),
    ("[1, 2]", "JSON object, got list"),
    ('"text"', "JSON object, got str"),
    ("[" * 100_000 + "]" * 100_000, "not valid JSON"),
])
def test_bad_event_data(data: str, match: str) -> None:
    with pytest.raises(ProtocolError, match=match):
        ChunkAssembler().feed_event(SSEEvent(data=data))


def test_bad_event_data_message_is_bounded() -> None:
    with pytest.raises(ProtocolError) as caught:
        ChunkAssembler().feed_event(SSEEvent(data="x" * 10_000))
    assert len(str(caught.value)) < 400


@pytest.mark.parametrize(("body", "match"), [
    ({"choices": {"0": {}}}, r"'choices' must be a list"),
    ({"choices": ["x"]}, r"choices\[0\] must be an object"),
    ({"choices": [{"index": -1, "delta": {}}]}, r"choices\[0\]\.index must be an int >= 0"),
    ({"choices": [{"index": "0", "delta": {}}]}, r"choices\[0\]\.index"),
    ({"choices": [{"index": True, "delta": {}}]}, r"choices\[0\]\.index"),
    ({"choices": [{"index": 0, "delta": "hi"}]}, r"choices\[0\]\.delta must be an object"),
    ({"choices": [{"index": 0, "delta": {"content": 5}}]},
     r"choices\[0\]\.delta\.content must be a string"),
    ({"choices": [{"index": 0, "delta": {"role": ["a"]}}]}, r"delta\.role must be a string"),
    ({"choices": [{"index": 0, "delta": {"reasoning_content": None}, "finish_reason": None},
                  {"index": 1, "delta": {"reasoning_content": 1}}]},
     r"choices\[1\]\.delta\.reasoning_content must be a string"),
    ({"choices": [{"index": 0, "delta": {}, "finish_reason": 3}]},
     r"finish_reason must be a string"),
    ({"choices": [{"index": 0, "delta": {"tool_calls": {"index": 0}}}]},
     r"tool_calls must be a list"),
    ({"choices": [{"index": 0, "delta": {"tool_calls": ["x"]}}]},
     r"tool_calls\[0\] must be an object"),
    ({"choices": [{"index": 0, "delta": {"tool_calls": [{"index": "1"}]}}]},
     r"tool_calls\[0\]\.index must be an int >= 0"),
    ({"choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0, "function": "f"}]}}]},
     r"tool_calls\[0\]\.function must be an object"),
    ({"choices": [{"index": 0, "delta": {"tool_calls": [
        {"index": 0, "function": {"arguments": 5}}]}}]},
     r"function\.arguments must be a string"),
])
def test_malformed_chunks(body: dict[str, Any], match: str) -> None:
    with pytest.raises(ProtocolError, match=match):
        ChunkAssembler().feed(body)


@pytest.mark.parametrize("index", [True, 1.0, "1"])
def test_a_content_chunk_for_a_choice_seen_before_still_checks_its_index(index: Any) -> None:
    """Content-only chunks of a known choice take a short path; an index equal to a known
    one but not an int (True == 1) must not pass as that choice."""
    assembler = ChunkAssembler()
    assembler.feed(chunk(choice(index=0, content="a"), choice(index=1, content="b")))
    assert assembler.feed_data('{"choices": [{"index": 1, "delta": {"content": "c"}}]}')
    with pytest.raises(ProtocolError, match=r"choices\[0\]\.index"):
        assembler.feed({"choices": [{"index": index, "delta": {"content": "d"}}]})
    assert assembler.content(1) == "bc"


def test_feed_rejects_non_mapping() -> None:
    with pytest.raises(ProtocolError, match="JSON object"):
        ChunkAssembler().feed(["x"])  # type: ignore[arg-type]


def test_chunk_after_done_is_a_protocol_error() -> None:
    assembler = ChunkAssembler()
    feed_all(assembler, chunk(choice(content="x")))
    assert assembler.feed_event(DONE) == []
    with pytest.raises(ProtocolError, match=r"after data: \[DONE\]"):
        assembler.feed(chunk(choice(content="y")))
    assert assembler.result().content == "x"


def test_tool_fragment_without_function_is_kept() -> None:
    assembler = ChunkAssembler()
    feed_all(assembler, chunk(choice(tool_calls=[{"index": 0, "id": "c1", "type": "function"}])),
             chunk(choice(tool_calls=[{"index": 0, "function": {"name": "f",
                                                                "arguments": "{}"}}])))
    assert assembler.result().tool_calls == (
        ToolCall(index=0, id="c1", type="function", name="f", arguments="{}"),)


@given(pieces=st.lists(st.text(max_size=12), max_size=40))
def test_content_split_anyhow_assembles_back(pieces: list[str]) -> None:
    assembler = ChunkAssembler()
    published: list[str] = []
    for piece in pieces:
        deltas = assembler.feed_event(event(chunk(choice(content=piece))))
        published.extend(delta.content for delta in deltas)
    assembler.feed_event(DONE)
    text = "".join(pieces)
    assert assembler.result().content == text
    assert "".join(published) == text
    assert assembler.chunks == sum(1 for piece in pieces if piece)


@given(text=st.text(max_size=200), data=st.data())
def test_text_cut_at_arbitrary_points_and_interleaved_with_a_second_choice(
        text: str, data: st.DataObject) -> None:
    cuts = sorted(data.draw(st.lists(st.integers(0, len(text)), max_size=20)))
    bounds = [0, *cuts, len(text)]
    pieces = [text[a:b] for a, b in itertools.pairwise(bounds)]
    other = data.draw(st.lists(st.text(max_size=5), max_size=10))
    order = data.draw(st.permutations([(0, p) for p in pieces] + [(1, p) for p in other]))
    by_choice: dict[int, list[str]] = {0: [], 1: []}
    for index, piece in order:
        by_choice[index].append(piece)
    assembler = ChunkAssembler()
    for index, piece in order:
        assembler.feed_event(event(chunk(choice(index, content=piece))))
    assembler.feed_event(DONE)
    assert assembler.content(0) == "".join(by_choice[0])
    assert assembler.content(1) == "".join(by_choice[1])
    assert sorted(by_choice[0]) == sorted(pieces)


@given(arguments=st.lists(st.text(max_size=8), min_size=1, max_size=15))
def test_tool_arguments_split_anyhow_assemble_back(arguments: list[str]) -> None:
    assembler = ChunkAssembler()
    assembler.feed(chunk(choice(tool_calls=[tool_fragment(0, tool_id="c", name="f")])))
    for piece in arguments:
        assembler.feed(chunk(choice(tool_calls=[tool_fragment(0, arguments=piece)])))
    assembler.feed_event(DONE)
    assert assembler.result().tool_calls[0].arguments == "".join(arguments)


# --- Usage -----------------------------------------------------------------------------------

@pytest.mark.parametrize(("data", "expected"), [
    (None, None),
    ("usage", None),
    ([1], None),
    ({}, None),
    ({"note": 1}, None),
    ({"prompt_tokens": "5"}, None),
    ({"prompt_tokens": True}, None),
    ({"prompt_tokens": -1}, None),
    ({"prompt_tokens": 5}, Usage(prompt_tokens=5, total_tokens=5)),
    ({"prompt_tokens": 5, "completion_tokens": 2},
     Usage(prompt_tokens=5, completion_tokens=2, total_tokens=7)),
    ({"prompt_tokens": 5.0, "completion_tokens": 2.5},
     Usage(prompt_tokens=5, total_tokens=5)),
    ({"total_tokens": 9}, Usage(total_tokens=9)),
    ({"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7, "cached_tokens": 3},
     Usage(prompt_tokens=5, completion_tokens=2, total_tokens=7, cached_tokens=3)),
    ({"prompt_tokens": 5, "prompt_tokens_details": {"cached_tokens": 4}},
     Usage(prompt_tokens=5, total_tokens=5, cached_tokens=4)),
    ({"prompt_tokens": 5, "prompt_tokens_details": None},
     Usage(prompt_tokens=5, total_tokens=5)),
])
def test_usage_from_dict(data: Any, expected: Usage | None) -> None:
    assert Usage.from_dict(data) == expected


def test_usage_addition() -> None:
    a = Usage(prompt_tokens=1, completion_tokens=2, total_tokens=3)
    b = Usage(prompt_tokens=10, completion_tokens=20, total_tokens=30, cached_tokens=5)
    assert a + a == Usage(prompt_tokens=2, completion_tokens=4, total_tokens=6)
    assert (a + a).cached_tokens is None
    assert a + b == Usage(prompt_tokens=11, completion_tokens=22, total_tokens=33,
                          cached_tokens=5)
    assert sum([a, b, a], Usage()) == Usage(prompt_tokens=12, completion_tokens=24,
                                            total_tokens=36, cached_tokens=5)
    with pytest.raises(TypeError):
        a + 1  # type: ignore[operator]


@pytest.mark.parametrize("kwargs", [
    {"prompt_tokens": -1}, {"completion_tokens": 1.5}, {"total_tokens": True},
    {"cached_tokens": -2}, {"cached_tokens": "3"},
])
def test_usage_validation(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="Usage"):
        Usage(**kwargs)


def test_result_types_validation() -> None:
    with pytest.raises(ValueError, match=r"ToolCall\.index"):
        ToolCall(index=-1, id=None, type="function", name="f", arguments="")
    with pytest.raises(ValueError, match=r"Choice\.index"):
        Choice(index=-1)
    with pytest.raises(ValueError, match=r"Delta\.index"):
        Delta(index=-1)
    with pytest.raises(ValueError, match="sorted by index"):
        ChatResult(choices=(Choice(index=1), Choice(index=0)))
    with pytest.raises(ValueError, match="sorted by index"):
        ChatResult(choices=(Choice(index=0), Choice(index=0)))


# --- parse_completion ------------------------------------------------------------------------

KIMI_BODY = {
    "id": "cmpl-04ea926191a14749b7f2c7a48a68abc6",
    "object": "chat.completion",
    "created": 1698999496,
    "model": "moonshot-v1-8k",
    "choices": [{
        "index": 0,
        "message": {"role": "assistant",
                    "content": " 你好，李雷！1+1等于2。如果你有其他问题，请随时提问！"},
        "finish_reason": "stop",
    }],
    "usage": {"prompt_tokens": 19, "completion_tokens": 21, "total_tokens": 40,
              "cached_tokens": 10},
}


def test_parse_kimi_body() -> None:
    result = parse_completion(KIMI_BODY, request_id="req-x")
    assert result.id == "cmpl-04ea926191a14749b7f2c7a48a68abc6"
    assert result.model == "moonshot-v1-8k"
    assert result.created == 1698999496
    assert result.content == KIMI_BODY["choices"][0]["message"]["content"]  # type: ignore[index]
    assert result.finish_reason == "stop"
    assert result.usage == Usage(prompt_tokens=19, completion_tokens=21, total_tokens=40,
                                 cached_tokens=10)
    assert result.request_id == "req-x"
    assert result.raw is KIMI_BODY


def test_parse_thinking_and_tool_call_body() -> None:
    body = {
        "id": "c1", "model": "kimi-k2-thinking", "created": 1,
        "choices": [{
            "index": 0,
            "message": {"role": "assistant", "content": None,
                        "reasoning_content": "I should call the tool.",
                        "tool_calls": [
                            {"id": "functions.get_weather:0", "type": "function",
                             "function": {"name": "get_weather",
                                          "arguments": '{"city": "Beijing"}'}},
                            {"id": "functions.get_time:1", "index": 1,
                             "function": {"name": "get_time", "arguments": {"tz": "UTC"}}},
                        ]},
            "finish_reason": "tool_calls",
            "usage": {"prompt_tokens": 50, "completion_tokens": 20, "total_tokens": 70},
        }],
    }
    result = parse_completion(body)
    assert result.content == ""
    assert result.reasoning_content == "I should call the tool."
    assert result.finish_reason == "tool_calls"
    assert result.tool_calls == (
        ToolCall(index=0, id="functions.get_weather:0", type="function", name="get_weather",
                 arguments='{"city": "Beijing"}'),
        ToolCall(index=1, id="functions.get_time:1", type="function", name="get_time",
                 arguments='{"tz": "UTC"}'),
    )
    assert result.usage == Usage(prompt_tokens=50, completion_tokens=20, total_tokens=70)


def test_parse_n2_unsorted_with_odd_top_fields() -> None:
    body = {"id": 1, "model": 2, "created": "now", "choices": [
        {"index": 1, "message": {"content": "second"}, "finish_reason": "length"},
        {"index": 0, "message": {"role": "assistant", "content": "first"}},
    ]}
    result = parse_completion(body)
    assert [(c.index, c.content, c.finish_reason) for c in result.choices] == [
        (0, "first", None), (1, "second", "length")]
    assert (result.id, result.model, result.created, result.usage) == (None, None, None, None)


def test_parse_error_body_raises_typed_error() -> None:
    with pytest.raises(EngineOverloadedError) as caught:
        parse_completion({"error": {"type": "engine_overloaded_error", "message": "busy"}},
                         request_id="r2")
    assert caught.value.request_id == "r2"


@pytest.mark.parametrize(("body", "match"), [
    ([], "must be a JSON object, got list"),
    ({}, "needs a 'choices' list, got NoneType"),
    ({"choices": "x"}, "needs a 'choices' list, got str"),
    ({"choices": []}, "empty 'choices' list"),
    ({"choices": [1]}, r"choices\[0\] must be an object"),
    ({"choices": [{"index": 0}]}, r"choices\[0\]\.message must be an object, got NoneType"),
    ({"choices": [{"index": -2, "message": {}}]}, r"choices\[0\]\.index"),
    ({"choices": [{"message": {"content": ["part"]}}]},
     r"choices\[0\]\.message\.content must be a string"),
    ({"choices": [{"message": {"tool_calls": {}}}]}, "tool_calls must be a list"),
    ({"choices": [{"message": {"tool_calls": ["x"]}}]},
     r"tool_calls\[0\] must be an object"),
    ({"choices": [{"message": {"tool_calls": [{"id": "c"}]}}]},
     r"tool_calls\[0\]\.function must be an object, got NoneType"),
    ({"choices": [{"message": {"tool_calls": [{"function": {"arguments": "{}"}}]}}]},
     r"function\.name must be a non-empty string"),
    ({"choices": [{"message": {"tool_calls": [{"function": {"name": "f", "arguments": 1}}]}}]},
     r"function\.arguments must be a string"),
    ({"choices": [{"message": {}, "finish_reason": 0}]}, "finish_reason must be a string"),
    ({"choices": [{"index": 0, "message": {}}, {"index": 0, "message": {}}]},
     "repeats a choice index"),
])
def test_parse_malformed_bodies(body: Any, match: str) -> None:
    with pytest.raises(ProtocolError, match=match):
        parse_completion(body)


def test_parse_tool_call_with_bad_index_uses_position() -> None:
    body = {"choices": [{"message": {"tool_calls": [
        {"index": "x", "function": {"name": "f"}}]}}]}
    (call,) = parse_completion(body).tool_calls
    assert (call.index, call.id, call.type, call.arguments) == (0, None, "function", "")


@given(index=st.integers(0, 8), role=st.none() | st.sampled_from(["assistant", "tool"]),
       content=st.text(max_size=20), reasoning=st.text(max_size=20),
       finish=st.none() | st.sampled_from(["stop", "length"]))
def test_the_assemblers_fast_delta_is_the_dataclass_itself(
        index: int, role: str | None, content: str, reasoning: str,
        finish: str | None) -> None:
    from dataclasses import FrozenInstanceError, replace

    from kimi_actors.protocol.results import parsed_delta

    raw = {"id": "x"}
    usage = Usage(prompt_tokens=1, completion_tokens=2, total_tokens=3)
    fast = parsed_delta(index, role, content, reasoning, (), finish, usage, raw)
    slow = Delta(index=index, role=role, content=content, reasoning_content=reasoning,
                 finish_reason=finish, usage=usage, raw=raw)
    assert type(fast) is Delta
    assert fast == slow
    assert repr(fast) == repr(slow)
    assert fast.raw is raw
    assert fast.restart is False
    assert replace(fast, content="z").content == "z"
    with pytest.raises(FrozenInstanceError):
        fast.content = "changed"  # type: ignore[misc]


@given(prompt=st.integers(0, 10**9), completion=st.integers(0, 10**9),
       cached=st.none() | st.integers(0, 10**9), text=st.text(max_size=20),
       index=st.integers(0, 8), finish=st.none() | st.sampled_from(["stop", "length"]))
def test_slot_builders_make_what_the_constructors_make(
        prompt: int, completion: int, cached: int | None, text: str, index: int,
        finish: str | None) -> None:
    from dataclasses import FrozenInstanceError, fields, replace

    from kimi_actors.protocol.classify import Action, Outcome, _success
    from kimi_actors.protocol.results import parsed_chat_result, parsed_choice, slot_builder

    raw = {"prompt_tokens": prompt}
    usage = Usage.from_dict({"prompt_tokens": prompt, "completion_tokens": completion,
                             "cached_tokens": cached})
    assert usage is not None
    built: list[tuple[Any, Any]] = [
        (usage, Usage(prompt_tokens=prompt, completion_tokens=completion,
                      total_tokens=prompt + completion, cached_tokens=cached, raw=raw)),
        (parsed_choice(index, "assistant", text, "", (), finish),
         Choice(index=index, role="assistant", content=text, finish_reason=finish)),
        (parsed_chat_result("id", "kimi-k2", 1, (), usage, None, raw),
         ChatResult(id="id", model="kimi-k2", created=1, choices=(), usage=usage, raw=raw)),
        (_success(raw), Outcome(action=Action.SUCCESS, body=raw)),
    ]
    for fast, slow in built:
        assert type(fast) is type(slow)
        assert fast == slow
        assert repr(fast) == repr(slow)
        assert replace(fast) == slow
        with pytest.raises(FrozenInstanceError):
            setattr(fast, fields(fast)[0].name, None)
    with pytest.raises(TypeError, match="no field"):
        slot_builder(Usage, nonsense=1)
    with pytest.raises(TypeError):
        slot_builder(Usage)(1, 2)  # every field is given, or none is left unset


def test_a_slot_builder_refuses_a_class_without_the_layout_it_relies_on() -> None:
    """The builder fills a twin of the class's slots and then swaps its class: a class with
    a __dict__, or slots of a base, is refused when the builder is made, not on first use."""
    from dataclasses import dataclass

    from kimi_actors.protocol.results import slot_builder

    @dataclass(frozen=True)
    class WithDict:
        value: int

    @dataclass(frozen=True, slots=True)
    class Base:
        value: int

    @dataclass(frozen=True, slots=True)
    class Derived(Base):
        other: int

    @dataclass(frozen=True, slots=True)
    class Clashing:
        _cls: int

    for cls in (WithDict, Derived):
        with pytest.raises(TypeError, match="not a slots dataclass"):
            slot_builder(cls)
    with pytest.raises(TypeError, match="_cls"):
        slot_builder(Clashing)
    built = slot_builder(Base)(3)
    assert type(built) is Base
    assert built == Base(3)


def test_feed_data_into_appends_what_feed_data_returns() -> None:
    """A reader collects a read's deltas in one list: each chunk's deltas are appended, and
    a chunk's top-level usage goes on that chunk's own first delta, not the list's."""
    bodies = [chunk(choice(role="assistant", content="Hel")), chunk(choice(content="lo")),
              chunk(choice(finish_reason="stop"), usage=USAGE)]
    one_by_one = ChunkAssembler()
    expected = [delta for body in bodies for delta in one_by_one.feed_data(json.dumps(body))]
    into = ChunkAssembler()
    collected: list[Delta] = []
    for body in bodies:
        into.feed_data_into(json.dumps(body), collected)
    assert collected == expected
    assert [delta.usage for delta in collected] == [None, None, Usage(**USAGE)]
    into.feed_data_into("[DONE]", collected)
    assert into.done
    assert len(collected) == 3
    assert into.result().content == "Hello"
