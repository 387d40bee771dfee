"""ChunkRenderer: delivered deltas written back as one OpenAI-style SSE stream.

The rendered bytes are read back with a few lines of SSE and JSON parsing written here, not
with the library's decoder or assembler.
"""

from __future__ import annotations

import itertools
import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kimi_actors.protocol.chunks import ChunkAssembler, Delta
from kimi_actors.protocol.render import DONE_EVENT, ChunkRenderer, RestartAfterOutput
from kimi_actors.protocol.sse import SSEEvent


def server_chunk(chunk_id: str, *choices: dict[str, Any], usage: Any = None,
                 **extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"id": chunk_id, "object": "chat.completion.chunk",
                            "created": 1_700_000_000 + len(chunk_id), "model": "kimi-k2",
                            "choices": list(choices), **extra}
    if usage is not None:
        body["usage"] = usage
    return body


def choice(content: str = "", *, index: int = 0, role: str | None = None,
           finish: str | None = None, usage: Any = None) -> dict[str, Any]:
    delta: dict[str, Any] = {"content": content}
    if role:
        delta["role"] = role
    entry: dict[str, Any] = {"index": index, "delta": delta, "finish_reason": finish}
    if usage is not None:
        entry["usage"] = usage
    return entry


def events(data: bytes) -> list[Any]:
    """Each ``data:`` payload of an SSE byte string: parsed JSON, or the text ``[DONE]``."""
    found = []
    for block in data.decode("utf-8").split("\n\n"):
        if not block:
            continue
        assert block.startswith("data: ")
        assert "\n" not in block
        payload = block[len("data: "):]
        found.append(payload if payload == "[DONE]" else json.loads(payload))
    return found


def render_segments(segments: list[list[dict[str, Any]]]) -> list[Any]:
    """Feed server segments (a resume between each) through the assembler and renderer, as
    parsed chunks and as SSE events (whose deltas keep the text); both render the same."""
    rendered = []
    for as_events in (False, True):
        assembler, renderer, out = ChunkAssembler(), ChunkRenderer(), b""
        for number, segment in enumerate(segments):
            if number:
                assembler.begin_continuation()
            for raw in segment:
                deltas = (assembler.feed_event(SSEEvent(data=json.dumps(raw))) if as_events
                          else assembler.feed(raw))
                out += renderer.render(deltas)
        rendered.append(events(out + DONE_EVENT))
    assert rendered[0] == rendered[1]
    return rendered[0]


USAGE = {"prompt_tokens": 9, "completion_tokens": 4, "total_tokens": 13}


def test_a_resumed_stream_is_one_stream_under_the_first_identity() -> None:
    rendered = render_segments([
        [server_chunk("a", choice("Hel", role="assistant")), server_chunk("a", choice("lo"))],
        [server_chunk("b", choice(", wor", role="assistant")),
         server_chunk("b", choice("ld", finish="stop", usage=USAGE))],
    ])
    assert rendered[-1] == "[DONE]"
    chunks = rendered[:-1]
    assert {c["id"] for c in chunks} == {"a"}
    assert {c["created"] for c in chunks} == {1_700_000_001}
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks) == "Hello, world"
    assert [c["choices"][0]["delta"].get("role") for c in chunks] == ["assistant", None, None,
                                                                       None]
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"
    # Kimi's usage stays in the choice and is given at the top level too, where the SDK reads.
    assert chunks[-1]["choices"][0]["usage"] == USAGE == chunks[-1]["usage"]


def test_the_choices_of_one_chunk_stay_one_chunk() -> None:
    rendered = render_segments([[
        server_chunk("n", choice("A", index=0, role="assistant"),
                     choice("B", index=1, role="assistant")),
        server_chunk("n", choice("a", index=0, finish="stop", usage=USAGE),
                     choice("b", index=1, finish="stop", usage=USAGE)),
    ]])[:-1]
    assert [[(c["index"], c["delta"]["content"]) for c in r["choices"]] for r in rendered] == [
        [(0, "A"), (1, "B")], [(0, "a"), (1, "b")]]
    assert "usage" not in rendered[1]  # two choices' usages: no single top-level one


def test_an_include_usage_chunk_keeps_its_empty_choices() -> None:
    rendered = render_segments([[
        server_chunk("u", choice("Hi", role="assistant", finish="stop")),
        server_chunk("u", usage=USAGE, system_fingerprint="fp-1"),
    ]])[:-1]
    assert rendered[1]["choices"] == []
    assert rendered[1]["usage"] == USAGE
    assert rendered[1]["system_fingerprint"] == "fp-1"


def test_a_restart_is_shown_only_before_anything_was_written() -> None:
    renderer = ChunkRenderer()
    assert renderer.render([Delta(restart=True)]) == b""
    assert not renderer.written
    first = Delta(content="x", role="assistant", raw=server_chunk("r", choice("x")))
    assert events(renderer.render([first]))[0]["choices"][0]["delta"] == {
        "role": "assistant", "content": "x"}
    with pytest.raises(RestartAfterOutput):
        renderer.render([Delta(restart=True)])
    with pytest.raises(RestartAfterOutput):  # within one batch, too
        ChunkRenderer().render([first, Delta(restart=True)])


def test_deltas_made_here_without_a_server_chunk_are_rendered() -> None:
    renderer = ChunkRenderer()
    renderer.render([Delta(content="ab", raw=server_chunk("z", choice("ab")))])
    tail = events(renderer.render([Delta(finish_reason="length")]))
    assert tail[0]["id"] == "z"
    assert tail[0]["choices"] == [{"index": 0, "delta": {}, "finish_reason": "length"}]


def test_reasoning_and_tool_fragments_are_carried() -> None:
    fragment = {"index": 0, "id": "call_1", "type": "function",
                "function": {"name": "f", "arguments": "{}"}}
    raw = server_chunk("t", {"index": 0, "delta": {"reasoning_content": "hmm",
                                                   "tool_calls": [fragment]},
                             "finish_reason": None})
    rendered = render_segments([[raw]])
    assert rendered[0]["choices"][0]["delta"] == {"reasoning_content": "hmm",
                                                  "tool_calls": [fragment]}


@given(text=st.text(min_size=1, max_size=60),
       cuts=st.lists(st.integers(min_value=0, max_value=60), max_size=6),
       drops=st.lists(st.integers(min_value=0, max_value=60), max_size=3))
def test_any_chunking_and_resume_points_render_the_text_exactly_once(
        text: str, cuts: list[int], drops: list[int]) -> None:
    bounds = sorted({0, len(text), *(min(c, len(text)) for c in cuts)})
    pieces = [text[a:b] for a, b in itertools.pairwise(bounds)]
    breaks = sorted({min(d, len(pieces)) for d in drops})
    segments: list[list[dict[str, Any]]] = []
    start = 0
    for number, stop in enumerate([*breaks, len(pieces)]):
        segment = [server_chunk(f"s{number}", choice(piece, role="assistant" if i == 0 else None))
                   for i, piece in enumerate(pieces[start:stop])]
        segments.append(segment)
        start = stop
    segments[-1].append(server_chunk("end", choice(finish="stop", usage=USAGE)))
    rendered = render_segments(segments)
    chunks = rendered[:-1]
    assert rendered.count("[DONE]") == 1
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks) == text
    assert len({c["id"] for c in chunks}) == 1
    assert sum(1 for c in chunks if c["choices"][0]["delta"].get("role")) == 1
