"""SSEDecoder: the WHATWG parsing rules, our close() and cap choices, and split invariance.

Every example-based case goes through ``decode``/``decode_error``, which feed the stream whole
and one byte at a time and require both to agree.
"""

from __future__ import annotations

import itertools
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kimi_actors.errors import ProtocolError, StreamError
from kimi_actors.protocol.sse import DONE, SSEDecoder, SSEEvent

BOM = b"\xef\xbb\xbf"


def feed_pieces(pieces: list[bytes], **caps: int) -> list[SSEEvent]:
    decoder = SSEDecoder(**caps)
    events: list[SSEEvent] = []
    for piece in pieces:
        events += decoder.feed(piece)
    events += decoder.close()
    return events


def bytewise(stream: bytes) -> list[bytes]:
    return [stream[i : i + 1] for i in range(len(stream))]


def decode(stream: bytes, **caps: int) -> list[SSEEvent]:
    """Events of ``stream`` fed whole; asserts that feeding it byte by byte gives the same."""
    whole = feed_pieces([stream], **caps)
    assert feed_pieces(bytewise(stream), **caps) == whole
    return whole


def decode_error(stream: bytes, **caps: int) -> str:
    """The ProtocolError message for ``stream`` fed whole; byte by byte must raise too."""
    with pytest.raises(ProtocolError) as whole:
        feed_pieces([stream], **caps)
    with pytest.raises(ProtocolError):
        feed_pieces(bytewise(stream), **caps)
    return str(whole.value)


def datas(events: list[SSEEvent]) -> list[str]:
    return [event.data for event in events]


# --- basic framing ----------------------------------------------------------------------------


def test_simple_event() -> None:
    assert decode(b'data: {"a":1}\n\n') == [SSEEvent(data='{"a":1}')]


def test_done_sentinel() -> None:
    events = decode(b'data: {"x":1}\n\ndata: [DONE]\n\n')
    assert [event.is_done for event in events] == [False, True]
    assert events[1].data == DONE


@pytest.mark.parametrize(
    ("data", "done"),
    [("[DONE]", True), (" [DONE] ", True), ("[DONE]\n", True), ("[DONE]x", False),
     ("[done]", False), ("", False)],
)
def test_is_done_ignores_surrounding_whitespace_only(data: str, done: bool) -> None:
    assert SSEEvent(data=data).is_done is done


def test_multi_line_data_is_joined_with_newline() -> None:
    assert datas(decode(b"data: a\ndata: b\ndata: c\n\n")) == ["a\nb\nc"]


def test_empty_data_lines_join_properly() -> None:
    assert datas(decode(b"data:\n\n")) == [""]
    assert datas(decode(b"data\n\n")) == [""]
    assert datas(decode(b"data: a\ndata:\ndata: b\n\n")) == ["a\n\nb"]
    assert datas(decode(b"data:\ndata:\n\n")) == ["\n"]


def test_comments_are_ignored() -> None:
    stream = b": keep-alive\ndata: a\n:another\ndata: b\n\n:\n\n"
    assert datas(decode(stream)) == ["a\nb"]


@pytest.mark.parametrize("eol", [b"\n", b"\r", b"\r\n"])
def test_each_line_ending(eol: bytes) -> None:
    stream = b"data: a" + eol + b"data: b" + eol + eol + b"data: c" + eol + eol
    assert datas(decode(stream)) == ["a\nb", "c"]


def test_mixed_line_endings() -> None:
    stream = b"data: a\rdata: b\r\ndata: c\n\r\ndata: d\r\r\n\n"
    assert datas(decode(stream)) == ["a\nb\nc", "d"]


def test_cr_at_feed_boundary_followed_by_lf_is_one_line_end() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(b"data: a\r") == []
    assert decoder.feed(b"\n") == []
    assert decoder.feed(b"data: b\r\n\r") == [SSEEvent(data="a\nb")]
    assert decoder.feed(b"") == []
    assert decoder.feed(b"\ndata: c\r") == []
    assert decoder.feed(b"\r") == [SSEEvent(data="c")]
    assert decoder.close() == []


def test_lf_after_cr_in_a_later_feed_is_skipped_only_once() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(b"data: a\r") == []
    assert decoder.feed(b"\n\n") == [SSEEvent(data="a")]


