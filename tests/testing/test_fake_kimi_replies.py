"""Deterministic replies, Partial Mode continuations, tool calls and token counts (pure)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import unicodedata
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kimi_actors.protocol.tokens import estimate_prompt_tokens, prompt_token_ceiling
from kimi_actors.testing import (
    DEFAULT_MODELS,
    Reply,
    ToolCall,
    context_length,
    count_prompt_tokens,
    expected_reply,
    expected_tool_call,
)
from kimi_actors.testing.replies import (
    MAX_PIECES,
    MAX_REASONING_PIECES,
    MIN_PIECES,
    MIN_REASONING_PIECES,
    is_thinking_model,
    split_partial,
    wants_tool_call,
)

MODEL = "moonshot-v1-8k"
THINKING = "kimi-k2-thinking"


def conversation(text: str = "hello") -> list[dict[str, Any]]:
    return [{"role": "system", "content": "be brief"}, {"role": "user", "content": text}]


def partial(messages: list[dict[str, Any]], prefix: str) -> list[dict[str, Any]]:
    return [*messages, {"role": "assistant", "content": prefix, "partial": True}]


def test_reply_is_a_pure_function_of_model_messages_seed_and_choice() -> None:
    base = expected_reply(MODEL, conversation())
    variants = [
        expected_reply(MODEL, conversation("hello!")),
        expected_reply("moonshot-v1-32k", conversation()),
        expected_reply(MODEL, conversation(), seed=1),
        expected_reply(MODEL, conversation(), choice=1),
    ]
    assert all(variant.content != base.content for variant in variants)


def test_pieces_are_tokens_and_mix_ascii_chinese_and_emoji() -> None:
    replies = [expected_reply(MODEL, conversation(f"question {i}")) for i in range(40)]
    lengths = {len(reply.pieces) for reply in replies}
    assert min(lengths) >= MIN_PIECES
    assert max(lengths) <= MAX_PIECES
    assert len(lengths) > 10
    text = "".join(reply.content for reply in replies)
    assert any(char.isascii() and char.isalpha() for char in text)
    assert any(unicodedata.name(char, "").startswith("CJK UNIFIED") for char in text)
    assert any(ord(char) > 0xFFFF for char in text)
    assert '"' in text
    assert "\n" in text
    for reply in replies:
        assert reply.finish_reason == "stop"
        assert reply.completion_tokens == len(reply.pieces)
        assert "".join(reply.pieces) == reply.content
        assert all(reply.pieces)
        assert reply.reasoning_pieces == ()
        assert reply.reasoning_content == ""


def test_max_tokens_cuts_the_pieces_with_finish_reason_length() -> None:
    full = expected_reply(MODEL, conversation())
    cut = expected_reply(MODEL, conversation(), max_tokens=3)
    assert cut.pieces == full.pieces[:3]
    assert cut.finish_reason == "length"
    assert cut.completion_tokens == 3
    exact = expected_reply(MODEL, conversation(), max_tokens=len(full.pieces))
    assert exact == full
    assert expected_reply(MODEL, conversation(), max_tokens=1000) == full


def test_thinking_model_reasons_first_and_max_tokens_counts_reasoning() -> None:
    assert is_thinking_model(THINKING)
    assert not is_thinking_model(MODEL)
    full = expected_reply(THINKING, conversation())
    assert MIN_REASONING_PIECES <= len(full.reasoning_pieces) <= MAX_REASONING_PIECES
    assert full.completion_tokens == len(full.pieces) + len(full.reasoning_pieces)
    budget = len(full.reasoning_pieces) + 2
    cut = expected_reply(THINKING, conversation(), max_tokens=budget)
    assert cut.reasoning_pieces == full.reasoning_pieces
    assert cut.pieces == full.pieces[:2]
    only_reasoning = expected_reply(THINKING, conversation(), max_tokens=2)
    assert only_reasoning.reasoning_pieces == full.reasoning_pieces[:2]
    assert only_reasoning.pieces == ()
    assert only_reasoning.finish_reason == "length"


def cut_points(reply: Reply) -> list[int]:
    """Piece boundaries, points inside pieces, both ends."""
    points = {0, len(reply.content)}
    offset = 0
    for piece in reply.pieces:
        points.add(offset)
        if len(piece) > 1:
            points.add(offset + 1)
        offset += len(piece)
    return sorted(points)


@pytest.mark.parametrize("model", [MODEL, THINKING])
def test_partial_continuation_completes_the_full_reply_at_every_cut(model: str) -> None:
    full = expected_reply(model, conversation())
    assert any(len(piece) > 1 for piece in full.pieces)
    for point in cut_points(full):
        prefix = full.content[:point]
        rest = expected_reply(model, partial(conversation(), prefix))
        assert prefix + rest.content == full.content
        assert rest.reasoning_pieces == ()
        assert rest.finish_reason == "stop"
        assert "".join(rest.pieces) == rest.content
        assert len(rest.pieces) <= len(full.pieces)
        assert rest.completion_tokens == len(rest.pieces)


def test_partial_continuation_inside_a_piece_starts_with_its_tail() -> None:
    full = expected_reply(MODEL, conversation())
    index = next(i for i, piece in enumerate(full.pieces) if len(piece) > 1)
    before = "".join(full.pieces[:index])
    rest = expected_reply(MODEL, partial(conversation(), before + full.pieces[index][:1]))
    assert rest.pieces[0] == full.pieces[index][1:]
    assert rest.pieces[1:] == full.pieces[index + 1:]


def test_partial_continuation_is_cut_by_max_tokens() -> None:
    full = expected_reply(MODEL, conversation())
    prefix = "".join(full.pieces[:2])
    rest = expected_reply(MODEL, partial(conversation(), prefix), max_tokens=3)
    assert rest.pieces == full.pieces[2:5]
    assert rest.finish_reason == "length"


def test_partial_with_a_foreign_prefix_gets_a_deterministic_continuation() -> None:
    messages = partial(conversation(), "Something the model never said")
    first = expected_reply(MODEL, messages)
    assert MIN_PIECES <= len(first.pieces) <= MAX_PIECES
    other = expected_reply(MODEL, partial(conversation(), "Another start"))
    assert other.content != first.content


def test_partial_of_the_whole_reply_continues_with_nothing() -> None:
    full = expected_reply(MODEL, conversation())
    rest = expected_reply(MODEL, partial(conversation(), full.content))
    assert rest.content == ""
    assert rest.pieces == ()
    assert rest.finish_reason == "stop"


def test_split_partial_only_takes_a_trailing_partial_assistant_message() -> None:
    messages = conversation()
    assert split_partial(messages) == (messages, None)
    assert split_partial(partial(messages, "Hi")) == (messages, "Hi")
    not_partial = [*messages, {"role": "assistant", "content": "Hi"}]
    assert split_partial(not_partial) == (not_partial, None)
    assert split_partial([]) == ([], None)


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"seed": "1"}, "seed"), ({"max_tokens": -1}, "max_tokens"), ({"choice": -1}, "choice"),
    ({"max_tokens": True}, "max_tokens"),
])
def test_expected_reply_rejects_bad_arguments(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        expected_reply(MODEL, conversation(), **kwargs)


def test_reply_validates_its_fields() -> None:
    with pytest.raises(ValueError, match="finish_reason"):
        Reply(content="a", reasoning_content="", finish_reason="done", pieces=("a",),
              reasoning_pieces=(), completion_tokens=1)
    with pytest.raises(ValueError, match="join"):
        Reply(content="ab", reasoning_content="", finish_reason="stop", pieces=("a",),
              reasoning_pieces=(), completion_tokens=1)
    with pytest.raises(ValueError, match="join"):
        Reply(content="a", reasoning_content="x", finish_reason="stop", pieces=("a",),
              reasoning_pieces=(), completion_tokens=1)
    with pytest.raises(ValueError, match="count"):
        Reply(content="a", reasoning_content="", finish_reason="stop", pieces=("a",),
              reasoning_pieces=(), completion_tokens=2)


def test_context_lengths() -> None:
    assert context_length("moonshot-v1-8k") == 8_192
    assert context_length("moonshot-v1-32k") == 32_768
    assert context_length("moonshot-v1-128k") == 131_072
    assert {context_length(model) for model in DEFAULT_MODELS if model.startswith("kimi")} \
        == {262_144}


WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "weather of a city",
    "parameters": {"type": "object", "properties": {
        "city": {"type": "string"}, "days": {"type": "integer"}, "metric": {"type": "boolean"},
        "unit": {"type": "string", "enum": ["C", "F"]}, "score": {"type": "number"},
        "tags": {"type": "array"}, "extra": {"type": "object"}}}}}
CLOCK = {"type": "function", "function": {"name": "get_time", "parameters": {}}}


def test_tool_call_decision() -> None:
    ask = conversation("please use a tool")
    assert wants_tool_call(ask, [WEATHER, CLOCK]) == "get_weather"
    assert wants_tool_call(conversation("Tools, please"), [WEATHER]) == "get_weather"
    assert wants_tool_call(conversation("a toolbox"), [WEATHER]) is None
    assert wants_tool_call(ask, None) is None
    assert wants_tool_call(ask, [{"type": "function"}]) is None
    assert wants_tool_call(ask, [WEATHER], "none") is None
    assert wants_tool_call(conversation(), [WEATHER], "required") == "get_weather"
    forced = {"type": "function", "function": {"name": "get_time"}}
    assert wants_tool_call(conversation(), [WEATHER, CLOCK], forced) == "get_time"
    parts = [{"role": "user", "content": [{"type": "text", "text": "call the tool"}]}]
    assert wants_tool_call(parts, [WEATHER]) == "get_weather"
    assert wants_tool_call([{"role": "system", "content": "tool"}], [WEATHER]) is None


def test_tool_call_arguments_follow_the_schema_and_are_deterministic() -> None:
    call = expected_tool_call(MODEL, conversation("use the tool"), [WEATHER])
    assert call is not None
    assert call.id == "functions.get_weather:0"
    assert call.name == "get_weather"
    arguments = json.loads(call.arguments)
    assert set(arguments) == {"city", "days", "metric", "unit", "score", "tags", "extra"}
    assert isinstance(arguments["city"], str)
    assert arguments["city"]
    assert isinstance(arguments["days"], int)
    assert isinstance(arguments["metric"], bool)
    assert arguments["unit"] in ("C", "F")
    assert isinstance(arguments["score"], int | float)
    assert arguments["tags"] == []
    assert arguments["extra"] == {}
    assert len(call.argument_pieces) > 3
    assert "".join(call.argument_pieces) == call.arguments
    assert call.completion_tokens == 1 + len(call.argument_pieces)
    empty = expected_tool_call(MODEL, conversation(), [CLOCK], tool_choice="required")
    assert empty is not None
    assert empty.arguments == "{}"
    assert expected_tool_call(MODEL, conversation(), [WEATHER]) is None


def text_strategy() -> st.SearchStrategy[str]:
    return st.text(alphabet=st.characters(codec="utf-8"), max_size=60) | st.sampled_from(
        ["你好世界", "🌙🚀✨", "a b c d e f", "x" * 17, "é ü ß", "", " ", "한국어", "ｆｕｌｌ"])


content_parts = st.lists(st.one_of(
    st.fixed_dictionaries({"type": st.just("text"), "text": text_strategy()}),
    st.fixed_dictionaries({"type": st.just("image_url"),
                           "image_url": st.fixed_dictionaries({"url": st.just("data:x")})}),
    st.fixed_dictionaries({"type": st.just("other"), "value": text_strategy()}),
    text_strategy(),
), max_size=4)
messages_strategy = st.lists(st.one_of(
    st.fixed_dictionaries(
        {"role": st.sampled_from(["system", "user", "assistant", "tool"]),
         "content": st.one_of(st.none(), text_strategy(), content_parts,
                              st.dictionaries(st.text(max_size=5), text_strategy(),
                                              max_size=2))},
        optional={"name": text_strategy(), "reasoning_content": text_strategy(),
                  "tool_calls": st.lists(st.fixed_dictionaries(
                      {"id": text_strategy(), "function": st.fixed_dictionaries(
                          {"name": text_strategy(), "arguments": text_strategy()})}),
                      max_size=2),
                  "partial": st.booleans()}),
    text_strategy(),
), max_size=6)


@settings(max_examples=300, deadline=None)
@given(messages=messages_strategy,
       tools=st.none() | st.lists(st.fixed_dictionaries(
           {"type": st.just("function"), "function": st.fixed_dictionaries(
               {"name": text_strategy(), "description": text_strategy()})}), max_size=3))
def test_true_prompt_tokens_are_plausible_whatever_the_body(messages: list[Any],
                                                           tools: list[Any] | None) -> None:
    """FakeKimi counts on its own (testing/tokenizer.py), so it may be above or below the
    client's estimate; it stays within what the client believes a prompt can cost (its
    settle ceiling), so the client never has to discard a FakeKimi count as absurd."""
    body: dict[str, Any] = {"model": MODEL, "messages": messages}
    if tools is not None:
        body["tools"] = tools
    true_count = count_prompt_tokens(body)
    payload = json.dumps(body, ensure_ascii=False).encode()
    assert 1 <= true_count <= prompt_token_ceiling(body, len(payload))


@pytest.mark.parametrize(("text", "relation"), [
    ("You are a helpful assistant, answering questions about rate limits. " * 5, "below"),
    ("order 1234567890123456789 ref 2026120100112233 code 998877665544", "above"),
    (";;;;;;;;;;;;;;;;;;;;;;;;||||||||||||||||", "above"),
])
def test_the_true_count_is_not_the_estimate(text: str, relation: str) -> None:
    """An oracle must not share the code it checks: the estimate errs both ways against it."""
    body = {"model": MODEL, "messages": [{"role": "user", "content": text}]}
    true_count, estimate = count_prompt_tokens(body), estimate_prompt_tokens(body)
    assert (true_count < estimate) if relation == "below" else (true_count > estimate)


def test_true_prompt_tokens_are_somewhat_below_the_estimate_for_real_text() -> None:
    body = {"model": MODEL, "messages": [
        {"role": "system", "content": "You are a helpful assistant. " * 20},
        {"role": "user", "content": "请用中文回答这个问题，谢谢 🌙 " * 10}]}
    true_count = count_prompt_tokens(body)
    estimate = estimate_prompt_tokens(body)
    assert true_count < estimate
    assert true_count > estimate // 2


@settings(max_examples=200, deadline=None)
@given(text=st.text(max_size=30), seed=st.none() | st.integers(0, 2**32), data=st.data())
def test_any_prefix_of_any_reply_continues_to_that_reply(text: str, seed: int | None,
                                                         data: st.DataObject) -> None:
    model = data.draw(st.sampled_from(DEFAULT_MODELS))
    messages = conversation(text)
    full = expected_reply(model, messages, seed=seed)
    point = data.draw(st.integers(0, len(full.content)))
    rest = expected_reply(model, partial(messages, full.content[:point]), seed=seed)
    assert full.content[:point] + rest.content == full.content


def test_tool_call_edge_cases() -> None:
    forced_second = expected_tool_call(
        MODEL, conversation(), [WEATHER, CLOCK],
        tool_choice={"type": "function", "function": {"name": "get_time"}})
    assert forced_second is not None
    assert forced_second.name == "get_time"
    unknown_forced = wants_tool_call(conversation(), [WEATHER],
                                     {"type": "function", "function": {"name": "nope"}})
    assert unknown_forced == "get_weather"
    odd_schema = {"type": "function", "function": {
        "name": "odd", "parameters": {"properties": {"x": "not a schema"}}}}
    call = expected_tool_call(MODEL, conversation("tool"), [odd_schema])
    assert call is not None
    assert json.loads(call.arguments) == {"x": None}
    assert wants_tool_call([{"role": "user", "content": None}], [WEATHER]) is None
    with pytest.raises(ValueError, match="join"):
        ToolCall(id="a", name="f", arguments="{}", argument_pieces=("{",))


def test_a_prefix_diverging_inside_a_piece_is_foreign() -> None:
    full = expected_reply(MODEL, conversation())
    index = next(i for i, piece in enumerate(full.pieces) if len(piece) > 1)
    wrong = "#" if full.pieces[index][0] != "#" else "%"
    prefix = "".join(full.pieces[:index]) + wrong
    rest = expected_reply(MODEL, partial(conversation(), prefix))
    assert not full.content.startswith(prefix)
    assert rest == expected_reply(MODEL, partial(conversation(), prefix))
    assert MIN_PIECES <= len(rest.pieces) <= MAX_PIECES


@settings(max_examples=200, deadline=None)
@given(own_prefix=st.text(min_size=1, max_size=20), data=st.data())
def test_continuing_a_continuation_gives_the_rest_of_it(own_prefix: str,
                                                        data: st.DataObject) -> None:
    first = expected_reply(MODEL, partial(conversation(), own_prefix))
    received = data.draw(st.integers(0, len(first.content)))
    resumed = expected_reply(MODEL, partial(conversation(),
                                            own_prefix + first.content[:received]))
    assert first.content[:received] + resumed.content == first.content
    again = data.draw(st.integers(0, len(resumed.content)))
    third = expected_reply(MODEL, partial(
        conversation(), own_prefix + first.content[:received] + resumed.content[:again]))
    assert resumed.content[:again] + third.content == resumed.content


def test_a_long_foreign_prefix_is_continued_quickly_and_consistently() -> None:
    own = "用户自己的开头 " * 200
    first = expected_reply(MODEL, partial(conversation(), own))
    assert first.content
    rest = expected_reply(MODEL, partial(conversation(), own + first.content[:7]))
    assert first.content[:7] + rest.content == first.content


_REPLIES_SCRIPT = """
import json, sys
from kimi_actors.testing.replies import expected_reply, expected_tool_call
ask = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "use the tool"}]
foreign = [*ask, {"role": "assistant", "content": "Something the model never said",
                  "partial": True}]
