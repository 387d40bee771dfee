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
from collections.abc import Callable, Mapping
from typing import Any

__all__ = [
    "DEFAULT_MAX_TOKENS",
    "admission_tokens",
    "char_classes",
    "count_body_tokens",
    "estimate_prompt_tokens",
    "estimate_text_tokens",
    "requested_max_tokens",
]

#: What Kimi reserves for the completion when a request names no ``max_tokens``.
DEFAULT_MAX_TOKENS = 1024
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


def _content_tokens(content: Any, text_tokens: Callable[[str], int], image_tokens: int) -> int:
    if content is None:
        return 0
    if isinstance(content, str):
        return text_tokens(content)
    if isinstance(content, list):
        total = 0
        for part in content:
            if isinstance(part, Mapping):
                if part.get("type") == "text":
                    total += text_tokens(str(part.get("text", "")))
                elif part.get("type") in ("image_url", "video_url", "input_image"):
                    total += image_tokens
                else:
                    total += text_tokens(_dumps(part))
            else:
                total += text_tokens(str(part))
        return total
    return text_tokens(_dumps(content))


def _dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, default=str)


def count_body_tokens(body: Mapping[str, Any], *, text_tokens: Callable[[str], int],
                      message_overhead: int, reply_priming: int, image_tokens: int) -> int:
    """Walk a chat body (messages with their content parts, names, reasoning and tool calls,
    and the tools) and add up ``text_tokens`` of each text plus the fixed costs given.
    ``estimate_prompt_tokens`` is this walk with conservative weights; FakeKimi's "true"
    count is the same walk with lighter ones, so it never exceeds the estimate."""
    total = reply_priming
    for message in body.get("messages") or ():
        if not isinstance(message, Mapping):
            total += message_overhead + text_tokens(str(message))
            continue
        total += message_overhead + _content_tokens(message.get("content"), text_tokens,
                                                    image_tokens)
        name = message.get("name")
        if isinstance(name, str):
            total += text_tokens(name) + 1
        reasoning = message.get("reasoning_content")
        if isinstance(reasoning, str):
            total += text_tokens(reasoning)
        tool_calls = message.get("tool_calls")
        if tool_calls:
            total += text_tokens(_dumps(tool_calls))
    tools = body.get("tools")
    if tools:
        total += text_tokens(_dumps(tools))
    return total


def estimate_prompt_tokens(body: Mapping[str, Any]) -> int:
    """Estimate the prompt tokens of a chat body: messages, names, tool calls and tools."""
    return count_body_tokens(body, text_tokens=estimate_text_tokens,
                             message_overhead=MESSAGE_OVERHEAD, reply_priming=REPLY_PRIMING,
                             image_tokens=IMAGE_TOKENS)


def requested_max_tokens(body: Mapping[str, Any], default: int = DEFAULT_MAX_TOKENS) -> int:
    """The completion budget Kimi reserves: ``max_tokens`` (or ``max_completion_tokens``)
    times the number of choices, or ``default`` when none is sent."""
    value = body.get("max_tokens")
    if value is None:
        value = body.get("max_completion_tokens")
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        value = default
    n = body.get("n")
    choices = n if isinstance(n, int) and not isinstance(n, bool) and n > 1 else 1
    return value * choices


def admission_tokens(body: Mapping[str, Any], default_max_tokens: int = DEFAULT_MAX_TOKENS) -> int:
    """What Kimi counts against TPM when it admits ``body``: prompt + max_tokens."""
    return estimate_prompt_tokens(body) + requested_max_tokens(body, default_max_tokens)
