"""The chat completion body as a type, so a type checker catches ``max_token=5``.

:class:`ChatParams` lists the top-level fields of Kimi's (and OpenAI's) chat completion body,
the way the openai SDK's ``CompletionCreateParams`` does; ``Supervisor.chat`` and
``Supervisor.stream`` take them as keyword arguments. At run time a key outside this list is
sent as it is, with one warning per key and process: a deliberate extension belongs in
``extra_body=``, which is never checked.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from typing import Any, Required, TypedDict

from .observe import emit

__all__ = ["CHAT_KEYS", "ChatParams", "warn_unknown_keys"]


class ChatParams(TypedDict, total=False):
    """Top-level fields of a chat completion body (``stream`` is set by the library)."""

    model: Required[str]
    messages: Required[Sequence[Mapping[str, Any]]]
    max_completion_tokens: int
    max_tokens: int
    temperature: float
    top_p: float
    n: int
    stop: str | Sequence[str]
    presence_penalty: float
    frequency_penalty: float
    response_format: Mapping[str, Any]
    tools: Sequence[Mapping[str, Any]]
    tool_choice: str | Mapping[str, Any]
    parallel_tool_calls: bool
    seed: int
    logprobs: bool
    top_logprobs: int
    logit_bias: Mapping[str, int]
    user: str
    stream: bool
    stream_options: Mapping[str, Any]
    thinking: Mapping[str, Any]
    prompt_cache_key: str
    safety_identifier: str
    metadata: Mapping[str, str]
    service_tier: str
    store: bool
    reasoning_effort: str
    modalities: Sequence[str]


#: Every key :class:`ChatParams` names.
CHAT_KEYS = frozenset(ChatParams.__required_keys__ | ChatParams.__optional_keys__)
_warned: set[str] = set()


def warn_unknown_keys(keys: Collection[str]) -> None:
    """Warn once per process for each key that is not a chat completion parameter."""
    if CHAT_KEYS.issuperset(keys):  # every call of a caller that spells the keys right
        return
    for key in keys:
        if key not in CHAT_KEYS and key not in _warned:
            _warned.add(key)
            emit("warning", "unknown_body_key", key=key,
                 message=f"{key!r} is not a chat completion parameter; it is sent as it is "
                         f"(a typo? a deliberate extension belongs in extra_body=)")
