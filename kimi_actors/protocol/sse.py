"""Incremental Server-Sent Events decoder: bytes in, :class:`SSEEvent` out, no I/O.

It follows the WHATWG "event stream interpretation" algorithm: lines end with LF, CR or CRLF;
a UTF-8 BOM at the very start is dropped; lines starting with ``:`` are comments; ``field:
value`` loses exactly one leading space of the value; ``data`` lines accumulate and a blank line
dispatches them joined with ``"\\n"``; ``event``, ``id`` (unless it holds NUL) and ``retry``
(ASCII digits only) set the other fields; unknown fields are ignored. It departs from the
browser algorithm in three deliberate ways, all because a truncated or corrupt answer must be
told apart from a complete one:

* bytes that are not UTF-8 raise :class:`~kimi_actors.errors.ProtocolError` (naming the byte
  offset) instead of being replaced with U+FFFD, which would silently corrupt the text;
* lines over ``max_line_bytes`` and events over ``max_event_bytes`` raise, so a misbehaving
  server cannot grow memory without bound;
* :meth:`SSEDecoder.close` dispatches a final event that lacks its blank line, provided its
  last line was complete (see there), since Kimi may end with ``data: [DONE]\\n`` alone.

Speed: the decoder touches every byte of thousands of concurrent streams, so it never loops
over bytes in Python. Each :meth:`SSEDecoder.feed` looks for line ends only in the new bytes
(the held partial line is known to contain none), decodes all complete lines with one
``bytes.decode`` call (a multi-byte character split across feeds is therefore never cut) and
splits the text once; the per-line loop checks the ``data: `` prefix first. Bytes that
hold only whole one-line ``data:`` events, fed at an event boundary (what a chat stream
sends), are split into events at once, with no per-line loop.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import ProtocolError

__all__ = ["DONE", "SSEDecoder", "SSEEvent"]

#: The payload Kimi (like OpenAI) sends as the last event of a complete stream.
DONE = "[DONE]"

_BOM = b"\xef\xbb\xbf"
_DATA_PREFIX = "data: "
#: A byte, not b"\r": ``in`` finds a byte at a tenth of the cost of a one-byte bytes.
_CR = 0x0D


@dataclass(frozen=True, slots=True, kw_only=True)
class SSEEvent:
    """One dispatched event.

    ``id`` is the last event id the stream set, which per the SSE spec carries over to later
    events until a new ``id:`` line changes it; ``retry`` is set only on the event whose own
    lines carried a valid ``retry:`` field.
    """

    data: str
    event: str = "message"
    id: str | None = None
    retry: int | None = None

    def __post_init__(self) -> None:
        if self.retry is not None and self.retry < 0:
            raise ValueError(f"SSEEvent.retry must be >= 0 milliseconds, got {self.retry}")
        if self.id is not None and "\0" in self.id:
            raise ValueError("SSEEvent.id must not contain NUL (the SSE spec ignores such ids)")

    @property
    def is_done(self) -> bool:
        """True for the ``data: [DONE]`` sentinel that marks a complete stream."""
        return self.data.strip() == DONE


class SSEDecoder:
    """Turns any split of an SSE byte stream into the events it carries.

    ``feed`` returns the events completed by the bytes given; ``close`` marks the end of the
    input. Limits are in bytes: a line (complete or not) longer than ``max_line_bytes``, or an
    event whose joined data is longer than ``max_event_bytes``, raises ``ProtocolError``; the
    held partial line therefore never exceeds ``max_line_bytes``.
    """

    __slots__ = (
        "_at_start",
        "_buf",
        "_clean",
        "_closed",
        "_data",
        "_data_bytes",
        "_event_type",
        "_fast_limit",
        "_last_id",
        "_max_event_bytes",
        "_max_line_bytes",
        "_offset",
        "_reconnection_time",
        "_retry",
        "_skip_lf",
    )

    def __init__(self, *, max_line_bytes: int = 1 << 20, max_event_bytes: int = 8 << 20) -> None:
        if max_line_bytes < 1:
            raise ValueError(f"max_line_bytes must be >= 1, got {max_line_bytes}")
        if max_event_bytes < 1:
            raise ValueError(f"max_event_bytes must be >= 1, got {max_event_bytes}")
        self._max_line_bytes = max_line_bytes
        self._max_event_bytes = max_event_bytes
        #: Bytes fed at once that no cap can refuse (see feed_simple).
        self._fast_limit = min(max_line_bytes, max_event_bytes)
        #: At an event boundary and open: nothing held, no field of an event pending. (At the
        #: start the BOM is undecided, but bytes that begin ``data: `` decide it.)
        self._clean = True
        #: Bytes after the last line end seen: a partial line, or a partial BOM at the start.
        self._buf = bytearray()
        #: Stream offset of ``_buf[0]``, for error messages.
        self._offset = 0
        self._at_start = True
        #: The previous feed ended with CR, so an LF opening the next feed ends no new line.
        self._skip_lf = False
        self._closed = False
        self._data: list[str] = []
        #: Bytes of the joined data so far, plus one (a join newline counted per line).
        self._data_bytes = 0
        self._event_type = ""
        self._last_id: str | None = None
        self._retry: int | None = None
        self._reconnection_time: int | None = None

    @property
    def buffered(self) -> int:
        """Bytes held while waiting for the end of a line."""
        return len(self._buf)

    @property
    def last_event_id(self) -> str | None:
        """The last event id the stream set (what a reconnect sends as ``Last-Event-ID``)."""
        return self._last_id

    @property
    def reconnection_time(self) -> int | None:
        """The last valid ``retry:`` value in milliseconds, even one in a block without data."""
        return self._reconnection_time

    @property
    def closed(self) -> bool:
        """True after ``close()`` or a ``ProtocolError``: ``feed`` would raise."""
        return self._closed

    def feed(self, data: bytes | bytearray) -> list[SSEEvent]:
        """Consume the next bytes of the stream and return the events they complete.

        A ``ProtocolError`` (bad UTF-8, a cap exceeded) leaves the decoder closed: the stream
        cannot be trusted after it, so later calls to ``feed`` raise too.
        """
        texts = self.feed_simple(data)
        if texts is None:
            return self._full(data)
        last_id = self._last_id
        if isinstance(texts, str):
            return [_new_event(texts, "message", last_id, None)]
        return [_new_event(text, "message", last_id, None) for text in texts]

    def feed_data(self, data: bytes | bytearray) -> list[str]:
        """The data of the events ``data`` completes: :meth:`feed` for a reader that needs
        only their data (a stream of chat chunks does), without an event object each."""
        texts = self.feed_simple(data)
        if texts is None:
            return [event.data for event in self._full(data)]
        return [texts] if isinstance(texts, str) else texts

    def _full(self, data: bytes | bytearray) -> list[SSEEvent]:
        """The full algorithm (a closed decoder is never clean, so it gets here and raises)."""
        if self._closed:
            raise ProtocolError("SSE decoder fed after close() or after a protocol error")
        try:
            events = self._feed(data)
        except ProtocolError:
            self._closed = True
            self._clean = False
            raise
        self._clean = self._at_boundary()
        return events

    def _at_boundary(self) -> bool:
        return not (self._buf or self._data or self._at_start or self._skip_lf
                    or self._event_type or self._retry is not None)

    def feed_simple(self, data: bytes | bytearray) -> str | list[str] | None:
        """The data of the events ``data`` completes, at a third of the full algorithm's cost,
        when it is the common case: whole events of one ``data: `` line each, LF-ended, fed
        at an event boundary (nothing held, no field pending, no cap in reach), the first
        bytes of the stream included (they hold no BOM). One event's data comes as a str (a
        stream sent token by token brings one per read: no list), several as a list.
        ``None``, having consumed nothing, for anything else: :meth:`feed_data` decodes it
        (and names the offset of a bad byte)."""
        if (not self._clean or len(data) > self._fast_limit or not data.startswith(b"data: ")
                or not data.endswith(b"\n\n") or _CR in data):
            return None
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            return None
        if "\n" not in (one := text[6:-2]):
            # One event: its data line and the blank line.
            self._offset += len(data)
            self._at_start = False
            return one
        texts = text.split("\n\n")
        texts.pop()
        for position, event in enumerate(texts):
            # A line end inside is a second line; an empty part, an extra blank line.
            if not event.startswith(_DATA_PREFIX) or "\n" in event:
                return None
            texts[position] = event[6:]
        self._offset += len(data)
        self._at_start = False
        return texts

    def _feed(self, data: bytes | bytearray) -> list[SSEEvent]:
        if not data:
            return []
        if self._at_start:
            data = self._strip_bom(data)
            if not data:
                return []
        if self._skip_lf:
            self._skip_lf = False
            if data[0] == 0x0A:
                self._offset += 1
                data = data[1:]
                if not data:
                    return []

        buf = self._buf
        nl = data.rfind(b"\n")
        cr = data.rfind(b"\r")
        end = nl if nl > cr else cr
        if end < 0:
            if len(buf) + len(data) > self._max_line_bytes:
                raise self._line_too_long(len(buf) + len(data), self._offset)
            buf += data
            return []
        tail = len(data) - end - 1
        if tail > self._max_line_bytes:
            raise self._line_too_long(tail, self._offset + len(buf) + end + 1)
        if buf:
            block: bytes | bytearray = buf + data[: end + 1]
        else:
            block = data if tail == 0 else data[: end + 1]
        if len(block) > self._max_line_bytes:
            self._check_line_lengths(block)
        try:
            text = block.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ProtocolError(
                f"invalid UTF-8 in SSE stream at byte offset {self._offset + exc.start}"
            ) from exc
        self._offset += len(block)
        self._buf = bytearray(data[end + 1 :]) if tail else bytearray()
        self._skip_lf = tail == 0 and cr == end
        if cr >= 0:
            text = text.replace("\r\n", "\n").replace("\r", "\n")
        lines = text.split("\n")
        lines.pop()
        return self._process(lines, text.isascii())

    def close(self) -> list[SSEEvent]:
        """Mark the end of input and return the final event, if it may be trusted.

        The SSE spec discards an event that has no terminating blank line. We dispatch it
        anyway when every one of its lines ended with a newline, because Kimi sometimes ends a
        complete stream with ``data: [DONE]\\n`` and no blank line, and treating that as
        truncated would throw away a good answer. When bytes of an unfinished line remain, the
        connection was cut mid-line: that line and the whole event it belongs to are dropped,
        so a cut-off ``data: [DO`` never looks like a finished stream. Calling ``close`` again
        returns nothing; ``feed`` after ``close`` raises ``ProtocolError``.
        """
        if self._closed:
            return []
        self._closed = True
        self._clean = False
        events: list[SSEEvent] = []
        data = self._data
        if data and not self._buf:
            events.append(_new_event(
                "\n".join(data), self._event_type or "message", self._last_id, self._retry
            ))
        self._buf = bytearray()
        self._data = []
        return events

    def _strip_bom(self, data: bytes | bytearray) -> bytes:
        """Hold back the first bytes until it is known whether they are a BOM, then drop it."""
        head = bytes(self._buf) + data
        if len(head) < len(_BOM) and _BOM.startswith(head):
            self._buf = bytearray(head)
            return b""
        self._at_start = False
        self._buf = bytearray()
        if head.startswith(_BOM):
            self._offset = len(_BOM)
            return head[len(_BOM) :]
        return head

    def _process(self, lines: list[str], ascii_only: bool) -> list[SSEEvent]:
        """Apply complete lines; the per-event state lives in locals while the loop runs."""
        events: list[SSEEvent] = []
        data = self._data
        data_bytes = self._data_bytes
        event_type = self._event_type
        retry = self._retry
        max_event = self._max_event_bytes + 1
        for line in lines:
            if line.startswith(_DATA_PREFIX):
                value = line[6:]
            elif not line:
                if data:
                    events.append(_new_event(
                        data[0] if len(data) == 1 else "\n".join(data),
                        event_type or "message",
                        self._last_id,
                        retry,
                    ))
                    data = []
                    data_bytes = 0
                event_type = ""
                retry = None
                continue
            else:
                colon = line.find(":")
                if colon == 0:
                    continue
                if colon < 0:
                    field, value = line, ""
                else:
                    field = line[:colon]
                    value = line[colon + 1 :]
                    if value.startswith(" "):
                        value = value[1:]
                if field != "data":
                    if field == "event":
                        event_type = value
                    elif field == "id":
                        if "\0" not in value:
                            self._last_id = value
                    elif field == "retry" and value.isascii() and value.isdigit():
                        retry = self._reconnection_time = int(value)
                    continue
            if ascii_only or value.isascii():
                data_bytes += len(value) + 1
            else:
                data_bytes += len(value.encode("utf-8")) + 1
            if data_bytes > max_event:
                raise ProtocolError(
                    f"SSE event data over {self._max_event_bytes} bytes "
                    f"(by stream offset {self._offset})"
                )
            data.append(value)
        self._data = data
        self._data_bytes = data_bytes
        self._event_type = event_type
        self._retry = retry
        return events

    def _check_line_lengths(self, block: bytes | bytearray) -> None:
        """Exact byte lengths, needed only when a block is longer than a line may be."""
        limit = self._max_line_bytes
        position = self._offset
        for segment in block.split(b"\n"):
            for line in segment.split(b"\r"):
                if len(line) > limit:
                    raise self._line_too_long(len(line), position)
                position += len(line) + 1

    def _line_too_long(self, size: int, line_start: int) -> ProtocolError:
        return ProtocolError(
            f"SSE line of at least {size} bytes is over the {self._max_line_bytes}-byte limit "
            f"(line starts at stream offset {line_start})"
        )


_alloc = object.__new__
_set_data = SSEEvent.__dict__["data"].__set__
_set_event = SSEEvent.__dict__["event"].__set__
_set_id = SSEEvent.__dict__["id"].__set__
_set_retry = SSEEvent.__dict__["retry"].__set__


def _new_event(data: str, event: str, event_id: str | None, retry: int | None) -> SSEEvent:
    """Build an event without the dataclass ``__init__``: under half its cost per event.

    The decoder's values are valid by construction, so ``__post_init__`` has nothing to check;
    the slot descriptors set the fields the same way the frozen ``__init__`` does.
    """
    obj: SSEEvent = _alloc(SSEEvent)
    _set_data(obj, data)
    _set_event(obj, event)
    _set_id(obj, event_id)
    _set_retry(obj, retry)
    return obj
