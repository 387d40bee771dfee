"""Assemble streamed chat chunks (and parse non-stream bodies) into one :class:`ChatResult`.

A stream is a sequence of OpenAI-style ``chat.completion.chunk`` objects. Kimi adds its own
habits, all handled here: ``role`` only in a choice's first chunk; ``reasoning_content`` before
``content`` on thinking models; tool calls as fragments joined per (choice, tool index); choices
of ``n > 1`` interleaved and routed by ``choices[].index``; ``usage`` either inside
``choices[i].usage`` or at top level in an extra chunk with ``choices: []``. A stream is
complete only after ``data: [DONE]``: a ``finish_reason`` alone proves nothing, since truncated
streams end with one too.

Resuming through Partial Mode continues the same answer in a new stream:
:meth:`ChunkAssembler.begin_continuation` keeps what was received, and the continuation's
deltas append to it. The usage of each segment is billed separately, so the segments' usages
are summed.

Speed matters: :meth:`ChunkAssembler.feed` runs for every chunk of thousands of concurrent
streams, so it parses each event once, appends text pieces to lists (joined only on demand)
and never copies a chunk.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import orjson

from ..errors import IncompleteStreamError, ProtocolError
from . import jsontext
from .classify import error_from_payload
from .results import (
    ChatResult,
    Choice,
    Delta,
    Function,
    Message,
    ToolCall,
    Usage,
    combine_choice_usages,
    parsed_chat_result,
    parsed_choice,
    parsed_delta,
)
from .sse import DONE

if TYPE_CHECKING:
    from .sse import SSEEvent

__all__ = [
    "ChatResult",
    "Choice",
    "ChunkAssembler",
    "Delta",
    "Function",
    "Message",
    "ToolCall",
    "Usage",
    "parse_completion",
]

class _ToolState:
    __slots__ = ("arguments", "id", "name", "type")

    def __init__(self) -> None:
        self.id: str | None = None
        self.type = "function"
        self.name = ""
        self.arguments: list[str] = []

    def build(self, index: int) -> ToolCall:
        return ToolCall(index=index, id=self.id, type=self.type, name=self.name,
                        arguments="".join(self.arguments))


class _ChoiceState:
    __slots__ = ("content", "finish_reason", "last_tool", "reasoning", "role", "tools", "usage")

    def __init__(self) -> None:
        self.role: str | None = None
        self.content: list[str] = []
        self.reasoning: list[str] = []
        self.tools: dict[int, _ToolState] = {}
        self.last_tool = 0
        self.finish_reason: str | None = None
        #: The usage this choice carried in the current segment.
        self.usage: Usage | None = None

    def build(self, index: int) -> Choice:
        """The assembled choice (``index`` checked when its first chunk was fed)."""
        tools = self.tools
        return parsed_choice(index, self.role or "assistant", _joined(self.content),
                             _joined(self.reasoning),
                             tuple(tools[i].build(i) for i in sorted(tools)) if tools else (),
                             self.finish_reason)


_orjson_loads = orjson.loads


def _refused_chunk(data: str) -> Any:
    """What orjson refused in a chunk: jsontext reads what the standard library can (a
    number beyond a double), else says why it is not JSON."""
    try:
        return jsontext.loads(data)
    except ValueError as exc:
        shown = data if len(data) <= 200 else data[:200] + "..."
        raise ProtocolError(f"stream event data is not valid JSON ({exc}): {shown!r}") \
            from None


def _joined(parts: list[str]) -> str:
    """Join text pieces, keeping the joined text so the next call does not redo the work."""
    if len(parts) > 1:
        parts[:] = ["".join(parts)]
    return parts[0] if parts else ""


def _delta_field_error(position: int, name: str, value: Any) -> ProtocolError:
    return ProtocolError(f"choices[{position}].delta.{name} must be a string, got "
                         f"{type(value).__name__}")


def _text_field(message: Mapping[str, Any], name: str, position: int) -> str:
    value = message.get(name)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise ProtocolError(f"choices[{position}].message.{name} must be a string, got "
                            f"{type(value).__name__}")
    return value


def _arguments_text(value: Any, where: str) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, Mapping | list):
        return json.dumps(value, ensure_ascii=False)
    raise ProtocolError(f"{where}.function.arguments must be a string, got {type(value).__name__}")


class ChunkAssembler:
    """Joins the chunks of one stream (and of its Partial-Mode continuations) into one answer.

    Feed it SSE events with :meth:`feed_event` (their data with :meth:`feed_data`, or parsed
    chunks with :meth:`feed`); each call returns the :class:`Delta` objects to publish.
    :meth:`result` returns the answer once ``[DONE]`` arrived; :meth:`snapshot` returns what
    was received so far, e.g. to build the prefix of a resume request. Malformed input raises
    :class:`ProtocolError`; an ``error`` object inside the stream raises the typed
    :class:`~kimi_actors.errors.APIError` it names.
    """

    __slots__ = ("_choices", "_chunks", "_created", "_done", "_id", "_identity_missing",
                 "_last_chunk", "_model", "_prior_usage", "_top_usage")

    def __init__(self) -> None:
        self._choices: dict[int, _ChoiceState] = {}
        self._done = False
        self._chunks = 0
        self._id: str | None = None
        self._model: str | None = None
        self._created: int | None = None
        self._identity_missing = True
        #: Top-level usage of the current segment.
        self._top_usage: Usage | None = None
        #: Sum of the usages of the segments before the current one.
        self._prior_usage: Usage | None = None
        #: The last chunk, or its JSON text.
        self._last_chunk: Mapping[str, Any] | str | None = None

    @property
    def done(self) -> bool:
        """True once ``data: [DONE]`` arrived (and no continuation began since)."""
        return self._done

    @property
    def chunks(self) -> int:
        """Chunks that carried content, reasoning or tool-call text: a cheap token count proxy."""
        return self._chunks

    def feed_event(self, event: SSEEvent) -> list[Delta]:
        """The deltas one SSE event carries; ``[DONE]`` marks the stream complete."""
        return self.feed_data(event.data)

    def feed_data(self, data: str) -> list[Delta]:
        """The deltas one SSE event's data carries (see :meth:`SSEDecoder.feed_data`)."""
        deltas: list[Delta] = []
        self.feed_data_into(data, deltas)
        return deltas

    def feed_data_into(self, data: str, deltas: list[Delta]) -> None:
        """:meth:`feed_data`, appending the deltas to ``deltas`` (a stream's reader collects
        a read's deltas in one list: no list per chunk); a chunk that fails appends none."""
        if data.strip() == DONE:
            self._done = True
            return
        try:
            chunk = _orjson_loads(data)  # jsontext.loads' first step, without its frame
        except (orjson.JSONDecodeError, RecursionError):
            chunk = _refused_chunk(data)
        if type(chunk) is not dict:
            raise ProtocolError(f"stream event data must be a JSON object, got "
                                f"{type(chunk).__name__}")
        # The deltas and the answer keep the text, not the parsed chunk (see Delta.raw).
        mark = len(deltas)
        try:
            self._feed(chunk, data, deltas)
        except BaseException:
            del deltas[mark:]  # a chunk that fails delivers none of its deltas
            raise

    def feed(self, chunk: Mapping[str, Any]) -> list[Delta]:
        """The deltas one parsed chunk carries, after adding them to the assembled answer."""
        if type(chunk) is not dict and not isinstance(chunk, Mapping):
            raise ProtocolError(f"a stream chunk must be a JSON object, got "
                                f"{type(chunk).__name__}")
        deltas: list[Delta] = []
        self._feed(chunk, chunk, deltas)
        return deltas

    def _feed(self, chunk: Mapping[str, Any], source: Mapping[str, Any] | str,
              deltas: list[Delta]) -> None:
        """Add the chunk to the answer and its deltas to ``deltas``."""
        if chunk.get("error"):
            raise error_from_payload(200, chunk)
        if self._done:
            raise ProtocolError("a chunk arrived after data: [DONE]")
        self._last_chunk = source
        if self._identity_missing:
            self._read_identity(chunk)
        raw_usage = chunk.get("usage")
        choices = chunk.get("choices")
        if raw_usage is None and type(choices) is list and len(choices) == 1:
            entry = choices[0]
            if type(entry) is dict and type(delta := entry.get("delta")) is dict \
                    and len(delta) == 1 and type(content := delta.get("content")) is str \
                    and content and entry.get("finish_reason") is None \
                    and entry.get("usage") is None \
                    and type(index := entry.get("index", 0)) is int \
                    and (state := self._choices.get(index)) is not None:
                # Nearly every chunk: one piece of content for a choice already seen (so its
                # index was checked), and nothing else: what the general path does with it.
                state.content.append(content)
                self._chunks += 1
                deltas.append(parsed_delta(index, None, content, "", (), None, None, source))
                return
        top_usage = Usage.from_dict(raw_usage) if raw_usage is not None else None
        if top_usage is not None:
            self._top_usage = top_usage
        start = len(deltas)
        carried_text = False
        if choices:
            if not isinstance(choices, list):
                raise ProtocolError(f"chunk 'choices' must be a list, got "
                                    f"{type(choices).__name__}")
            if len(choices) == 1:  # nearly every chunk
                carried_text = self._feed_choice(source, 0, choices[0], deltas)
            else:
                for position, entry in enumerate(choices):
                    if self._feed_choice(source, position, entry, deltas):
                        carried_text = True
        if carried_text:
            self._chunks += 1
        if top_usage is not None and all(delta.usage is None for delta in deltas[start:]):
            if len(deltas) > start:
                first = deltas[start]
                deltas[start] = parsed_delta(first.index, first.role, first.content,
                                             first.reasoning_content, first.tool_calls,
                                             first.finish_reason, top_usage, source)
            else:
                deltas.append(parsed_delta(0, None, "", "", (), None, top_usage, source))

    def _read_identity(self, chunk: Mapping[str, Any]) -> None:
        """Take id, model and created from the first chunk that has a valid one of each."""
        if self._id is None and isinstance(chunk_id := chunk.get("id"), str):
            self._id = chunk_id
        if self._model is None and isinstance(model := chunk.get("model"), str):
            self._model = model
        if self._created is None and type(created := chunk.get("created")) is int:
            self._created = created
        self._identity_missing = None in (self._id, self._model, self._created)

    def _feed_choice(self, source: Mapping[str, Any] | str, position: int, entry: Any,
                     deltas: list[Delta]) -> bool:
        """Add the choice's delta, if it carries anything, to ``deltas``; whether it carried
        text (content, reasoning or tool-call fragments)."""
        if type(entry) is not dict and not isinstance(entry, Mapping):
            raise ProtocolError(f"choices[{position}] must be an object, got "
                                f"{type(entry).__name__}")
        index = entry.get("index", position)
        if type(index) is not int or index < 0:
            raise ProtocolError(f"choices[{position}].index must be an int >= 0, got {index!r}")
        state = self._choices.get(index)
        if state is None:
            state = self._choices[index] = _ChoiceState()
        delta = entry.get("delta")
        role: str | None = None
        content = reasoning = ""
        fragments: tuple[Mapping[str, Any], ...] = ()
        if delta:
            if type(delta) is not dict and not isinstance(delta, Mapping):
                raise ProtocolError(f"choices[{position}].delta must be an object, got "
                                    f"{type(delta).__name__}")
            # Inline checks: this is the per-chunk hot path; messages are built only on error.
            if state.role is None and (role := delta.get("role")):
                if type(role) is not str:
                    raise _delta_field_error(position, "role", role)
                state.role = role
            else:
                role = None
            content = delta.get("content") or ""
            if content:
                if type(content) is not str:
                    raise _delta_field_error(position, "content", content)
                state.content.append(content)
            reasoning = delta.get("reasoning_content") or ""
            if reasoning:
                if type(reasoning) is not str:
                    raise _delta_field_error(position, "reasoning_content", reasoning)
                state.reasoning.append(reasoning)
            raw_tools = delta.get("tool_calls")
            if raw_tools:
                fragments = self._merge_tool_fragments(state, raw_tools,
                                                       f"choices[{position}].delta")
        finish_reason = entry.get("finish_reason")
        if finish_reason is not None:
            if not isinstance(finish_reason, str):
                raise ProtocolError(f"choices[{position}].finish_reason must be a string, got "
                                    f"{type(finish_reason).__name__}")
            state.finish_reason = finish_reason
        raw_usage = entry.get("usage")
        usage = Usage.from_dict(raw_usage) if raw_usage is not None else None
        if usage is not None:
            state.usage = usage
        has_text = bool(content or reasoning or fragments)
        if has_text or role is not None or finish_reason is not None or usage is not None:
            deltas.append(parsed_delta(index, role, content, reasoning, fragments,
                                       finish_reason, usage, source))
        return has_text

    @staticmethod
    def _merge_tool_fragments(state: _ChoiceState, raw_tools: Any,
                              where: str) -> tuple[Mapping[str, Any], ...]:
        if not isinstance(raw_tools, list):
            raise ProtocolError(f"{where}.tool_calls must be a list, got "
                                f"{type(raw_tools).__name__}")
        tools = state.tools
        for number, fragment in enumerate(raw_tools):
            fragment_where = f"{where}.tool_calls[{number}]"
            if type(fragment) is not dict and not isinstance(fragment, Mapping):
                raise ProtocolError(f"{fragment_where} must be an object, got "
                                    f"{type(fragment).__name__}")
            tool_id = fragment.get("id")
            tool_index = fragment.get("index")
            if tool_index is None:
                tool_index = _implicit_tool_index(state, tool_id)
            elif type(tool_index) is not int or tool_index < 0:
                raise ProtocolError(f"{fragment_where}.index must be an int >= 0, "
                                    f"got {tool_index!r}")
            tool = tools.get(tool_index)
            if tool is None:
                tool = tools[tool_index] = _ToolState()
            state.last_tool = tool_index
            if isinstance(tool_id, str) and tool_id:
                tool.id = tool_id
            tool_type = fragment.get("type")
            if isinstance(tool_type, str) and tool_type:
                tool.type = tool_type
            function = fragment.get("function")
            if function is None:
                continue
            if not isinstance(function, Mapping):
                raise ProtocolError(f"{fragment_where}.function must be an object, got "
                                    f"{type(function).__name__}")
            name = function.get("name")
            if isinstance(name, str) and name:
                tool.name = name
            arguments = _arguments_text(function.get("arguments"), fragment_where)
            if arguments:
                tool.arguments.append(arguments)
        return tuple(raw_tools)

    def content(self, index: int = 0) -> str:
        """The content of choice ``index`` received so far."""
        state = self._choices.get(index)
        return _joined(state.content) if state is not None else ""

    def choice_indices(self) -> tuple[int, ...]:
        return tuple(sorted(self._choices))

    def has_tool_calls(self, index: int = 0) -> bool:
        state = self._choices.get(index)
        return state is not None and bool(state.tools)

    def has_reasoning(self, index: int = 0) -> bool:
        state = self._choices.get(index)
        return state is not None and bool(state.reasoning)

    def begin_continuation(self) -> None:
        """The next chunks continue this answer from a Partial-Mode stream.

        Text, tool calls and roles are kept (the continuation's own ``role`` is not repeated to
        the consumer); ``done`` and the finish reasons are cleared, since only the continuation
        can say how the answer ends; this segment's usage is set aside to be summed with the
        next one's, because each segment is billed.
        """
        segment = self.segment_usage()
        if segment is not None:
            prior = self._prior_usage
            self._prior_usage = segment if prior is None else prior + segment
        self._top_usage = None
        for state in self._choices.values():
            state.usage = None
            state.finish_reason = None
        self._done = False

    def segment_usage(self) -> Usage | None:
        """The usage carried by the chunks of this segment: those since the last
        :meth:`begin_continuation`, or since the start."""
        if self._top_usage is not None:
            return self._top_usage
        choices = self._choices
        if len(choices) == 1:  # nearly every stream
            return next(iter(choices.values())).usage
        return combine_choice_usages(
            [usage for i in sorted(choices) if (usage := choices[i].usage) is not None])

    def _total_usage(self) -> Usage | None:
        segment = self.segment_usage()
        prior = self._prior_usage
        if prior is None:
            return segment
        return prior if segment is None else prior + segment

    def result(self, *, request_id: str | None = None) -> ChatResult:
        """The complete answer; :class:`IncompleteStreamError` when ``[DONE]`` never came."""
        if not self._done:
            content_chars = sum(len(self.content(i)) for i in self._choices)
            reasoning_chars = sum(len(_joined(s.reasoning)) for s in self._choices.values())
            finish = sorted({s.finish_reason for s in self._choices.values()
                             if s.finish_reason is not None})
            said = f" (finish_reason {', '.join(finish)} without it)" if finish else ""
            raise IncompleteStreamError(
                f"the stream ended before data: [DONE]{said}: received {self._chunks} chunks "
                f"with {content_chars} characters of content and {reasoning_chars} of reasoning",
                request_id=request_id)
        return self.snapshot(request_id=request_id)

    def snapshot(self, *, request_id: str | None = None) -> ChatResult:
        """What has been assembled so far, complete or not."""
        choices = self._choices
        built = tuple(choices[i].build(i) for i in sorted(choices))  # distinct and sorted
        return parsed_chat_result(self._id, self._model, self._created, built,
                                  self._total_usage(), request_id, self._last_chunk)


