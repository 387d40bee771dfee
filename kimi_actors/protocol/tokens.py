"""Conservative local token estimates for chat bodies, and the amount Kimi reserves for TPM.

Kimi's tokenizer (a 160K-vocabulary BPE) is not on PyPI; the official count is the
estimate-token-count endpoint. Admission needs a number before sending, so this estimate errs
high: CJK characters count one token each, astral characters (emoji) two, other non-ASCII
characters one per two, ASCII one per four characters rounded up, plus a per-message overhead.
The governor settles the estimate against the real ``usage.prompt_tokens`` afterwards.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

__all__ = [
    "BUDGET_KEYS",
    "DEFAULT_MAX_TOKENS",
    "MAX_CONTEXT_TOKENS",
    "admission_tokens",
    "budget_keys",
    "char_classes",
    "completion_budget",
    "estimate_prompt_tokens",
    "estimate_text_tokens",
    "prompt_token_ceiling",
    "requested_max_tokens",
    "sent_max_tokens",
]

#: What Kimi reserves for the completion when a request names no ``max_tokens``.
DEFAULT_MAX_TOKENS = 1024
#: The two spellings of the completion budget, the one Kimi's reference prefers first.
BUDGET_KEYS = ("max_completion_tokens", "max_tokens")
#: No model served today has a longer context: a reported count above it is not believed.
MAX_CONTEXT_TOKENS = 2_097_152
#: The most a single image or video part can count for, in the ceiling on a prompt.
MEDIA_PART_CEILING = 65_536
_MESSAGE_CEILING = 16
_MEDIA_TYPES = ("image_url", "video_url", "input_image")
MESSAGE_OVERHEAD = 4
REPLY_PRIMING = 3
IMAGE_TOKENS = 1024

_CJK = re.compile(
    "[\u1100-\u11ff\u2e80-\u2fdf\u3000-\u303f\u3040-\u30ff\u3100-\u312f\u3130-\u318f"
    "\u31a0-\u31ff\u3200-\u4dbf\u4e00-\u9fff\ua960-\ua97f\uac00-\ud7ff\uf900-\ufaff"
    "\ufe30-\ufe4f\uff00-\uffef]"
)
_ASTRAL = re.compile("[\U00010000-\U0010ffff]")


def char_classes(text: str) -> tuple[int, int, int, int]:
    """How many characters of ``text`` are ASCII, CJK (with kana and hangul), astral (emoji),
    and anything else: the classes a BPE tokenizer treats differently."""
    if text.isascii():
        return len(text), 0, 0, 0
    ascii_chars = len(text.encode("ascii", "ignore"))
    cjk = len(_CJK.findall(text))
    astral = len(_ASTRAL.findall(text))
    return ascii_chars, cjk, astral, len(text) - ascii_chars - cjk - astral


def estimate_text_tokens(text: str) -> int:
    """An upper-leaning estimate of the tokens in ``text``."""
    if text.isascii():
        return -(-len(text) // 4)
    ascii_chars, cjk, astral, other = char_classes(text)
    return -(-ascii_chars // 4) + cjk + 2 * astral + -(-other // 2)


def _content_tokens(content: Any) -> int:
    if content is None:
        return 0
    if isinstance(content, str):
        return estimate_text_tokens(content)
    if isinstance(content, list):
        total = 0
        for part in content:
            if isinstance(part, Mapping):
                if part.get("type") == "text":
                    total += estimate_text_tokens(str(part.get("text", "")))
                elif part.get("type") in _MEDIA_TYPES:
                    total += IMAGE_TOKENS
                else:
                    total += estimate_text_tokens(_dumps(part))
            else:
                total += estimate_text_tokens(str(part))
        return total
    return estimate_text_tokens(_dumps(content))


def _dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, default=str)


def estimate_prompt_tokens(body: Mapping[str, Any]) -> int:
    """Estimate the prompt tokens of a chat body: messages (content parts, names, reasoning,
    tool calls) and the tools, with conservative weights. (FakeKimi counts on its own, in
    ``kimi_actors/testing/tokenizer.py``: an oracle shares no code with what it checks.)"""
    total = REPLY_PRIMING
    for message in body.get("messages") or ():
        if type(message) is not dict and not isinstance(message, Mapping):
            total += MESSAGE_OVERHEAD + estimate_text_tokens(str(message))
            continue
        total += MESSAGE_OVERHEAD + _content_tokens(message.get("content"))
        name = message.get("name")
        if isinstance(name, str):
            total += estimate_text_tokens(name) + 1
        reasoning = message.get("reasoning_content")
        if isinstance(reasoning, str):
            total += estimate_text_tokens(reasoning)
        tool_calls = message.get("tool_calls")
        if tool_calls:
            total += estimate_text_tokens(_dumps(tool_calls))
    tools = body.get("tools")
    if tools:
        total += estimate_text_tokens(_dumps(tools))
    return total


def _budget_value(body: Mapping[str, Any], key: str) -> int | None:
    value = body.get(key)
    if type(value) is int:  # the common case, checked first: every call reads it three times
        return value if value >= 0 else None
    if value is None or isinstance(value, bool) or not isinstance(value, int) or value < 0:
        return None
    return value


def budget_keys(body: Mapping[str, Any]) -> tuple[str, ...]:
    """The spellings of the completion budget ``body`` uses (a resume lowers each of them)."""
    return tuple(key for key in BUDGET_KEYS if _budget_value(body, key) is not None)


def completion_budget(body: Mapping[str, Any]) -> int | None:
    """The completion budget per choice the server honours: ``max_completion_tokens``
    (Kimi's current spelling), else the deprecated ``max_tokens``; ``None`` when neither."""
    for key in BUDGET_KEYS:
        value = _budget_value(body, key)
        if value is not None:
            return value
    return None


def _choices(body: Mapping[str, Any]) -> int:
    n = body.get("n")
    if n is None:
        return 1
    return n if isinstance(n, int) and not isinstance(n, bool) and n > 1 else 1


def sent_max_tokens(body: Mapping[str, Any]) -> int | None:
    """The completion budget ``body`` sends: ``max_completion_tokens`` or ``max_tokens`` (the
    larger when both are sent: either may be the one honoured) times the number of choices;
    ``None`` when it sends neither."""
    budget: int | None = None
    for key in BUDGET_KEYS:
        value = body.get(key)
        if value is None:
            continue
        if type(value) is not int or value < 0:  # the rare spellings: _budget_value judges
            value = _budget_value(body, key)
            if value is None:
                continue
        if budget is None or value > budget:
            budget = value
    if budget is None:
        return None
    return budget if body.get("n") is None else budget * _choices(body)


def requested_max_tokens(body: Mapping[str, Any], default: int = DEFAULT_MAX_TOKENS) -> int:
    """The completion budget Kimi reserves: :func:`sent_max_tokens`, or ``default`` per choice
    when none is sent."""
    sent = sent_max_tokens(body)
    return default * _choices(body) if sent is None else sent


def prompt_token_ceiling(body: Mapping[str, Any], payload_size: int) -> int:
    """The most prompt tokens ``body`` can count for, whatever a server reports: a byte-level
    BPE emits at most one token per byte of text, and the JSON payload (``payload_size``
    bytes) holds every byte of text, escaped; plus a few tokens per message for its markers,
    and a generous amount per image or video part, which count by pixels, not bytes."""
    messages = body.get("messages")
    media = 0
    count = 0
    if isinstance(messages, list | tuple):
        count = len(messages)
        for message in messages:
            content = message.get("content") if type(message) is dict \
                or isinstance(message, Mapping) else None
            if isinstance(content, list):
                media += sum(1 for part in content
                             if isinstance(part, Mapping) and part.get("type") in _MEDIA_TYPES)
    ceiling = payload_size + _MESSAGE_CEILING * (count + 1) + MEDIA_PART_CEILING * media
    return min(ceiling, MAX_CONTEXT_TOKENS)


def admission_tokens(body: Mapping[str, Any], default_max_tokens: int = DEFAULT_MAX_TOKENS) -> int:
    """What Kimi counts against TPM when it admits ``body``: prompt + max_tokens."""
    return estimate_prompt_tokens(body) + requested_max_tokens(body, default_max_tokens)
