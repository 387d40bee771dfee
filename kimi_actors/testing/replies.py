"""What the fake model says: deterministic replies, tool calls and token counts.

A reply is a pure function of the request (model, messages, the request's ``seed``, the choice
index and ``max_tokens``), so a test can compute the exact text FakeKimi will send with
:func:`expected_reply` and assert on it. The server's own ``seed`` only drives fault injection,
never the text.

Each piece of a reply is one completion token and one stream chunk. Pieces mix ASCII words,
Chinese characters, emoji and characters that need JSON escaping, so clients meet multi-byte
UTF-8 and escapes in every stream.

Prompt tokens are counted a little lower than the library's conservative estimate
(:func:`kimi_actors.protocol.tokens.estimate_prompt_tokens`) and never higher, term by term, so a
governor that reserves the estimate can never overrun FakeKimi's TPM.
"""

from __future__ import annotations

import functools
import hashlib
import json
import random
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .tokenizer import count_prompt_tokens

__all__ = [
    "DEFAULT_MODELS",
    "Reply",
    "ToolCall",
    "context_length",
    "count_prompt_tokens",
    "expected_reply",
    "expected_tool_call",
    "is_thinking_model",
    "reply_parts",
    "split_partial",
    "wants_tool_call",
]

DEFAULT_MODELS: tuple[str, ...] = (
    "kimi-k2.6",
    "kimi-k3",
    "kimi-k2-turbo-preview",
    "kimi-k2-0905-preview",
    "kimi-k2-thinking",
    "moonshot-v1-8k",
    "moonshot-v1-32k",
    "moonshot-v1-128k",
)

_CONTEXT_BY_SUFFIX = (("-8k", 8_192), ("-32k", 32_768), ("-128k", 131_072))
_LARGE_CONTEXT = 262_144

MIN_PIECES = 8
MAX_PIECES = 80
MIN_REASONING_PIECES = 4
MAX_REASONING_PIECES = 40

_WORDS = (
    " the", " actor", " stream", " token", " window", " limit", " retry", " moon", " shot",
    " answer", " quickly", " and", " of", " a", " request", " is", " Kimi", " 42", "!",
    ",", ".", " (", ")", " ok",
)
_CJK = (
    "你", "好", "月", "之", "暗", "面", "流", "式", "输", "出", "令", "牌", "限", "速",
    "你好", "世界", "，", "。",
)
_EMOJI = ("🌙", "🚀", "✨", "🙂", "👍", "🎉")
_ESCAPES = ("\n", "\"", "\\", "\t")
_REASONING_WORDS = (" Let", " me", " think", " about", " this", " first", ".", " 思", "考", " 🤔")


def context_length(model: str) -> int:
    """Tokens of context of ``model``: moonshot-v1-{8k,32k,128k} as named, Kimi K2 256K."""
    for suffix, tokens in _CONTEXT_BY_SUFFIX:
        if model.endswith(suffix):
            return tokens
    return _LARGE_CONTEXT


def is_thinking_model(model: str) -> bool:
    """Thinking models stream ``reasoning_content`` before the answer."""
    return "thinking" in model


@dataclass(frozen=True, slots=True, kw_only=True)
class Reply:
    """One choice's answer. ``pieces`` are the content chunks, one completion token each."""

    content: str
    reasoning_content: str
    finish_reason: str
    pieces: tuple[str, ...]
    reasoning_pieces: tuple[str, ...]
    completion_tokens: int

    def __post_init__(self) -> None:
        if self.finish_reason not in ("stop", "length"):
            raise ValueError(f"Reply.finish_reason must be 'stop' or 'length', "
                             f"got {self.finish_reason!r}")
        if "".join(self.pieces) != self.content:
            raise ValueError("Reply.pieces must join to Reply.content")
        if "".join(self.reasoning_pieces) != self.reasoning_content:
            raise ValueError("Reply.reasoning_pieces must join to Reply.reasoning_content")
        if self.completion_tokens != len(self.pieces) + len(self.reasoning_pieces):
            raise ValueError("Reply.completion_tokens must count every piece")