def _implicit_tool_index(state: _ChoiceState, tool_id: Any) -> int:
    """Where a fragment without ``index`` belongs: a new id opens a call, else the last one."""
    tools = state.tools
    if not tools:
        return 0
    if isinstance(tool_id, str) and tool_id and all(t.id != tool_id for t in tools.values()):
        return max(tools) + 1
    return state.last_tool


def _parse_tool_call(position: int, raw: Any, where: str) -> ToolCall:
    if not isinstance(raw, Mapping):
        raise ProtocolError(f"{where} must be an object, got {type(raw).__name__}")
    function = raw.get("function")
    if not isinstance(function, Mapping):
        raise ProtocolError(f"{where}.function must be an object, got "
                            f"{type(function).__name__}")
    name = function.get("name")
    if not isinstance(name, str) or not name:
        raise ProtocolError(f"{where}.function.name must be a non-empty string, got {name!r}")
    tool_id = raw.get("id")
    tool_type = raw.get("type")
    index = raw.get("index", position)
    return ToolCall(index=index if type(index) is int and index >= 0 else position,
                    id=tool_id if isinstance(tool_id, str) else None,
                    type=tool_type if isinstance(tool_type, str) and tool_type else "function",
                    name=name, arguments=_arguments_text(function.get("arguments"), where))


