"""The request actor: one non-stream chat completion through admission, retries and settling."""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from ..errors import KimiError
from ..protocol.chunks import ChatResult, parse_completion
from ..protocol.classify import REQUEST_ID_HEADER, Action, classify_error, classify_response
from ..protocol.tokens import admission_tokens
from ..transport import json_body
from .runtime import Runtime

__all__ = ["CHAT_PATH", "RequestActor"]

CHAT_PATH = "chat/completions"


class RequestActor:
    """Sends one chat body until it succeeds or retrying cannot help, then returns the result."""

    __slots__ = ("_body", "_deadline", "_headers", "_priority", "_rt")

    def __init__(self, rt: Runtime, body: Mapping[str, Any], *, priority: int = 0,
                 deadline: float | None = None, headers: Mapping[str, str] | None = None) -> None:
        self._rt = rt
        self._body = {key: value for key, value in body.items()
                      if key not in ("stream", "stream_options")}
        self._priority = priority
        self._deadline = deadline
        self._headers = headers

    async def run(self) -> ChatResult:
        rt = self._rt
        payload = json_body(self._body)
        tokens = admission_tokens(self._body, rt.default_max_tokens)
        rt.governor.check(tokens)
        attempt = 0
        while True:
            attempt += 1
            ticket = await rt.admit(tokens, priority=self._priority, first=attempt == 1,
                                    deadline=self._deadline)
            try:
                raw = await rt.transport.post(CHAT_PATH, payload, headers=self._headers,
                                              on_sent=ticket.on_sent)
            except KimiError as exc:
                outcome = classify_error(exc)
            except BaseException:
                rt.abandon(ticket)
                raise
            else:
                outcome = classify_response(raw.status, raw.headers, raw.body,
                                            wall_now=time.time())
                if outcome.action is Action.SUCCESS:
                    try:
                        result = parse_completion(
                            outcome.body, request_id=raw.headers.get(REQUEST_ID_HEADER))
                    except KimiError as exc:
                        outcome = classify_error(exc)
                    else:
                        rt.governor.release(ticket.permit)
                        rt.record(outcome, ticket)
                        rt.settle(ticket, result.usage, self._body, len(payload))
                        return result
            rt.governor.release(ticket.permit)
            rt.record(outcome, ticket)
            await rt.before_retry(outcome, failures=attempt, attempt=attempt,
                                  spend_budget=True, deadline=self._deadline)