@dataclass(frozen=True, slots=True, kw_only=True)
class ToolCall:
    """A call of one tool: ``arguments`` is a JSON object text streamed in
    ``argument_pieces``; the name chunk plus each argument piece is one completion token."""

    id: str
    name: str
    arguments: str
    argument_pieces: tuple[str, ...]

    def __post_init__(self) -> None:
        if "".join(self.argument_pieces) != self.arguments:
            raise ValueError("ToolCall.argument_pieces must join to ToolCall.arguments")

    @property
    def completion_tokens(self) -> int:
        return 1 + len(self.argument_pieces)


def split_partial(
    messages: Sequence[Mapping[str, Any]],
) -> tuple[Sequence[Mapping[str, Any]], str | None]:
    """Split a trailing Partial Mode message off: (the conversation, the prefix or None)."""
    if messages:
        last = messages[-1]
        if (isinstance(last, Mapping) and last.get("role") == "assistant"
                and last.get("partial") is True):
            content = last.get("content")
            return messages[:-1], content if isinstance(content, str) else ""
    return messages, None


def _conversation_key(messages: Sequence[Mapping[str, Any]]) -> str:
    return json.dumps(list(messages), sort_keys=True, ensure_ascii=False,
                      separators=(",", ":"), default=str)


def _rng(*parts: object) -> random.Random:
    return random.Random(int.from_bytes(_digest(16, *parts), "big"))


def _digest(size: int, *parts: object) -> bytes:
    return hashlib.shake_128(repr(parts).encode("utf-8", "surrogatepass")).digest(size)


def _pool(weighted: tuple[tuple[tuple[str, ...], int], ...]) -> tuple[str, ...]:
    """256 pieces, each category repeated to fill its share, so one random byte picks one."""
    pool: list[str] = []
    for items, slots in weighted:
        pool.extend(items[index % len(items)] for index in range(slots))
    assert len(pool) == 256
    return tuple(pool)


_CONTENT_POOL = _pool(((_WORDS, 128), (_CJK, 77), (_EMOJI, 36), (_ESCAPES, 15)))
_REASONING_POOL = _pool(((_REASONING_WORDS, 256),))


def _pick(pool: tuple[str, ...], data: bytes) -> list[str]:
    return [pool[byte] for byte in data]


def _count(data: bytes, low: int, high: int) -> int:
    return low + int.from_bytes(data, "big") % (high - low + 1)


def _content_pieces(rng: random.Random, count: int) -> list[str]:
    return _pick(_CONTENT_POOL, rng.randbytes(count))


@functools.lru_cache(maxsize=8192)
def _full_pieces(model: str, conversation: str, seed: int | None,
                 choice: int) -> tuple[tuple[str, ...], tuple[str, ...]]:
    data = _digest(4 + MAX_REASONING_PIECES + MAX_PIECES, "reply", model, conversation, seed,
                   choice)
    reasoning: tuple[str, ...] = ()
    if is_thinking_model(model):
        count = _count(data[0:2], MIN_REASONING_PIECES, MAX_REASONING_PIECES)
        reasoning = tuple(_pick(_REASONING_POOL, data[4:4 + count]))
    start = 4 + MAX_REASONING_PIECES
    pieces = _pick(_CONTENT_POOL, data[start:start + _count(data[2:4], MIN_PIECES, MAX_PIECES)])
    pieces[0] = pieces[0].lstrip(" ") or "Hi"
    return reasoning, tuple(pieces)


_ANCHOR_TAIL = 32


@functools.lru_cache(maxsize=1024)
def _conversation_digest(conversation: str) -> bytes:
    return _digest(16, conversation)


@functools.lru_cache(maxsize=4096)
def _free_continuation(model: str, conversation: str, anchor_length: int, anchor_tail: str,
                       seed: int | None, choice: int) -> tuple[str, ...]:
    """Text generated after an anchor, from its length and its last characters (any function
    of the anchor keeps answers consistent; this one costs the same for any length)."""
    data = _digest(2 + MAX_PIECES, "continuation", model, _conversation_digest(conversation),
                   anchor_length, anchor_tail, seed, choice)
    return tuple(_pick(_CONTENT_POOL, data[2:2 + _count(data[0:2], MIN_PIECES, MAX_PIECES)]))


