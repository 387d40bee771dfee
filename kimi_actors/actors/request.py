"""The request actor: one non-stream chat completion through admission, retries and settling."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..errors import KimiError
from ..governance.decide import AttemptState
from ..protocol.chunks import ChatResult, parse_completion
from ..protocol.classify import (
    REQUEST_ID_HEADER,
    Action,
    Outcome,
    classify_error,
    classify_response,
)
from ..protocol.tokens import admission_tokens
from ..transport import RawResponse, json_body
from .runtime import Runtime

__all__ = ["CHAT_PATH", "RequestActor"]

CHAT_PATH = "chat/completions"
_STREAM_KEYS = ("stream", "stream_options")


class RequestActor:
    """Sends one chat body until it succeeds or retrying cannot help, then returns the result.
    ``body`` becomes the actor's: the caller passes one it does not change."""

    __slots__ = ("_body", "_deadline", "_headers", "_priority", "_rt", "_tenant")

    def __init__(self, rt: Runtime, body: Mapping[str, Any], *, priority: int = 0,
                 deadline: float | None = None, headers: Mapping[str, str] | None = None,
                 tenant: str | None = None) -> None:
        self._rt = rt
        self._tenant = tenant
        # The body is the actor's from now on (the supervisor hands over its own copy): it
        # is copied only to drop the stream keys.
        self._body = ({key: value for key, value in body.items() if key not in _STREAM_KEYS}
                      if "stream" in body or "stream_options" in body else body)
        self._priority = priority
        self._deadline = deadline
        self._headers = headers

    async def run(self) -> ChatResult:
        rt = self._rt
        with rt.trace_call(self._body, stream=False, tenant=self._tenant,
                           priority=self._priority) as call:
            payload = json_body(self._body)
            tokens = admission_tokens(self._body, rt.default_max_tokens)
            rt.check(tokens, self._tenant)
            since = rt.clock.now()
            number = 0
            while True:
                number += 1
                attempt = await rt.admit_attempt(tokens, priority=self._priority,
                                                 first=number == 1, deadline=self._deadline,
                                                 tenant=self._tenant, since=since, call=call,
                                                 number=number)
                try:
                    try:
                        raw = await rt.transport.post(CHAT_PATH, payload, headers=self._headers,
                                                      on_sent=attempt.on_sent)
                    except KimiError as exc:
                        outcome, result = classify_error(exc), None
                    else:
                        outcome, result = self._answer(raw)
                    attempt.finish(outcome, usage=result.usage if result is not None else None,
                                   body=self._body, payload_size=len(payload))
                except BaseException as exc:
                    attempt.close(type(exc), exc, exc.__traceback__)
                    raise
                attempt.close()
                if result is not None:
                    call.succeeded(result, number)
                    return result
                verdict = rt.decide(outcome, AttemptState(attempt=number, failures=number),
                                    self._deadline)
                await rt.follow(verdict, outcome, attempts=number)

    def _answer(self, raw: RawResponse) -> tuple[Outcome, ChatResult | None]:
        """One HTTP answer's outcome, and the parsed result when it succeeded."""
        outcome = classify_response(raw.status, raw.headers, raw.body,
                                    wall_now=self._rt.clock.wall())
        if outcome.action is not Action.SUCCESS:
            return outcome, None
        try:
            return outcome, parse_completion(outcome.body,
                                             request_id=raw.headers.get(REQUEST_ID_HEADER))
        except KimiError as exc:
            return classify_error(exc), None