def test_lone_cr_then_data_in_next_feed() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(b"data: a\r") == []
    assert decoder.feed(b"data: b\r\r") == [SSEEvent(data="a\nb")]


def test_characters_that_str_splitlines_would_split_are_data() -> None:
    data = "a\x0bb\x0cc\x1cd\x85e\u2028f\u2029g"
    assert datas(decode(f"data: {data}\n\n".encode())) == [data]


# --- BOM --------------------------------------------------------------------------------------


def test_bom_at_stream_start_is_dropped() -> None:
    assert datas(decode(BOM + b"data: a\n\n")) == ["a"]


def test_bom_alone_then_stream() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(BOM[:1]) == []
    assert decoder.feed(BOM[1:]) == []
    assert decoder.buffered == 0
    assert decoder.feed(b"data: a\n\n") == [SSEEvent(data="a")]


def test_bom_not_at_start_is_kept() -> None:
    assert datas(decode("data: \ufeffx\n\n".encode())) == ["\ufeffx"]
    # A second BOM is part of the first line, which makes it an unknown field.
    assert decode(BOM + BOM + b"data: a\n\ndata: b\n\n") == [SSEEvent(data="b")]
    assert decode(b"data: a\n\n" + BOM + b"data: b\n\n") == [SSEEvent(data="a")]


def test_truncated_bom_is_invalid_utf8_at_offset_zero() -> None:
    assert "byte offset 0" in decode_error(b"\xef\xbbdata: a\n\n")


def test_partial_bom_only_is_buffered_then_dropped() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(b"\xef\xbb") == []
    assert decoder.buffered == 2
    assert decoder.close() == []


# --- fields -----------------------------------------------------------------------------------


def test_value_with_no_space_and_two_spaces() -> None:
    assert datas(decode(b"data:x\n\ndata:  x\n\ndata: \tx\n\n")) == ["x", " x", "\tx"]


def test_only_the_first_colon_separates() -> None:
    assert datas(decode(b"data: a: b:c\n\n")) == ["a: b:c"]


def test_field_without_colon_has_empty_value() -> None:
    events = decode(b"event: x\nevent\ndata\n\n")
    assert events == [SSEEvent(data="", event="message")]


def test_unknown_fields_and_near_misses_are_ignored() -> None:
    stream = b"foo: bar\nData: x\ndata : y\n data: z\nevents: e\ndata: ok\n\n"
    assert decode(stream) == [SSEEvent(data="ok")]


def test_event_id_and_retry_fields() -> None:
    events = decode(b"event: delta\nid: 7\nretry: 1500\ndata: a\n\ndata: b\n\n")
    assert events == [
        SSEEvent(data="a", event="delta", id="7", retry=1500),
        SSEEvent(data="b", event="message", id="7", retry=None),
    ]


def test_id_persists_and_can_be_reset_to_empty() -> None:
    stream = b"data: a\n\nid: 1\ndata: b\n\ndata: c\n\nid: 2\n\ndata: d\n\nid\ndata: e\n\n"
    events = decode(stream)
    assert [event.id for event in events] == [None, "1", "1", "2", ""]


def test_id_with_nul_is_ignored() -> None:
    events = decode(b"id: 1\ndata: a\n\nid: x\x00y\ndata: b\n\n")
    assert [event.id for event in events] == ["1", "1"]


def test_last_event_id_and_reconnection_time_survive_blocks_without_data() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(b"id: 9\nretry: 3000\n\n") == []
    assert decoder.last_event_id == "9"
    assert decoder.reconnection_time == 3000
    assert decoder.feed(b"data: a\n\n") == [SSEEvent(data="a", id="9")]


@pytest.mark.parametrize(
    "value", [b"abc", b"15x", b"-1", b"1.5", b"", b" 15", "١٢".encode(), "１".encode()]
)
def test_retry_that_is_not_ascii_digits_is_ignored(value: bytes) -> None:
    decoder = SSEDecoder()
    events = decoder.feed(b"retry: " + value + b"\ndata: a\n\n")
    assert events == [SSEEvent(data="a")]
    assert decoder.reconnection_time is None


