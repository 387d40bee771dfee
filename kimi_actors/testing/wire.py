"""FakeKimi's wire format, pure: request validation and the bytes of its answers.

Internal to FakeKimi (``kimi_actors.testing.server`` serves what this renders). Kept apart
from the server along the pure / I-O seam: nothing here touches a socket or a clock, so the
formats are tested as values. Stream events are built from string templates (one JSON object
per ``data:`` line, compact separators: the same bytes ``json.dumps(..., separators=(",",
":"), ensure_ascii=False)`` gives) rather than a dict serialised per chunk, so the server is
never the bottleneck of a benchmark.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from json.encoder import encode_basestring
from typing import Any, NamedTuple

from .replies import ToolCall, split_partial

__all__ = [
    "DONE",
    "MAX_CHOICES",
    "Answer",
    "BadRequest",
    "Text",
    "compact",
    "completion_body",
    "error_body",
    "is_int",
    "stream_events",
    "validate",
]

MAX_CHOICES = 5
ROLES = frozenset({"system", "user", "assistant", "tool"})
DONE = b"data: [DONE]\n\n"


class BadRequest(Exception):
    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


def error_body(message: str, error_type: str) -> bytes:
    return json.dumps({"error": {"message": message, "type": error_type}},
                      ensure_ascii=False, separators=(",", ":")).encode()


def compact(data: Any) -> str:
    return json.dumps(data, ensure_ascii=False, separators=(",", ":"))


def is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def validate(body: Any) -> None:
    """Raise BadRequest for a body Kimi would answer with 400 invalid_request_error."""
    if not isinstance(body, dict):
        raise BadRequest("the request body must be a JSON object")
    if not isinstance(body.get("model"), str) or not body["model"]:
        raise BadRequest("model is required and must be a string")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise BadRequest("messages must be a non-empty list")
    for index, message in enumerate(messages):
        if not isinstance(message, dict):
            raise BadRequest(f"messages[{index}] must be an object")
        if message.get("role") not in ROLES:
            raise BadRequest(f"messages[{index}].role must be one of assistant, system, tool, "
                              f"user")
        content = message.get("content")
        if content is None:
            if not (message["role"] == "assistant" and message.get("tool_calls")):
                raise BadRequest(f"messages[{index}].content is required")
        elif not isinstance(content, str | list):
            raise BadRequest(f"messages[{index}].content must be a string or a list of parts")
    if "stream" in body and not isinstance(body["stream"], bool):
        raise BadRequest("stream must be a boolean")
    n = body.get("n", 1)
    if not is_int(n) or not 1 <= n <= MAX_CHOICES:
        raise BadRequest(f"n must be an integer between 1 and {MAX_CHOICES}")
    for name in ("max_tokens", "max_completion_tokens"):
        value = body.get(name)
        if value is not None and (not is_int(value) or value < 1):
            raise BadRequest(f"{name} must be a positive integer")
    seed = body.get("seed")
    if seed is not None and not is_int(seed):
        raise BadRequest("seed must be an integer")
    for name in ("temperature", "top_p", "presence_penalty", "frequency_penalty"):
        value = body.get(name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)):
            raise BadRequest(f"{name} must be a number")
    tools = body.get("tools")
    if tools is not None and not isinstance(tools, list):
        raise BadRequest("tools must be a list")
    stream_options = body.get("stream_options")
    if stream_options is not None and not isinstance(stream_options, dict):
        raise BadRequest("stream_options must be an object")
    response_format = body.get("response_format")
    if (isinstance(response_format, dict) and response_format.get("type") == "json_object"
            and split_partial(messages)[1] is not None):
        raise BadRequest("partial mode cannot be used with response_format json_object")


class Text(NamedTuple):
    """One choice's text answer (what :class:`Reply` holds, without its validation cost)."""

    reasoning_pieces: tuple[str, ...]
    pieces: tuple[str, ...]
    finish_reason: str

    @property
    def completion_tokens(self) -> int:
        return len(self.pieces) + len(self.reasoning_pieces)


@dataclass(frozen=True, slots=True)
class Answer:
    """Everything one admitted chat request answers with."""

    replies: tuple[Text | ToolCall, ...]
    prompt_tokens: int

    @property
    def completion_tokens(self) -> int:
        return sum(reply.completion_tokens for reply in self.replies)

    def usage_json(self) -> str:
        completion = self.completion_tokens
        return (f'{{"prompt_tokens":{self.prompt_tokens},"completion_tokens":{completion},'
                f'"total_tokens":{self.prompt_tokens + completion},"cached_tokens":0}}')