def _parse_choice(position: int, raw: Any) -> tuple[Choice, Usage | None]:
    if type(raw) is not dict and not isinstance(raw, Mapping):
        raise ProtocolError(f"choices[{position}] must be an object, got {type(raw).__name__}")
    index = raw.get("index", position)
    if type(index) is not int or index < 0:
        raise ProtocolError(f"choices[{position}].index must be an int >= 0, got {index!r}")
    message = raw.get("message")
    if type(message) is not dict and not isinstance(message, Mapping):
        raise ProtocolError(f"choices[{position}].message must be an object, got "
                            f"{type(message).__name__}")
    # A string is the common case, taken without a call; _text_field judges the rest.
    role = message.get("role")
    if type(role) is not str:
        role = _text_field(message, "role", position)
    content = message.get("content")
    if type(content) is not str:
        content = _text_field(message, "content", position)
    reasoning = message.get("reasoning_content")
    if type(reasoning) is not str:
        reasoning = _text_field(message, "reasoning_content", position)
    role = role or "assistant"
    raw_tools = message.get("tool_calls")
    tool_calls: tuple[ToolCall, ...] = ()
    if raw_tools is not None:
        if not isinstance(raw_tools, list):
            raise ProtocolError(f"choices[{position}].message.tool_calls must be a list, got "
                                f"{type(raw_tools).__name__}")
        tool_calls = tuple(
            _parse_tool_call(i, tool, f"choices[{position}].message.tool_calls[{i}]")
            for i, tool in enumerate(raw_tools))
    finish_reason = raw.get("finish_reason")
    if finish_reason is not None and not isinstance(finish_reason, str):
        raise ProtocolError(f"choices[{position}].finish_reason must be a string, got "
                            f"{type(finish_reason).__name__}")
    choice = parsed_choice(index, role, content, reasoning, tool_calls, finish_reason)
    usage = raw.get("usage")
    return choice, None if usage is None else Usage.from_dict(usage)