def test_event_type_resets_after_dispatch_and_after_empty_block() -> None:
    stream = b"event: x\ndata: a\n\ndata: b\n\nevent: y\n\ndata: c\n\n"
    assert [event.event for event in decode(stream)] == ["x", "message", "message"]


def test_event_without_data_is_not_dispatched() -> None:
    assert decode(b"event: x\nid: 1\nretry: 5\n\n\n\n: c\n\n") == []


def test_retry_belongs_to_its_event_only() -> None:
    events = decode(b"retry: 5\n\ndata: a\n\n")
    assert events == [SSEEvent(data="a")]


# --- UTF-8 ------------------------------------------------------------------------------------


def test_multibyte_characters_split_across_feeds() -> None:
    text = "中文回答 🙂👍🏽 ñ"
    stream = f'data: {{"content":"{text}"}}\nevent: 事件\nid: 标识\n\n'.encode()
    events = decode(stream)
    assert events == [SSEEvent(data=f'{{"content":"{text}"}}', event="事件", id="标识")]
    emoji = "🙂".encode()
    decoder = SSEDecoder()
    assert decoder.feed(b"data: " + emoji[:1]) == []
    assert decoder.feed(emoji[1:3]) == []
    assert decoder.feed(emoji[3:] + b"\n\n") == [SSEEvent(data="🙂")]


@pytest.mark.parametrize(
    ("stream", "offset"),
    [
        (b"data: ok\n\ndata: \xff\n\n", 16),
        (BOM + b"data: ok\n\ndata: \xff\n\n", 19),
        (b"data: ok\r\n\r\ndata: a\xc3(\n\n", 19),
        (b": \xe4\xbd\n", 2),
        (b"data: \xed\xa0\x80\n\n", 6),
        (b"event: \xc0\xaf\ndata: a\n\n", 7),
    ],
)
def test_invalid_utf8_names_the_byte_offset(stream: bytes, offset: int) -> None:
    message = decode_error(stream)
    assert f"byte offset {offset}" in message
    assert "invalid UTF-8" in message


def test_invalid_utf8_offset_counts_skipped_lf_after_cr() -> None:
    decoder = SSEDecoder()
    decoder.feed(b"data: a\r")
    with pytest.raises(ProtocolError, match="byte offset 15"):
        decoder.feed(b"\ndata: \xff\n")


def test_protocol_error_is_a_stream_error_and_chains_the_decode_error() -> None:
    with pytest.raises(StreamError) as info:
        SSEDecoder().feed(b"data: \xff\n")
    assert isinstance(info.value, ProtocolError)
    assert isinstance(info.value.__cause__, UnicodeDecodeError)


def test_invalid_utf8_in_a_dropped_partial_line_is_not_an_error() -> None:
    assert decode(b"data: a\n\ndata: \xff") == [SSEEvent(data="a")]


# --- caps -------------------------------------------------------------------------------------


def test_line_exactly_at_the_cap_is_accepted() -> None:
    line = b"data: " + b"x" * 10
    assert datas(decode(line + b"\n\n", max_line_bytes=16)) == ["x" * 10]
    assert datas(decode(line + b"\r\n\r\n", max_line_bytes=16)) == ["x" * 10]


@pytest.mark.parametrize(
    "stream",
    [
        b"data: " + b"x" * 11 + b"\n\n",
        b"data: " + b"x" * 11,
        b"data: a\n" + b": " + b"y" * 15 + b"\ndata: b\n\n",
        b"data: a\n\ndata: " + b"x" * 11 + b"\r",
        ("data: " + "你" * 4 + "\n\n").encode(),
    ],
)
def test_line_over_the_cap_raises(stream: bytes) -> None:
    assert "16-byte limit" in decode_error(stream, max_line_bytes=16)


@pytest.mark.parametrize(
    ("pieces", "line_start"),
    [
        ([b"data: a\n" + b"x" * 17], 8),
        ([b"data: a\n", b"x" * 17], 8),
        ([b"data: a\r\n\r\n" + b"x" * 17 + b"\n"], 11),
        ([b"data: a\r\n\r\n" + b"x" * 17 + b"\n", b"\n"], 11),
        ([b"data: a\n\nxx", b"x" * 15 + b"\n"], 9),
    ],
)
def test_line_cap_error_names_where_the_line_starts(pieces: list[bytes], line_start: int) -> None:
    with pytest.raises(ProtocolError, match=f"line starts at stream offset {line_start}\\)"):
        feed_pieces(pieces, max_line_bytes=16)


