"""FakeKimi's own token count, written apart from the client's estimate.

An oracle must not share the code it checks: while FakeKimi counted prompts with the client's
estimator, the two always agreed and no test could see an estimate go wrong. This count
imitates what a byte-level BPE does (Kimi's tokenizer is one) instead of following the
estimate's character classes, so the client's conservative estimate is usually a little
above it and sometimes below (long digit runs, punctuation runs, emoji), as with a real
tokenizer. The governor's settle and its 429 handling must absorb the difference.

The rules, deterministic and cheap:

* a word of ASCII letters, with the one space before it, is 1 token up to 10 letters, then
  one more per 8 letters (common words are single tokens; long ones split);
* digits go 3 to a token ("2026" is two);
* a run of whitespace is 1 token;
* a CJK character, kana or hangul syllable is 1 token;
* any other character costs its UTF-8 bytes, 2 to a token rounded up, at least 1: ASCII
  punctuation 1 each, most symbols 1-2, an emoji 2, a 4-byte rare character 2;
* a message costs 3 tokens of markers and its name 1 more; a reply is primed with 3; an image
  part 765; tool calls and tool definitions count as their JSON text.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from typing import Any

__all__ = ["count_prompt_tokens", "count_text_tokens", "reserved_completion_tokens"]

_PIECES = re.compile(
    r" ?[A-Za-z]+"
    r"|[0-9]+"
    r"|\s+"
    r"|.", re.DOTALL)
_MESSAGE_MARKERS = 3
_NAME_MARKER = 1
_REPLY_PRIMING = 3
_IMAGE_TOKENS = 765
_MEDIA = ("image_url", "video_url", "input_image")
#: What FakeKimi reserves for the completion when a request names no budget (as Kimi does).
DEFAULT_COMPLETION_TOKENS = 1024


def count_text_tokens(text: str) -> int:
    """Tokens of ``text`` under the rules in the module docstring."""
    total = 0
    for piece in _PIECES.findall(text):
        first = piece[-1]
        if first.isascii() and first.isalpha():
            letters = len(piece.lstrip(" "))
            total += 1 if letters <= 10 else 1 + math.ceil((letters - 10) / 8)
        elif first.isdigit() and first.isascii():
            total += math.ceil(len(piece) / 3)
        elif piece.isspace() or (len(piece) == 1 and _is_cjk(piece)):
            total += 1
        else:
            total += max(1, math.ceil(len(piece.encode("utf-8", "surrogatepass")) / 2))
    return total


def _is_cjk(char: str) -> bool:
    code = ord(char)
    return (0x3040 <= code <= 0x30FF or 0x3400 <= code <= 0x4DBF or 0x4E00 <= code <= 0x9FFF
            or 0xAC00 <= code <= 0xD7AF or 0xF900 <= code <= 0xFAFF or 0x3000 <= code <= 0x303F
            or 0xFF00 <= code <= 0xFFEF)


def _json_tokens(value: Any) -> int:
    return count_text_tokens(json.dumps(value, ensure_ascii=False, default=str))


def _content_tokens(content: Any) -> int:
    if content is None:
        return 0
    if isinstance(content, str):
        return count_text_tokens(content)
    if isinstance(content, list):
        total = 0
        for part in content:
            if isinstance(part, Mapping) and part.get("type") == "text":
                total += count_text_tokens(str(part.get("text", "")))
            elif isinstance(part, Mapping) and part.get("type") in _MEDIA:
                total += _IMAGE_TOKENS
            else:
                total += _json_tokens(part) if not isinstance(part, str) else \
                    count_text_tokens(part)
        return total
    return _json_tokens(content)


def count_prompt_tokens(body: Mapping[str, Any]) -> int:
    """FakeKimi's prompt token count of a chat body: what ``usage.prompt_tokens`` and the
    estimate-token-count endpoint report, and what its TPM and TPD windows count."""
    total = _REPLY_PRIMING
    for message in body.get("messages") or ():
        if not isinstance(message, Mapping):
            total += _MESSAGE_MARKERS + count_text_tokens(str(message))
            continue
        total += _MESSAGE_MARKERS + _content_tokens(message.get("content"))
        name = message.get("name")
        if isinstance(name, str):
            total += _NAME_MARKER + count_text_tokens(name)
        reasoning = message.get("reasoning_content")
        if isinstance(reasoning, str):
            total += count_text_tokens(reasoning)
        if message.get("tool_calls"):
            total += _json_tokens(message["tool_calls"])
    if body.get("tools"):
        total += _json_tokens(body["tools"])
    return total


def reserved_completion_tokens(body: Mapping[str, Any]) -> int:
    """What FakeKimi reserves for the completion at admission: ``max_completion_tokens``
    (Kimi's current spelling), else ``max_tokens``, else 1024, times ``n``."""
    budget = body.get("max_completion_tokens")
    if budget is None:
        budget = body.get("max_tokens")
    if isinstance(budget, bool) or not isinstance(budget, int) or budget < 0:
        budget = DEFAULT_COMPLETION_TOKENS
    n = body.get("n", 1)
    return budget * (n if isinstance(n, int) and not isinstance(n, bool) and n > 1 else 1)