def parse_completion(body: Mapping[str, Any], *, request_id: str | None = None) -> ChatResult:
    """The :class:`ChatResult` of a non-stream answer.

    A malformed body raises :class:`ProtocolError` naming the field, never ``KeyError``; an
    ``error`` object raises the typed API error it names.
    """
    if type(body) is not dict and not isinstance(body, Mapping):
        raise ProtocolError(f"a chat completion must be a JSON object, got "
                            f"{type(body).__name__}")
    if body.get("error"):
        raise error_from_payload(200, body, request_id=request_id)
    raw_choices = body.get("choices")
    if not isinstance(raw_choices, list):
        raise ProtocolError(f"a chat completion needs a 'choices' list, got "
                            f"{type(raw_choices).__name__}")
    if not raw_choices:
        raise ProtocolError("a chat completion has an empty 'choices' list")
    if len(raw_choices) == 1:
        parsed = [_parse_choice(0, raw_choices[0])]
        choices = [parsed[0][0]]
    else:
        parsed = [_parse_choice(position, raw) for position, raw in enumerate(raw_choices)]
        choices = sorted((choice for choice, _ in parsed), key=lambda choice: choice.index)
        if len({choice.index for choice in choices}) != len(choices):
            raise ProtocolError("a chat completion repeats a choice index: "
                                f"{[choice.index for choice in choices]}")
    usage = Usage.from_dict(body.get("usage"))
    if usage is None:
        usage = combine_choice_usages([u for _, u in parsed if u is not None])
    body_id = body.get("id")
    model = body.get("model")
    created = body.get("created")
    return parsed_chat_result(body_id if isinstance(body_id, str) else None,
                              model if isinstance(model, str) else None,
                              created if type(created) is int else None,
                              tuple(choices), usage, request_id, body)