def stream_events(completion_id: str, created: int, model: str, answer: Answer,
                   include_usage: bool) -> tuple[list[str], list[int]]:
    """The ``data:`` events of a stream (``[DONE]`` excluded) and the completion tokens each
    carries. Choices interleave by index: every choice's first event, then every second..."""
    head = (f'data: {{"id":"{completion_id}","object":"chat.completion.chunk",'
            f'"created":{created},"model":{encode_basestring(model)},"choices":[{{"index":')
    usage = answer.usage_json()
    per_choice: list[list[tuple[str, int]]] = []
    for index, reply in enumerate(answer.replies):
        start = f"{head}{index},"
        events = [(f'{start}"delta":{{"role":"assistant","content":""}},'
                   f'"finish_reason":null}}]}}\n\n', 0)]
        if isinstance(reply, ToolCall):
            events.append((f'{start}"delta":{{"tool_calls":[{{"index":0,'
                           f'"id":{encode_basestring(reply.id)},"type":"function","function":'
                           f'{{"name":{encode_basestring(reply.name)},"arguments":""}}}}]}},'
                           f'"finish_reason":null}}]}}\n\n', 1))
            events.extend((f'{start}"delta":{{"tool_calls":[{{"index":0,"function":'
                           f'{{"arguments":{encode_basestring(piece)}}}}}]}},'
                           f'"finish_reason":null}}]}}\n\n', 1)
                          for piece in reply.argument_pieces)
            finish_reason = "tool_calls"
        else:
            events.extend((f'{start}"delta":{{"reasoning_content":{encode_basestring(piece)}}},'
                           f'"finish_reason":null}}]}}\n\n', 1)
                          for piece in reply.reasoning_pieces)
            events.extend((f'{start}"delta":{{"content":{encode_basestring(piece)}}},'
                           f'"finish_reason":null}}]}}\n\n', 1)
                          for piece in reply.pieces)
            finish_reason = reply.finish_reason
        if include_usage:
            events.append((f'{start}"delta":{{}},"finish_reason":"{finish_reason}"}}]}}\n\n', 0))
        else:
            events.append((f'{start}"delta":{{}},"finish_reason":"{finish_reason}",'
                           f'"usage":{usage}}}]}}\n\n', 0))
        per_choice.append(events)
    texts: list[str] = []
    tokens: list[int] = []
    if len(per_choice) == 1:
        for text, weight in per_choice[0]:
            texts.append(text)
            tokens.append(weight)
    else:
        longest = max(len(events) for events in per_choice)
        for step in range(longest):
            for events in per_choice:
                if step < len(events):
                    texts.append(events[step][0])
                    tokens.append(events[step][1])
    if include_usage:
        texts.append(f'data: {{"id":"{completion_id}","object":"chat.completion.chunk",'
                     f'"created":{created},"model":{encode_basestring(model)},"choices":[],'
                     f'"usage":{usage}}}\n\n')
        tokens.append(0)
    return texts, tokens


def completion_body(completion_id: str, created: int, model: str, answer: Answer) -> bytes:
    choices = []
    for index, reply in enumerate(answer.replies):
        if isinstance(reply, ToolCall):
            message = compact({
                "role": "assistant", "content": "",
                "tool_calls": [{"index": 0, "id": reply.id, "type": "function",
                                "function": {"name": reply.name, "arguments": reply.arguments}}]})
            finish_reason = "tool_calls"
        else:
            content = encode_basestring("".join(reply.pieces))
            thought = "".join(reply.reasoning_pieces)
            reasoning = f',"reasoning_content":{encode_basestring(thought)}' if thought else ""
            message = f'{{"role":"assistant","content":{content}{reasoning}}}'
            finish_reason = reply.finish_reason
        choices.append(f'{{"index":{index},"message":{message},'
                       f'"finish_reason":"{finish_reason}"}}')
    return (f'{{"id":"{completion_id}","object":"chat.completion","created":{created},'
            f'"model":{encode_basestring(model)},"choices":[{",".join(choices)}],'
            f'"usage":{answer.usage_json()}}}').encode()
