"""Render the deltas a stream delivered as one OpenAI-style SSE stream again (pure).

A stream that was resumed through Partial Mode arrived as several server streams, each with
its own chunk ids, and the continuation repeats the choice's ``role``. The deltas the stream
actor delivers are already free of gaps and duplicates; :class:`ChunkRenderer` writes them out
as ``chat.completion.chunk`` events under the first segment's ``id``, ``created`` and
``model``, ending with one ``data: [DONE]``, so a client that parses SSE (the openai SDK and
its stream helpers) sees one healthy stream.

Deltas that came from one server chunk (the choices of ``n > 1``) become one chunk again. A
``restart`` delta can be rendered only before anything was written; after that the stream
cannot take back what it sent, and :class:`RestartAfterOutput` says so. A usage Kimi puts
inside the one choice of a chunk is also given at the chunk's top level, where OpenAI puts it
and the SDK's stream helpers read it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import orjson

from .results import Delta, Usage, delta_source

__all__ = ["DONE_EVENT", "ChunkRenderer", "RestartAfterOutput"]

DONE_EVENT = b"data: [DONE]\n\n"


class RestartAfterOutput(Exception):
    """A ``restart`` delta arrived after chunks were written: one SSE stream cannot show it."""


def _usage_dict(usage: Usage) -> Mapping[str, Any]:
    return usage.raw if usage.raw else usage.to_dict()


class ChunkRenderer:
    """Turns delivered :class:`Delta` batches into SSE bytes under one stream identity."""

    __slots__ = ("_created", "_id", "_model", "_written")

    def __init__(self) -> None:
        self._id: str | None = None
        self._created: int | None = None
        self._model: str | None = None
        self._written = False

    @property
    def written(self) -> bool:
        """Whether any chunk was rendered yet."""
        return self._written

    def render(self, deltas: Iterable[Delta]) -> bytes:
        """The SSE events for ``deltas`` (possibly empty). Raises
        :class:`RestartAfterOutput` for a restart once something was rendered."""
        out: list[bytes] = []
        group: list[Delta] = []
        source: object = None
        for delta in deltas:
            if delta.restart:
                if self._written or out or group:
                    raise RestartAfterOutput
                continue
            # The deltas of one chunk share its source; only a group's first parses it.
            if group and delta_source(delta) is not source:
                out.append(self._event(group, group[0].raw))
                group = []
            group.append(delta)
            source = delta_source(delta)
        if group:
            out.append(self._event(group, group[0].raw))
        if out:
            self._written = True
        return b"".join(out)

    def _identify(self, raw: Mapping[str, Any] | None) -> None:
        if raw is None:
            return
        if self._id is None and isinstance(chunk_id := raw.get("id"), str):
            self._id = chunk_id
        if self._created is None and type(created := raw.get("created")) is int:
            self._created = created
        if self._model is None and isinstance(model := raw.get("model"), str):
            self._model = model

    def _event(self, group: list[Delta], raw: Mapping[str, Any] | None) -> bytes:
        self._identify(raw)
        top_usage = raw.get("usage") if raw is not None else None
        choices: list[dict[str, Any]] = []
        for delta in group:
            usage_only = (delta.usage is not None and top_usage is not None
                          and not (delta.role or delta.content or delta.reasoning_content
                                   or delta.tool_calls or delta.finish_reason))
            if usage_only and raw is not None and not raw.get("choices"):
                continue  # the usage chunk of ``stream_options.include_usage``: no choice
            body: dict[str, Any] = {}
            if delta.role is not None:
                body["role"] = delta.role
            if delta.content:
                body["content"] = delta.content
            if delta.reasoning_content:
                body["reasoning_content"] = delta.reasoning_content
            if delta.tool_calls:
                body["tool_calls"] = list(delta.tool_calls)
            choice: dict[str, Any] = {"index": delta.index, "delta": body,
                                      "finish_reason": delta.finish_reason}
            if delta.usage is not None and top_usage is None:
                choice["usage"] = _usage_dict(delta.usage)
            choices.append(choice)
        chunk: dict[str, Any] = {"id": self._id, "object": "chat.completion.chunk",
                                 "created": self._created, "model": self._model,
                                 "choices": choices}
        if top_usage is not None:
            usage = Usage.from_dict(top_usage)
            if usage is not None:
                chunk["usage"] = _usage_dict(usage)
        elif len(choices) == 1 and "usage" in choices[0]:
            # Kimi puts the usage in the choice; the openai SDK's helpers read it at top level.
            chunk["usage"] = choices[0]["usage"]
        if raw is not None and (fingerprint := raw.get("system_fingerprint")) is not None:
            chunk["system_fingerprint"] = fingerprint
        return b"data: " + orjson.dumps(chunk, option=orjson.OPT_NON_STR_KEYS) + b"\n\n"
