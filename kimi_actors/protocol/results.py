"""The public result types: what a chat call returns and what a stream delivers.

They are plain frozen values with the openai SDK's attribute shapes (``choices[0].message``,
``tool_calls[0].function``) and ``to_dict()`` for the JSON the API would have sent. The
parser that builds them from chunks and bodies is protocol/chunks.py, kept apart as h11 keeps
its events apart from its parser.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any, TypeVar

from . import jsontext

__all__ = ["ChatResult", "Choice", "Delta", "Function", "Message", "ToolCall", "Usage",
           "combine_choice_usages", "delta_source", "parsed_chat_result", "parsed_choice",
           "parsed_delta", "slot_builder"]

_T = TypeVar("_T")

_TOKEN_FIELDS = ("prompt_tokens", "completion_tokens", "total_tokens")


def _token_count(value: Any) -> int | None:
    """A token count from JSON, or None when the value is not a non-negative whole number."""
    if type(value) is int:  # the common case first: bool is not int's type
        return value if value >= 0 else None
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value if value >= 0 else None
    if isinstance(value, float) and value.is_integer() and value >= 0:
        return int(value)
    return None


@dataclass(frozen=True, slots=True, kw_only=True)
class Usage:
    """Tokens billed for one answer (or, summed, for several attempts or segments).

    ``cached_tokens`` is Kimi's context-cache hit count (``usage.cached_tokens``, or OpenAI's
    ``usage.prompt_tokens_details.cached_tokens``); ``None`` when the server did not say.
    ``raw`` is the server's dict, for fields not modelled here; a sum has no single raw dict.
    """

    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0
    cached_tokens: int | None = None
    raw: Mapping[str, Any] = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        for name in _TOKEN_FIELDS:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"Usage.{name} must be an int >= 0, got {value!r}")
        cached = self.cached_tokens
        if cached is not None and (isinstance(cached, bool) or not isinstance(cached, int)
                                   or cached < 0):
            raise ValueError(f"Usage.cached_tokens must be an int >= 0 or None, got {cached!r}")

    @classmethod
    def from_dict(cls, data: Any) -> Usage | None:
        """The usage a server dict reports, or ``None`` when ``data`` is not a usage dict.

        Fields that are missing or not whole numbers count as absent; a missing
        ``total_tokens`` is the sum of the other two.
        """
        if type(data) is not dict and not isinstance(data, Mapping):
            return None
        # A whole number is the common case, taken without a call; _token_count judges the
        # rest.
        prompt = data.get("prompt_tokens")
        if type(prompt) is not int or prompt < 0:
            prompt = _token_count(prompt)
        completion = data.get("completion_tokens")
        if type(completion) is not int or completion < 0:
            completion = _token_count(completion)
        total = data.get("total_tokens")
        if type(total) is not int or total < 0:
            total = _token_count(total)
        if prompt is None and completion is None and total is None:
            return None
        prompt = prompt or 0
        completion = completion or 0
        cached = data.get("cached_tokens")
        if cached is not None and (type(cached) is not int or cached < 0):
            cached = _token_count(cached)
        if cached is None:
            details = data.get("prompt_tokens_details")
            # None (Kimi sends no details) is told apart before the Mapping ABC's slow check.
            if details is not None and isinstance(details, Mapping):
                cached = _token_count(details.get("cached_tokens"))
        if cls is not Usage:
            return cls(prompt_tokens=prompt, completion_tokens=completion,
                       total_tokens=prompt + completion if total is None else total,
                       cached_tokens=cached, raw=data)
        return _build_usage(prompt, completion,
                            prompt + completion if total is None else total, cached, data)

    def to_dict(self) -> dict[str, Any]:
        """The usage object as the API sends it (the server's own dict when there is one)."""
        if self.raw:
            return dict(self.raw)
        body: dict[str, Any] = {"prompt_tokens": self.prompt_tokens,
                                "completion_tokens": self.completion_tokens,
                                "total_tokens": self.total_tokens}
        if self.cached_tokens is not None:
            body["cached_tokens"] = self.cached_tokens
        return body

    def __add__(self, other: Usage) -> Usage:
        if not isinstance(other, Usage):
            return NotImplemented
        cached = None
        if self.cached_tokens is not None or other.cached_tokens is not None:
            cached = (self.cached_tokens or 0) + (other.cached_tokens or 0)
        return Usage(prompt_tokens=self.prompt_tokens + other.prompt_tokens,
                     completion_tokens=self.completion_tokens + other.completion_tokens,
                     total_tokens=self.total_tokens + other.total_tokens,
                     cached_tokens=cached)


def combine_choice_usages(usages: list[Usage]) -> Usage | None:
    """One request's usage from the usages its choices carried.

    Identical usages are the request's total repeated on each choice and count once. Different
    ones can only be per-choice counts of one shared prompt: the prompt counts once and the
    completions add up.
    """
    if not usages:
        return None
    first = usages[0]
    if all(usage == first for usage in usages):
        return first
    prompt = max(usage.prompt_tokens for usage in usages)
    completion = sum(usage.completion_tokens for usage in usages)
    cached_counts = [u.cached_tokens for u in usages if u.cached_tokens is not None]
    return Usage(prompt_tokens=prompt, completion_tokens=completion,
                 total_tokens=prompt + completion,
                 cached_tokens=max(cached_counts) if cached_counts else None)


@dataclass(frozen=True, slots=True, kw_only=True)
class Function:
    """The function a tool call names, as the openai SDK shapes it."""

    name: str
    arguments: str


@dataclass(frozen=True, slots=True, kw_only=True)
class ToolCall:
    """One complete tool call; ``arguments`` is the JSON text exactly as the model wrote it.
    ``call.function.name`` and ``call.function.arguments`` read as in the openai SDK."""

    index: int
    id: str | None
    type: str
    name: str
    arguments: str

    def __post_init__(self) -> None:
        if self.index < 0:
            raise ValueError(f"ToolCall.index must be >= 0, got {self.index}")

    @property
    def function(self) -> Function:
        return Function(name=self.name, arguments=self.arguments)

    def to_dict(self) -> dict[str, Any]:
        return {"index": self.index, "id": self.id, "type": self.type,
                "function": {"name": self.name, "arguments": self.arguments}}


@dataclass(frozen=True, slots=True, kw_only=True)
class Message:
    """One choice's message, as the openai SDK shapes it: ``choices[0].message.content``."""

    role: str = "assistant"
    content: str = ""
    reasoning_content: str = ""
    tool_calls: tuple[ToolCall, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """The message as the API sends it (reasoning and tool calls only when present)."""
        message: dict[str, Any] = {"role": self.role, "content": self.content}
        if self.reasoning_content:
            message["reasoning_content"] = self.reasoning_content
        if self.tool_calls:
            message["tool_calls"] = [call.to_dict() for call in self.tool_calls]
        return message


@dataclass(frozen=True, slots=True, kw_only=True)
class Choice:
    """One assembled choice (``n > 1`` gives several)."""

    index: int
    role: str = "assistant"
    content: str = ""
    reasoning_content: str = ""
    tool_calls: tuple[ToolCall, ...] = ()
    finish_reason: str | None = None

    def __post_init__(self) -> None:
        if self.index < 0:
            raise ValueError(f"Choice.index must be >= 0, got {self.index}")

    @property
    def message(self) -> Message:
        """This choice's message: ``choice.message.content``, as in the openai SDK."""
        return Message(role=self.role, content=self.content,
                       reasoning_content=self.reasoning_content, tool_calls=self.tool_calls)

    def to_dict(self) -> dict[str, Any]:
        return {"index": self.index, "message": self.message.to_dict(),
                "finish_reason": self.finish_reason}


@dataclass(frozen=True, slots=True, kw_only=True)
class ChatResult:
    """A complete answer; the properties read the first choice, which is all most callers use.

    ``raw`` is the parsed body of a non-stream answer, or the last chunk of a stream.
    """

    id: str | None = None
    model: str | None = None
    created: int | None = None
    choices: tuple[Choice, ...] = ()
    usage: Usage | None = None
    request_id: str | None = None
    raw: Any = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        indices = [choice.index for choice in self.choices]
        if indices != sorted(set(indices)):
            raise ValueError("ChatResult.choices must be sorted by index without duplicates, "
                             f"got indices {indices}")
        if isinstance(_result_raw_get(self), str):
            raise TypeError("ChatResult.raw must be a parsed body, not a str")

    @property
    def content(self) -> str:
        return self.choices[0].content if self.choices else ""

    @property
    def reasoning_content(self) -> str:
        return self.choices[0].reasoning_content if self.choices else ""

    @property
    def tool_calls(self) -> tuple[ToolCall, ...]:
        return self.choices[0].tool_calls if self.choices else ()

    @property
    def finish_reason(self) -> str | None:
        return self.choices[0].finish_reason if self.choices else None

    def to_dict(self) -> dict[str, Any]:
        """The ``chat.completion`` body the API would have sent: the server's own body for a
        non-stream answer, else one built from the assembled stream."""
        raw = self.raw
        if isinstance(raw, Mapping) and raw.get("object") == "chat.completion" \
                and isinstance(raw.get("choices"), list):
            return dict(raw)
        body: dict[str, Any] = {"id": self.id, "object": "chat.completion",
                                "created": self.created, "model": self.model,
                                "choices": [choice.to_dict() for choice in self.choices]}
        if self.usage is not None:
            body["usage"] = self.usage.to_dict()
        return body

    def model_dump(self) -> dict[str, Any]:
        """:meth:`to_dict`, under the name the openai SDK's (pydantic) results use."""
        return self.to_dict()


@dataclass(frozen=True, slots=True, kw_only=True)
class Delta:
    """What one chunk added to one choice, as published to a stream's consumer.

    ``role`` is set only the first time a choice names it (a continuation does not repeat it).
    ``tool_calls`` holds the raw fragments of this chunk; the assembled calls are in the result.
    ``restart`` is set by the stream actor when it had to start over: the consumer discards
    everything received so far. ``raw`` is the chunk the delta came from, parsed when first
    read.
    """

    index: int = 0
    role: str | None = None
    content: str = ""
    reasoning_content: str = ""
    tool_calls: tuple[Mapping[str, Any], ...] = ()
    finish_reason: str | None = None
    usage: Usage | None = None
    restart: bool = False
    raw: Mapping[str, Any] | None = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.index < 0:
            raise ValueError(f"Delta.index must be >= 0, got {self.index}")
        if isinstance(_raw_slot_get(self), str):
            raise TypeError("Delta.raw must be a mapping or None, got a str")


# A stream's deltas, and its result, keep their chunk's JSON text and parse it into ``raw``
# when it is first read: the parsed chunk is four containers per delta which, alive until
# the consumer takes the delta, drove the cyclic collector (two thirds of the p99 delay at
# 1,000 streams); most results' raw is never read. Only the assembler stores text (through
# ``parsed_delta`` and ``parsed_chat_result``; the constructors refuse a str), and only text
# it has parsed as a JSON object, so the parse here cannot fail.
def _lazy_raw(cls: type[Any]) -> Callable[[Any], Any]:
    """Make ``cls.raw`` parse stored JSON text when first read; returns its slot's getter."""
    slot = cls.__dict__["raw"]
    slot_get: Callable[[Any], Any] = slot.__get__
    slot_set: Callable[[Any, Any], None] = slot.__set__

    def raw(instance: Any) -> Any:
        value = slot_get(instance)
        if type(value) is str:
            value = jsontext.loads(value)
            slot_set(instance, value)
        return value

    cls.raw = property(raw, slot_set)
    return slot_get


_raw_slot_get = _lazy_raw(Delta)
_result_raw_get = _lazy_raw(ChatResult)


def delta_source(delta: Delta) -> object:
    """What ``delta.raw`` is read from, unparsed: the same object for the deltas of one
    chunk."""
    return _raw_slot_get(delta)


_new_object = object.__new__


# What a parser has already checked is built through the slots: the frozen constructor and
# its validation cost 2-3 µs per object, on every answer.
def slot_builder(cls: type[_T], **constants: Any) -> Callable[..., _T]:
    """A function that takes every field of the frozen slots dataclass ``cls`` but those in
    ``constants`` (set to the value given), positionally in declaration order, and builds the
    same frozen object its constructor makes, without the constructor's checks: for values a
    parser has already checked.

    The object is made as an instance of a twin class with the same slots and no frozen
    ``__setattr__``, filled by plain attribute stores, and then given ``cls`` as its class
    (Python allows it between classes of one slot layout). Generated once, as dataclasses
    generates ``__init__``: 0.2 µs for a Delta, against 0.5 through the slot setters and 1.3
    through the constructor."""
    names = tuple(item.name for item in fields(cls))  # type: ignore[arg-type]
    unknown = set(constants) - set(names)
    if unknown:
        raise TypeError(f"{cls.__name__} has no field {', '.join(sorted(unknown))}")
    if clash := {"_instance", "_new", "_twin", "_cls"} & set(names):
        raise TypeError(f"{cls.__name__} has a field named {clash.pop()}, a builder's own name")
    if cls.__bases__ != (object,) or set(getattr(cls, "__slots__", ())) != set(names):
        raise TypeError(f"{cls.__name__} is not a slots dataclass of its own fields")
    twin = type(f"_{cls.__name__}Slots", (), {"__slots__": names})
    namespace: dict[str, Any] = {"_new": _new_object, "_twin": twin, "_cls": cls}
    parameters = [name for name in names if name not in constants]
    lines = [f"def build({', '.join(parameters)}):", "    _instance = _new(_twin)"]
    for name in names:
        if name in constants:
            namespace[f"_value_{name}"] = constants[name]
            lines.append(f"    _instance.{name} = _value_{name}")
        else:
            lines.append(f"    _instance.{name} = {name}")
    lines += ["    _instance.__class__ = _cls", "    return _instance"]
    exec("\n".join(lines), namespace)
    build: Callable[..., _T] = namespace["build"]
    build.__qualname__ = build.__name__ = f"build_{cls.__name__}"
    return build


#: A :class:`Delta` of fields the assembler has already checked (``restart`` False), built
#: once per chunk of every stream: (index, role, content, reasoning_content, tool_calls,
#: finish_reason, usage, raw); ``raw`` may be the chunk's JSON text, already parsed once as
#: an object, which ``Delta.raw`` parses again when it is read.
parsed_delta: Callable[[int, str | None, str, str, tuple[Mapping[str, Any], ...], str | None,
                        Usage | None, Mapping[str, Any] | str | None], Delta] = \
    slot_builder(Delta, restart=False)
_build_usage = slot_builder(Usage)
#: A :class:`Choice` of fields a parser has checked (``index`` an int >= 0): (index, role,
#: content, reasoning_content, tool_calls, finish_reason).
parsed_choice: Callable[[int, str, str, str, tuple[ToolCall, ...], str | None], Choice] = \
    slot_builder(Choice)
#: A :class:`ChatResult` whose choices a parser has sorted by distinct index: (id, model,
#: created, choices, usage, request_id, raw).
parsed_chat_result: Callable[[str | None, str | None, int | None, tuple[Choice, ...],
                              Usage | None, str | None, Any], ChatResult] = \
    slot_builder(ChatResult)