def _common_length(text: str, prefix: str, start: int = 0) -> int:
    """How many characters of ``text`` match ``prefix`` from position ``start`` on."""
    matched = 0
    for char, expected in zip(text, prefix[start:start + len(text)], strict=False):
        if char != expected:
            break
        matched += 1
    return matched


def _continue(model: str, conversation: str, pieces: tuple[str, ...], prefix: str,
              seed: int | None, choice: int) -> tuple[str, ...]:
    """The pieces that follow ``prefix``, consistently: continuing ``prefix`` plus any start of
    the answer gives the rest of that same answer, so resumes of resumes agree.

    The answer is a "virtual reply" V that starts with ``prefix``. It is the real reply while
    that starts with ``prefix``; where ``prefix`` departs from it, V becomes the prefix up to and
    including the first differing character (the anchor) followed by text generated from the
    anchor, and so on until V covers the whole prefix. A longer prefix that follows V meets the
    same anchors, hence the same V.
    """
    continued = _continuation_pieces(pieces, prefix)
    if continued is not None:
        return continued
    common = _common_length("".join(pieces), prefix)
    while True:
        anchor_length = common + 1
        tail = _free_continuation(model, conversation, anchor_length,
                                  prefix[max(0, anchor_length - _ANCHOR_TAIL):anchor_length],
                                  seed, choice)
        common = anchor_length + _common_length("".join(tail), prefix, anchor_length)
        if common >= len(prefix):
            continued = _continuation_pieces((prefix[:anchor_length], *tail), prefix)
            assert continued is not None, "the virtual reply starts with the prefix"
            return continued


def _continuation_pieces(pieces: tuple[str, ...], prefix: str) -> tuple[str, ...] | None:
    """The pieces after ``prefix`` when the reply starts with it; the first may be a tail."""
    offset = 0
    for index, piece in enumerate(pieces):
        end = offset + len(piece)
        if end > len(prefix):
            if not piece.startswith(prefix[offset:]):
                return None
            tail = piece[len(prefix) - offset:]
            return (tail, *pieces[index + 1:]) if tail else pieces[index + 1:]
        if prefix[offset:end] != piece:
            return None
        offset = end
    return () if offset == len(prefix) else None


def _check_reply_args(seed: int | None, max_tokens: int | None, choice: int) -> None:
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise ValueError(f"seed must be an int or None, got {seed!r}")
    if max_tokens is not None and (isinstance(max_tokens, bool) or not isinstance(max_tokens, int)
                                   or max_tokens < 0):
        raise ValueError(f"max_tokens must be an int >= 0 or None, got {max_tokens!r}")
    if isinstance(choice, bool) or not isinstance(choice, int) or choice < 0:
        raise ValueError(f"choice must be an int >= 0, got {choice!r}")


def expected_reply(
    model: str,
    messages: Sequence[Mapping[str, Any]],
    *,
    seed: int | None = None,
    max_tokens: int | None = None,
    choice: int = 0,
) -> Reply:
    """The reply FakeKimi gives to ``messages`` (choice ``choice`` of the request).

    With a trailing ``{"role": "assistant", "content": P, "partial": true}`` message the reply
    is the continuation of the full reply R to the conversation without it: the rest of R after
    P when R starts with P (its first piece may be the tail of one of R's pieces), otherwise a
    deterministic continuation of P, itself consistent under resumes (continuing P plus the
    first part of that continuation gives its rest). Reasoning is never repeated in a
    continuation.
    ``max_tokens`` cuts the pieces (reasoning first) and makes ``finish_reason`` "length".
    """
    _check_reply_args(seed, max_tokens, choice)
    reasoning, pieces, finish_reason = reply_parts(model, messages, seed=seed,
                                                   max_tokens=max_tokens, choice=choice)
    return Reply(
        content="".join(pieces),
        reasoning_content="".join(reasoning),
        finish_reason=finish_reason,
        pieces=pieces,
        reasoning_pieces=reasoning,
        completion_tokens=len(pieces) + len(reasoning),
    )