def test_line_cap_counts_bytes_of_multibyte_lines_in_a_large_block() -> None:
    ok_line = ("data: " + "é" * 5 + "\n").encode()
    assert len(ok_line) == 17
    expected = [SSEEvent(data="\n".join(["é" * 5] * 3))]
    assert decode(ok_line * 3 + b"\n", max_line_bytes=16) == expected
    bad = ok_line * 2 + ("data: " + "é" * 6 + "\n\n").encode()
    decode_error(bad, max_line_bytes=16)


def test_partial_line_buffer_never_exceeds_the_line_cap() -> None:
    decoder = SSEDecoder(max_line_bytes=16)
    for byte in bytewise(b"data: " + b"x" * 10):
        decoder.feed(byte)
    assert decoder.buffered == 16
    with pytest.raises(ProtocolError, match="over the 16-byte limit"):
        decoder.feed(b"x")
    assert decoder.buffered == 16

    decoder = SSEDecoder(max_line_bytes=16)
    decoder.feed(b"data: 12345")
    with pytest.raises(ProtocolError):
        decoder.feed(b"x" * 1000)
    assert decoder.buffered == 11

    decoder = SSEDecoder(max_line_bytes=16)
    with pytest.raises(ProtocolError):
        decoder.feed(b"data: a\n\n" + b"x" * 17)
    assert decoder.buffered == 0


def test_event_data_cap_counts_joined_bytes() -> None:
    assert datas(decode(b"data: 12345\ndata: 1234\n\n", max_event_bytes=10)) == ["12345\n1234"]
    assert "over 10 bytes" in decode_error(b"data: 12345\ndata: 12345\n\n", max_event_bytes=10)
    assert "over 10 bytes" in decode_error(b"data: 12345678901\n", max_event_bytes=10)


def test_event_data_cap_counts_utf8_bytes_not_characters() -> None:
    fits = "你好你".encode() + b"\n"  # 9 bytes of data
    assert datas(decode(b"data: " + fits + b"\n", max_event_bytes=9)) == ["你好你"]
    decode_error(b"data: a\ndata: " + fits + b"\n", max_event_bytes=10)
    decode_error(b"data: " + "你好你好".encode() + b"\n\n", max_event_bytes=10)


def test_event_cap_resets_between_events() -> None:
    stream = b"data: 1234567890\n\n" * 5
    assert len(decode(stream, max_event_bytes=10)) == 5


def test_caps_must_be_positive() -> None:
    with pytest.raises(ValueError, match="max_line_bytes"):
        SSEDecoder(max_line_bytes=0)
    with pytest.raises(ValueError, match="max_event_bytes"):
        SSEDecoder(max_event_bytes=0)


# --- close() ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("stream", "expected"),
    [
        (b"data: [DONE]\n", ["[DONE]"]),
        (b"data: [DONE]\r", ["[DONE]"]),
        (b"data: [DONE]\r\n", ["[DONE]"]),
        (b"data: a\ndata: b\n", ["a\nb"]),
        (b"data: a\n\ndata: b\n", ["a", "b"]),
        (b"data: a\n\n", ["a"]),
        (b"data: [DONE]", []),
        (b"data: a\n\ndata: [DO", ["a"]),
        (b"data: a\ndata: b", []),
        (b"data: a\n: comment cut", []),
        (b"event: x\nid: 1\n", []),
        (b"", []),
    ],
)
def test_close_dispatches_final_event_only_when_its_lines_are_complete(
    stream: bytes, expected: list[str]
) -> None:
    assert datas(decode(stream)) == expected


def test_close_keeps_event_id_and_retry_of_the_final_event() -> None:
    assert decode(b"id: 3\nevent: end\nretry: 10\ndata: [DONE]\n") == [
        SSEEvent(data="[DONE]", event="end", id="3", retry=10)
    ]