weather = json.loads(sys.argv[1])
call = expected_tool_call(%r, ask, [weather])
print(json.dumps([expected_reply(%r, ask).content, expected_reply(%r, foreign).content,
                  expected_reply(%r, ask, seed=7, choice=1).content,
                  None if call is None else call.arguments]))
"""


@pytest.mark.parametrize("hash_seed", ["1", "2"])
def test_replies_are_the_same_in_every_process(hash_seed: str) -> None:
    # Determinism that matters crosses processes (the demo's FakeKimi runs in another one): a
    # fresh interpreter with another str-hash seed and empty caches gives the same answers.
    script = _REPLIES_SCRIPT % (MODEL, MODEL, MODEL, MODEL)
    ran = subprocess.run([sys.executable, "-c", script, json.dumps(WEATHER)], check=True,
                         capture_output=True, text=True, timeout=60,
                         env={**os.environ, "PYTHONHASHSEED": hash_seed})
    ask = conversation("use the tool")
    call = expected_tool_call(MODEL, ask, [WEATHER])
    here = [expected_reply(MODEL, ask).content,
            expected_reply(MODEL, partial(ask, "Something the model never said")).content,
            expected_reply(MODEL, ask, seed=7, choice=1).content,
            None if call is None else call.arguments]
    assert json.loads(ran.stdout) == here
    assert call is not None