def reply_parts(
    model: str,
    messages: Sequence[Mapping[str, Any]],
    *,
    seed: int | None,
    max_tokens: int | None,
    choice: int,
) -> tuple[tuple[str, ...], tuple[str, ...], str]:
    """(reasoning pieces, content pieces, finish_reason) of :func:`expected_reply`, without
    checking the arguments or building a Reply: the server's hot path."""
    conversation_messages, prefix = split_partial(messages)
    conversation = _conversation_key(conversation_messages)
    reasoning, pieces = _full_pieces(model, conversation, seed, choice)
    if prefix is not None:
        reasoning = ()
        pieces = _continue(model, conversation, pieces, prefix, seed, choice)
    if max_tokens is not None and len(reasoning) + len(pieces) > max_tokens:
        return (reasoning[:max_tokens], pieces[:max(0, max_tokens - len(reasoning))], "length")
    return reasoning, pieces, "stop"


_TOOL_WORD = re.compile(r"\btools?\b", re.IGNORECASE)


def _text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(str(part.get("text", "")) for part in content
                        if isinstance(part, Mapping) and part.get("type") == "text")
    return ""


def _tools_by_name(tools: Sequence[Any]) -> dict[str, Any]:
    """Each well-formed tool's name and its parameters schema, in request order."""
    found: dict[str, Any] = {}
    for tool in tools:
        function = tool.get("function") if isinstance(tool, Mapping) else None
        if not isinstance(function, Mapping):
            continue
        name = function.get("name")
        if isinstance(name, str) and name and name not in found:
            found[name] = function.get("parameters") or {}
    return found


def wants_tool_call(messages: Sequence[Mapping[str, Any]], tools: Sequence[Any] | None,
                    tool_choice: Any = None) -> str | None:
    """The name of the tool the fake model calls, or None for a text answer.

    It calls one when the request has tools and either ``tool_choice`` forces one ("required"
    or a named function) or, with ``tool_choice`` "auto"/absent, the last user message contains
    the word "tool" (or "tools"). ``tool_choice`` "none" never calls.
    """
    names = list(_tools_by_name(tools or ()))
    if not names or tool_choice == "none":
        return None
    if isinstance(tool_choice, Mapping):
        function = tool_choice.get("function")
        forced = function.get("name") if isinstance(function, Mapping) else None
        return forced if forced in names else names[0]
    if tool_choice == "required":
        return names[0]
    for message in reversed(messages):
        if isinstance(message, Mapping) and message.get("role") == "user":
            return names[0] if _TOOL_WORD.search(_text_of(message.get("content"))) else None
    return None


def _argument_value(rng: random.Random, schema: Any) -> Any:
    if not isinstance(schema, Mapping):
        return None
    enum = schema.get("enum")
    if isinstance(enum, list) and enum:
        return rng.choice(enum)
    kind = schema.get("type")
    if kind == "integer":
        return rng.randint(0, 100)
    if kind == "number":
        return rng.randint(0, 10_000) / 100
    if kind == "boolean":
        return rng.random() < 0.5
    if kind == "array":
        return []
    if kind == "object":
        return {}
    return "".join(_content_pieces(rng, rng.randint(1, 4))).strip() or "月"


def expected_tool_call(
    model: str,
    messages: Sequence[Mapping[str, Any]],
    tools: Sequence[Any] | None,
    *,
    tool_choice: Any = None,
    seed: int | None = None,
    choice: int = 0,
) -> ToolCall | None:
    """The tool call FakeKimi answers with (when its ``tool_calls`` option is on), or None.

    Arguments fill every property of the tool's JSON schema with a deterministic value of its
    type; the id follows Kimi K2's ``functions.NAME:INDEX`` form.
    """
    _check_reply_args(seed, None, choice)
    name = wants_tool_call(messages, tools, tool_choice)
    if name is None:
        return None
    schema = _tools_by_name(tools or ())[name]
    rng = _rng("tool", model, _conversation_key(messages), name, seed, choice)
    properties = schema.get("properties") if isinstance(schema, Mapping) else None
    arguments = {key: _argument_value(rng, value)
                 for key, value in (properties.items() if isinstance(properties, Mapping) else ())}
    text = json.dumps(arguments, ensure_ascii=False, separators=(",", ":"))
    pieces: list[str] = []
    start = 0
    while start < len(text):
        end = start + rng.randint(1, 8)
        pieces.append(text[start:end])
        start = end
    return ToolCall(id=f"functions.{name}:{choice}", name=name, arguments=text,
                    argument_pieces=tuple(pieces))