def test_close_is_idempotent_and_feed_after_close_raises() -> None:
    decoder = SSEDecoder()
    decoder.feed(b"data: a\n")
    assert not decoder.closed
    assert decoder.close() == [SSEEvent(data="a")]
    assert decoder.closed
    assert decoder.close() == []
    assert decoder.buffered == 0
    with pytest.raises(ProtocolError, match="after close"):
        decoder.feed(b"data: b\n\n")
    with pytest.raises(ProtocolError):
        decoder.feed(b"")


def test_feed_after_a_protocol_error_raises() -> None:
    decoder = SSEDecoder()
    with pytest.raises(ProtocolError):
        decoder.feed(b"data: \xff\n\n")
    assert decoder.closed
    with pytest.raises(ProtocolError):
        decoder.feed(b"data: a\n\n")


def test_buffered_counts_the_partial_line() -> None:
    decoder = SSEDecoder()
    decoder.feed(b"data: par")
    assert decoder.buffered == 9
    decoder.feed(b"tial\n")
    assert decoder.buffered == 0
    assert decoder.feed(b"\ndata: x") == [SSEEvent(data="partial")]
    assert decoder.buffered == 7


def test_bytearray_input_is_accepted() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(bytearray(b"data: a\r")) == []
    assert decoder.feed(bytearray(b"\n\n")) == [SSEEvent(data="a")]


# --- SSEEvent ---------------------------------------------------------------------------------


def test_event_defaults_and_validation() -> None:
    event = SSEEvent(data="x")
    assert (event.event, event.id, event.retry) == ("message", None, None)
    with pytest.raises(ValueError, match="retry"):
        SSEEvent(data="x", retry=-1)
    with pytest.raises(ValueError, match="NUL"):
        SSEEvent(data="x", id="a\0b")


def test_decoded_events_behave_like_constructed_ones() -> None:
    (event,) = decode(b"event: e\nid: 1\nretry: 2\ndata: d\n\n")
    twin = SSEEvent(data="d", event="e", id="1", retry=2)
    assert event == twin
    assert hash(event) == hash(twin)
    assert repr(event) == repr(twin)
    with pytest.raises(AttributeError):
        event.data = "changed"  # type: ignore[misc]


# --- properties -------------------------------------------------------------------------------

LINE_ENDINGS = ("\n", "\r", "\r\n")
line_text = st.text(st.characters(codec="utf-8", exclude_characters="\r\n"))
data_text = st.text(st.characters(codec="utf-8", exclude_characters="\r"))
names = st.none() | line_text
ids = st.none() | st.text(st.characters(codec="utf-8", exclude_characters="\r\n\0"))
events_strategy = st.lists(st.tuples(data_text, names, ids), max_size=8)


def serialize(events: list[tuple[str, str | None, str | None]], eol: str) -> bytes:
    out: list[str] = []
    for data, name, event_id in events:
        if name is not None:
            out.append(f"event: {name}{eol}")
        if event_id is not None:
            out.append(f"id: {event_id}{eol}")
        out.extend(f"data: {line}{eol}" for line in data.split("\n"))
        out.append(eol)
    return "".join(out).encode()


def expected_events(events: list[tuple[str, str | None, str | None]]) -> list[SSEEvent]:
    expected: list[SSEEvent] = []
    last_id: str | None = None
    for data, name, event_id in events:
        if event_id is not None:
            last_id = event_id
        expected.append(SSEEvent(data=data, event=name or "message", id=last_id))
    return expected


def split_at(stream: bytes, cuts: list[int]) -> list[bytes]:
    bounds = [0, *sorted(cuts), len(stream)]
    return [stream[a:b] for a, b in itertools.pairwise(bounds)]


@st.composite
def mixed_streams(draw: st.DrawFn) -> bytes:
    """Events, comments, retry and junk lines, each line with its own line ending."""
    lines: list[str] = []
    for data, name, event_id in draw(events_strategy):
        if name is not None:
            lines.append(f"event: {name}")
        if event_id is not None:
            lines.append(f"id:{event_id}")
        if draw(st.booleans()):
            lines.append(":" + draw(line_text))
        if draw(st.booleans()):
            lines.append("retry: " + draw(st.sampled_from(["10", "x", ""])))
        lines.extend(f"data: {line}" for line in data.split("\n"))
        lines.append(draw(st.sampled_from(["", "", "data", "junk: x"])))
    endings = draw(st.lists(st.sampled_from(LINE_ENDINGS), min_size=len(lines),
                            max_size=len(lines)))
    text = "".join(line + eol for line, eol in zip(lines, endings, strict=True))
    if draw(st.booleans()):
        text = text[: draw(st.integers(0, len(text)))]
    return (BOM if draw(st.booleans()) else b"") + text.encode()


