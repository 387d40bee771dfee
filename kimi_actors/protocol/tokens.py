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
    "DEFAULT_MAX_TOKENS",
    "admission_tokens",
    "char_classes",
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
                elif part.get("type") in ("image_url", "video_url", "input_image"):
                    total += IMAGE_TOKENS
                else:
                    total += estimate_text_tokens(json.dumps(part, ensure_ascii=False, default=str))
            else:
                total += estimate_text_tokens(str(part))
        return total
    return estimate_text_tokens(json.dumps(content, ensure_ascii=False, default=str))


def estimate_prompt_tokens(body: Mapping[str, Any]) -> int:
    """Estimate the prompt tokens of a chat body: messages, names, tool calls and tools."""
    total = REPLY_PRIMING
    for message in body.get("messages") or ():
        if not isinstance(message, Mapping):
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
            total += estimate_text_tokens(json.dumps(tool_calls, ensure_ascii=False, default=str))
    tools = body.get("tools")
    if tools:
        total += estimate_text_tokens(json.dumps(tools, ensure_ascii=False, default=str))
    return total


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