@settings(max_examples=150, deadline=None)
@given(stream=mixed_streams(), data=st.data())
def test_any_split_gives_the_same_events_as_whole(stream: bytes, data: st.DataObject) -> None:
    cuts = data.draw(st.lists(st.integers(0, len(stream)), max_size=12))
    assert feed_pieces(split_at(stream, cuts)) == feed_pieces([stream])


SOUP = [b"data: ", b"data:", b"data", b"\n", b"\r", b"\r\n", b":", b"id: ", b"event: ", b"x",
        b" ", "é".encode(), "中".encode(), "🙂".encode(), BOM, b"\xff", b"\xe4\xbd", b"\0",
        b"retry: 12"]


def outcome(pieces: list[bytes], max_line_bytes: int) -> tuple[str, object]:
    """Events, or which error: a UTF-8 error keeps its offset, other caps compare as one.

    When a stream breaks two rules at once (say an over-long line that also holds invalid
    UTF-8), which one is reported first may depend on the split; that it fails may not.
    """
    try:
        return "events", feed_pieces(pieces, max_line_bytes=max_line_bytes, max_event_bytes=24)
    except ProtocolError as exc:
        utf8 = re.search(r"invalid UTF-8 .* byte offset \d+", str(exc))
        return "error", utf8.group() if utf8 else "cap"


def same_outcome(split: tuple[str, object], whole: tuple[str, object]) -> bool:
    if split[0] == whole[0] == "error" and "cap" in (split[1], whole[1]):
        return True
    return split == whole


@settings(max_examples=300, deadline=None)
@given(parts=st.lists(st.sampled_from(SOUP), max_size=40), data=st.data())
def test_any_split_of_arbitrary_bytes_agrees_with_whole(
    parts: list[bytes], data: st.DataObject
) -> None:
    stream = b"".join(parts)
    cuts = data.draw(st.lists(st.integers(0, len(stream)), max_size=12))
    max_line_bytes = data.draw(st.sampled_from([12, 1 << 20]))
    whole = outcome([stream], max_line_bytes)
    assert same_outcome(outcome(split_at(stream, cuts), max_line_bytes), whole)
    assert same_outcome(outcome(bytewise(stream), max_line_bytes), whole)


@settings(max_examples=150, deadline=None)
@given(events=events_strategy, eol=st.sampled_from(LINE_ENDINGS), data=st.data())
def test_serialize_then_decode_round_trips(
    events: list[tuple[str, str | None, str | None]], eol: str, data: st.DataObject
) -> None:
    stream = serialize(events, eol)
    cuts = data.draw(st.lists(st.integers(0, len(stream)), max_size=12))
    assert feed_pieces(split_at(stream, cuts)) == expected_events(events)


@st.composite
def chat_streams(draw: st.DrawFn) -> tuple[bytes, list[int]]:
    """What a chat stream sends: one-line ``data:`` events, now and then a field, a comment
    or a first data line before one, cut mostly at line boundaries (where whole events take
    the decoder's short way, unless a field is pending) and sometimes anywhere."""
    blocks: list[bytes] = []
    for _ in range(draw(st.integers(0, 8))):
        extra = draw(st.sampled_from([b"", b"", b"", b"id: 7\n", b"event: x\n", b"retry: 5\n",
                                      b": ping\n", b"data: 1\n"]))
        line = draw(st.text(st.characters(exclude_categories=["Cs"],
                                          exclude_characters="\r\n"), max_size=12))
        # A cut after the field line leaves the field pending at the next feed's start.
        blocks += [extra, b"data: " + line.encode() + b"\n\n"]
    stream = b"".join(blocks)
    bounds = list(itertools.accumulate(len(block) for block in blocks))
    cuts = draw(st.lists(st.sampled_from(bounds) if bounds else st.just(0), max_size=6))
    cuts += draw(st.lists(st.integers(0, len(stream)), max_size=2))
    return stream, cuts


@settings(max_examples=200, deadline=None)
@given(case=chat_streams(), max_event_bytes=st.sampled_from([16, 8 << 20]))
def test_whole_data_events_decode_as_the_full_algorithm_does(
    case: tuple[bytes, list[int]], max_event_bytes: int
) -> None:
    stream, cuts = case
    pieces = split_at(stream, cuts)
    try:
        slow = feed_pieces(bytewise(stream), max_event_bytes=max_event_bytes)
    except ProtocolError:
        with pytest.raises(ProtocolError):
            feed_pieces(pieces, max_event_bytes=max_event_bytes)
        return
    assert feed_pieces(pieces, max_event_bytes=max_event_bytes) == slow
    decoder = SSEDecoder(max_event_bytes=max_event_bytes)
    texts: list[str] = []
    for piece in pieces:
        texts += decoder.feed_data(piece)
    assert texts + datas(decoder.close()) == datas(slow)


def test_whole_data_events_keep_the_last_event_id() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(b"id: 7\ndata: a\n\n") == [SSEEvent(data="a", id="7")]
    assert decoder.feed(b'data: {"b": 1}\n\ndata: c\n\n') == [
        SSEEvent(data='{"b": 1}', id="7"), SSEEvent(data="c", id="7")]
    assert decoder.last_event_id == "7"


def test_whole_data_events_over_the_event_cap_still_raise() -> None:
    decoder = SSEDecoder(max_event_bytes=8)
    assert decoder.feed_data(b"data: 1\n\n") == ["1"]
    with pytest.raises(ProtocolError, match="over 8 bytes"):
        decoder.feed_data(b"data: 123456789\n\n")
    with pytest.raises(ProtocolError, match="after close"):
        decoder.feed_data(b"data: 1\n\n")


def test_an_invalid_byte_after_whole_data_events_is_named_at_its_stream_offset() -> None:
    decoder = SSEDecoder()
    decoder.feed(b": hello\n\n")
    decoder.feed_data(b"data: a\n\ndata: b\n\n")
    with pytest.raises(ProtocolError, match="byte offset 33"):
        decoder.feed_data(b"data: \xff\n\n")


def test_bytes_after_a_held_partial_line_continue_that_line() -> None:
    assert datas(decode(b"data: ab" + b"data: c\n\n")) == ["abdata: c"]
    decoder = SSEDecoder()
    assert decoder.feed_data(b"data: ab") == []
    assert decoder.feed_data(b"data: c\n\n") == ["abdata: c"]


def test_whole_data_events_at_the_start_decide_that_no_bom_follows() -> None:
    decoder = SSEDecoder()
    assert decoder.feed_data(b"data: a\n\n") == ["a"]
    # Past the start a BOM is text: it makes the line's field name "\ufeffdata", unknown.
    assert decoder.feed_data(BOM + b"data: b\n\n") == []
    assert feed_pieces([b"data: a\n\n", BOM + b"data: b\n\n"]) == feed_pieces(
        bytewise(b"data: a\n\n" + BOM + b"data: b\n\n"))


def test_whole_data_events_after_close_raise() -> None:
    decoder = SSEDecoder()
    decoder.feed_data(b"data: a\n\n")
    decoder.close()
    for feed in (decoder.feed, decoder.feed_data):
        with pytest.raises(ProtocolError, match="after close"):
            feed(b"data: b\n\n")


def test_feed_simple_gives_one_event_as_text_and_consumes_nothing_it_refuses() -> None:
    decoder = SSEDecoder()
    assert decoder.feed_simple(b'data: {"a":1}\n\n') == '{"a":1}'
    assert decoder.feed_simple(b"data: a\n\ndata: b\n\n") == ["a", "b"]
    # A CR line end, a second data line, a field: the full algorithm's, and still there.
    for refused, data in [(b"data: x\r\n\r\n", ["x"]), (b"data: 1\ndata: 2\n\n", ["1\n2"]),
                          (b"data: y\nid: 3\n\n", ["y"])]:
        assert decoder.feed_simple(refused) is None
        assert decoder.feed_data(refused) == data
    assert decoder.last_event_id == "3"
