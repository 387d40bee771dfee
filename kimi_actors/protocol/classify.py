"""Turn one HTTP answer, or one error, into a decision: succeed, retry, fail, or stop the run.

The runtime keeps retries in one place, and that place must never guess: every answer Kimi or a
proxy in front of it can give maps here to an :class:`Outcome` with a typed error, the wait the
server asked for, the governor dimension a 429 names, and whether it counts toward the circuit
breaker. The table follows Kimi's documented errors (see ``KIMI_API.md``):

=====  ============================================  ==================================  ========
HTTP   type / message                                error                               action
=====  ============================================  ==================================  ========
2xx    JSON without ``error``                        none                                success
2xx    not JSON, truncated, invalid UTF-8            ProtocolError                       retry
2xx    JSON ``error`` object                         as its type would be                (same)
3xx    any (not followed, see transport.py)          RedirectError                       fail
400    ``content_filter``                            ContentFilterError                  fail
400    "token length too long", "context length"     ContextLengthError                  fail
400    anything else                                 BadRequestError                     fail
401    any                                           AuthenticationError                 run
402    any                                           QuotaExhaustedError                 run
403    quota, balance, suspended, arrears            QuotaExhaustedError                 run
403    anything else                                 PermissionDeniedError               fail
404    message names a model                         ModelNotFoundError                  fail
404    anything else                                 NotFoundError                       fail
408    any (also 425)                                ServerError, no breaker             retry
429    ``exceeded_current_quota_error``, suspended   QuotaExhaustedError                 run
429    ``engine_overloaded_error``, "overloaded"     EngineOverloadedError, breaker      retry
429    anything else (dimension from the message)    RateLimitError                      retry
5xx    any                                           ServerError, breaker                retry
other  any                                           APIError                            fail
=====  ============================================  ==================================  ========

("run" is :attr:`Action.FATAL_RUN`: every further request of the run would fail the same way.)

Nothing here raises on bad input: HTML pages, plain text, empty, truncated or non-UTF-8 bodies
all become errors whose message says what arrived, with a short excerpt.
"""

from __future__ import annotations

import email.utils
import enum
import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC
from typing import Any

from multidict import CIMultiDict, CIMultiDictProxy

from ..errors import (
    NOT_NOW_STATUSES,
    APIError,
    AuthenticationError,
    BadRequestError,
    ContentFilterError,
    ContextLengthError,
    EngineOverloadedError,
    KimiError,
    ModelNotFoundError,
    NotFoundError,
    PermissionDeniedError,
    ProtocolError,
    QuotaExhaustedError,
    RateLimitError,
    RedirectError,
    ServerError,
)
from ..limits import Dimension
from ..redaction import redact_url
from . import jsontext
from .results import slot_builder

__all__ = [
    "KEPT_ERROR_BODY_BYTES",
    "MAX_RETRY_AFTER",
    "REQUEST_ID_HEADER",
    "Action",
    "Outcome",
    "classify_error",
    "classify_response",
    "error_from_payload",
    "limit_scope",
    "parse_retry_after",
    "server_limit",
]

#: The header Kimi uses to name a request in its logs (quote it in a support ticket).
REQUEST_ID_HEADER = "Msh-Request-Id"
_FALLBACK_REQUEST_ID_HEADER = "x-request-id"

#: A server-named wait longer than this (seconds) is taken as this: an hour is already absurd.
MAX_RETRY_AFTER = 3600.0
#: Error bodies are kept for inspection up to this many bytes.
KEPT_ERROR_BODY_BYTES = 64 * 1024
_MAX_MESSAGE_CHARS = 2000
_EXCERPT_CHARS = 200


_AUTH_TYPES = frozenset({
    "invalid_authentication_error", "incorrect_api_key_error", "authentication_error",
    "invalid_api_key",
})
_QUOTA_TYPES = frozenset({"exceeded_current_quota_error", "insufficient_quota"})
_OVERLOADED_TYPES = frozenset({"engine_overloaded_error", "overloaded_error"})

#: The status an error type naturally comes with, used when it arrives inside a 2xx answer.
_TYPE_STATUS: dict[str, int] = {
    "content_filter": 400,
    "invalid_request_error": 400,
    **dict.fromkeys(_AUTH_TYPES, 401),
    "permission_denied_error": 403,
    "resource_not_found_error": 404,
    "not_found_error": 404,
    "rate_limit_reached_error": 429,
    "rate_limit_error": 429,
    "rate_limit_exceeded": 429,
    **dict.fromkeys(_OVERLOADED_TYPES, 429),
    **dict.fromkeys(_QUOTA_TYPES, 429),
    "server_error": 500,
    "unexpected_output": 500,
    "internal_error": 500,
    "internal_server_error": 500,
}

_QUOTA_MESSAGE = re.compile(
    r"quota|balance|suspend|arrear|insufficient[ _]funds|exceeded_current_quota", re.IGNORECASE)
_CONTEXT_MESSAGE = re.compile(
    r"token length too long|exceeded model token limit|context[ _]length|context window",
    re.IGNORECASE)
_OVERLOADED_MESSAGE = re.compile(r"overload", re.IGNORECASE)
_RATE_LIMIT_MESSAGE = re.compile(
    r"rate[ _]limit|max concurrency|max rpm|too many requests", re.IGNORECASE)
_MODEL_MESSAGE = re.compile(r"\bmodel\b", re.IGNORECASE)
_ANGLE_BRACKETED = re.compile(r"<[^<>]*>")
_DIMENSION_MESSAGE = re.compile(
    r"\b(?P<name>concurrency|concurrent|rpm|tpm|tpd)\b"
    r"|(?P<phrase>requests per minute|tokens per minute|tokens per day)",
    re.IGNORECASE)
_DIMENSION_NAMES = {
    "concurrency": Dimension.CONCURRENCY,
    "concurrent": Dimension.CONCURRENCY,
    "rpm": Dimension.RPM,
    "requests per minute": Dimension.RPM,
    "tpm": Dimension.TPM,
    "tokens per minute": Dimension.TPM,
    "tpd": Dimension.TPD,
    "tokens per day": Dimension.TPD,
}

_RETRY_IN_MESSAGE = re.compile(
    r"(?:try|retry)(?:\s+again)?\s+(?:after|in)\s+"
    r"(?:(?P<minutes>\d+)\s*m(?=\d))?"
    r"(?P<amount>\d+(?:\.\d+)?)\s*"
    r"(?P<unit>milliseconds?|ms|minutes?|mins?|m|hours?|h|seconds?|secs?|s)?\b",
    re.IGNORECASE)

_HTML = re.compile(r"<\s*(?:!doctype\s+html|html|head|body|title)\b", re.IGNORECASE)
_HTML_TITLE = re.compile(r"<title[^>]*>(?P<title>.*?)</title>", re.IGNORECASE | re.DOTALL)
_HTML_SCRIPT = re.compile(r"<(script|style)\b.*?</\1\s*>", re.IGNORECASE | re.DOTALL)
_HTML_TAG = re.compile(r"<[^>]*>")
_WHITESPACE = re.compile(r"\s+")


class Action(enum.StrEnum):
    """What the runtime does next with the request."""

    SUCCESS = "success"
    RETRY = "retry"
    FAIL = "fail"
    FATAL_RUN = "fatal_run"


@dataclass(frozen=True, slots=True, kw_only=True)
class Outcome:
    """The decision for one answer or error.

    ``retry_after`` is the wait the server named (header or message), in seconds; the runtime
    honours it instead of its own backoff. ``dimension`` is the account limit a 429 names, so the
    governor can slow down exactly that one, and ``limit`` the value it names for it, so the
    governor can adopt it. ``body`` is the parsed JSON of a success.
    """

    action: Action
    error: KimiError | None = None
    retry_after: float | None = None
    dimension: Dimension | None = None
    limit: int | None = None
    trips_breaker: bool = False
    body: Any = None

    def __post_init__(self) -> None:
        if not isinstance(self.action, Action):
            raise ValueError(f"Outcome.action must be an Action, got {self.action!r}")
        if (self.action is Action.SUCCESS) != (self.error is None):
            raise ValueError("Outcome.error must be None exactly when the action is SUCCESS, "
                             f"got action={self.action.value} with error={self.error!r}")
        if self.retry_after is not None and not (
                isinstance(self.retry_after, int | float) and math.isfinite(self.retry_after)
                and self.retry_after >= 0):
            raise ValueError("Outcome.retry_after must be a finite number of seconds >= 0, "
                             f"got {self.retry_after!r}")


def _header(headers: Mapping[str, str], name: str) -> str | None:
    """Case-insensitive lookup that works for plain dicts and for multidict proxies alike."""
    value = headers.get(name)
    if value is not None or isinstance(headers, CIMultiDictProxy | CIMultiDict):
        return value
    wanted = name.lower()
    for key, candidate in headers.items():
        if key.lower() == wanted:
            return candidate
    return None


def _request_id(headers: Mapping[str, str]) -> str | None:
    return _header(headers, REQUEST_ID_HEADER) or _header(headers, _FALLBACK_REQUEST_ID_HEADER)


def _bounded_wait(seconds: float) -> float | None:
    if math.isnan(seconds):
        return None
    return min(max(seconds, 0.0), MAX_RETRY_AFTER)


def _number(text: str) -> float | None:
    try:
        return float(text.strip())
    except ValueError:
        return None


def _retry_after_date(text: str, wall_now: float | None) -> float | None:
    if wall_now is None:
        return None
    try:
        when = email.utils.parsedate_to_datetime(text.strip())
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return when.timestamp() - wall_now


def _unit_seconds(unit: str) -> float:
    if unit == "ms" or unit.startswith("milli"):
        return 0.001
    if unit.startswith("m"):
        return 60.0
    if unit.startswith("h"):
        return 3600.0
    return 1.0


def _retry_after_in_message(message: str) -> float | None:
    match = _RETRY_IN_MESSAGE.search(message)
    if match is None:
        return None
    seconds = float(match["amount"]) * _unit_seconds((match["unit"] or "s").lower())
    if match["minutes"]:
        seconds += int(match["minutes"]) * 60.0
    return seconds


def parse_retry_after(headers: Mapping[str, str], message: str | None = None, *,
                      wall_now: float | None = None) -> float | None:
    """The wait in seconds the server asked for, or ``None`` when it named none.

    Precedence: ``retry-after-ms``, then ``Retry-After`` as seconds or as an HTTP date (only
    when ``wall_now``, the wall-clock ``time.time()``, is given: a date means nothing against a
    monotonic clock), then "try again after N seconds" in the message. A header that does not
    parse is skipped rather than trusted. The result is clamped to ``[0, MAX_RETRY_AFTER]``.
    """
    raw_ms = _header(headers, "retry-after-ms")
    if raw_ms is not None:
        millis = _number(raw_ms)
        if millis is not None and (wait := _bounded_wait(millis / 1000.0)) is not None:
            return wait
    raw = _header(headers, "retry-after")
    if raw is not None:
        seconds = _number(raw)
        if seconds is None:
            seconds = _retry_after_date(raw, wall_now)
        if seconds is not None and (wait := _bounded_wait(seconds)) is not None:
            return wait
    if message:
        seconds = _retry_after_in_message(message)
        if seconds is not None:
            return _bounded_wait(seconds)
    return None


def _excerpt(text: str) -> str:
    flat = _WHITESPACE.sub(" ", text).strip()
    if len(flat) > _EXCERPT_CHARS:
        return flat[:_EXCERPT_CHARS] + "..."
    return flat


def _html_excerpt(text: str) -> str:
    title = _HTML_TITLE.search(text)
    if title is not None and title["title"].strip():
        return _excerpt(title["title"])
    return _excerpt(_HTML_TAG.sub(" ", _HTML_SCRIPT.sub(" ", text)))


def _describe_body(status: int, text: str) -> str:
    """A clear message for an answer that carries no usable error object."""
    stripped = text.strip()
    if not stripped:
        return f"HTTP {status} with an empty body"
    if _HTML.search(stripped[:2048]):
        return f"HTTP {status} with an HTML body: {_html_excerpt(stripped)}"
    if stripped[0] in "{[\"":
        return f"HTTP {status} with a body that is not valid JSON: {_excerpt(stripped)}"
    return f"HTTP {status} with a plain-text body: {_excerpt(stripped)}"


def _as_text(value: Any) -> str | None:
    if value is None or value == "":
        return None
    if isinstance(value, str):
        return value
    try:
        return json.dumps(value, ensure_ascii=False, default=str)
    except (TypeError, ValueError):  # pragma: no cover - default=str makes this unreachable
        return str(value)


def _error_fields(payload: Mapping[str, Any]) -> tuple[str | None, str | None]:
    """(type, message) from any of the error shapes servers and proxies send."""
    error = payload.get("error")
    source: Mapping[str, Any] = error if isinstance(error, Mapping) else payload
    kind = source.get("type")
    if not isinstance(kind, str) or not kind:
        code = source.get("code")
        kind = code if isinstance(code, str) and code else None
    if isinstance(error, Mapping):
        message = _as_text(error.get("message") or error.get("msg") or error.get("detail"))
    elif isinstance(error, str) and error:
        message = error
    else:
        message = _as_text(payload.get("message") or payload.get("msg")
                           or payload.get("detail") or error)
    return kind, message


def _natural_status(error_type: str | None, message: str) -> int:
    """The HTTP status an error found inside a 2xx answer would have come with."""
    known = _TYPE_STATUS.get(error_type) if error_type else None
    if known is not None:
        return known
    if (_QUOTA_MESSAGE.search(message) or _OVERLOADED_MESSAGE.search(message)
            or _RATE_LIMIT_MESSAGE.search(message)):
        return 429
    return 500


_SERVER_LIMIT = {
    Dimension.CONCURRENCY: re.compile(r"max concurrency:\s*(\d+)", re.IGNORECASE),
    Dimension.RPM: re.compile(r"max RPM:\s*(\d+)", re.IGNORECASE),
    Dimension.TPM: re.compile(r"TPM rate limit.*?limit:\s*(\d+)", re.IGNORECASE),
    Dimension.TPD: re.compile(r"TPD rate limit.*?limit:\s*(\d+)", re.IGNORECASE),
}
_SCOPE = re.compile(r"\b(organization|project)\b", re.IGNORECASE)


def server_limit(dimension: Dimension | None, message: str) -> int | None:
    """The limit a rate-limit message names for ``dimension`` ("max RPM: 3", "limit:100")."""
    if dimension is None:
        return None
    match = _SERVER_LIMIT[dimension].search(message)
    return int(match.group(1)) if match else None


def limit_scope(message: str) -> str | None:
    """Whose limit a rate-limit message names: "organization" or "project"."""
    match = _SCOPE.search(message)
    return match.group(1).lower() if match else None


def _dimension(message: str) -> Dimension | None:
    match = _DIMENSION_MESSAGE.search(_ANGLE_BRACKETED.sub(" ", message))
    if match is None:
        return None
    return _DIMENSION_NAMES[(match["name"] or match["phrase"]).lower()]


def _error_class(status: int, error_type: str | None, message: str) -> type[APIError]:
    if status == 401 or error_type in _AUTH_TYPES:
        return AuthenticationError
    if error_type in _QUOTA_TYPES or status == 402 or (
            status in (403, 429) and _QUOTA_MESSAGE.search(message)):
        return QuotaExhaustedError
    if status == 400:
        if error_type == "content_filter":
            return ContentFilterError
        if _CONTEXT_MESSAGE.search(message):
            return ContextLengthError
        return BadRequestError
    if status == 403:
        return PermissionDeniedError
    if status == 404:
        return ModelNotFoundError if _MODEL_MESSAGE.search(message) else NotFoundError
    if status == 429:
        if error_type in _OVERLOADED_TYPES or _OVERLOADED_MESSAGE.search(message):
            return EngineOverloadedError
        return RateLimitError
    if status in NOT_NOW_STATUSES or status >= 500:
        return ServerError
    return APIError


def _build_error(status: int, error_type: str | None, message: str, *,
                 request_id: str | None, retry_after: float | None,
                 body: bytes | None) -> APIError:
    class_status = _natural_status(error_type, message) if 200 <= status < 300 else status
    cls = _error_class(class_status, error_type, message)
    if len(message) > _MAX_MESSAGE_CHARS:
        message = message[:_MAX_MESSAGE_CHARS] + "..."
    if body is not None and len(body) > KEPT_ERROR_BODY_BYTES:
        body = body[:KEPT_ERROR_BODY_BYTES]
    if cls is RateLimitError:
        dimension = _dimension(message)
        return RateLimitError(message, dimension=dimension,
                              limit=server_limit(dimension, message), scope=limit_scope(message),
                              status=status, error_type=error_type, request_id=request_id,
                              retry_after=retry_after, body=body)
    return cls(message, status=status, error_type=error_type, request_id=request_id,
               retry_after=retry_after, body=body)


def error_from_payload(status: int, payload: Mapping[str, Any], *, request_id: str | None = None,
                       retry_after: float | None = None, body: bytes | None = None) -> APIError:
    """The typed error a JSON error payload stands for (an HTTP answer or a stream chunk).

    Accepts ``{"error": {"type", "message"}}``, ``{"error": "text"}``, ``{"message": ...}`` and
    ``{"code": ..., "msg": ...}``. Without an explicit ``retry_after`` the wait is read from the
    message ("please try again after 20 seconds"), which is all a stream chunk can offer.
    """
    error_type, message = _error_fields(payload)
    if message is None:
        kind = f" {error_type}" if error_type else ""
        shown = _excerpt(_as_text(dict(payload)) or "")
        message = f"HTTP {status}{kind} error with no message: {shown}"
    elif retry_after is None:
        retry_after = parse_retry_after({}, message)
    return _build_error(status, error_type, message, request_id=request_id,
                        retry_after=retry_after, body=body)


_build_outcome = slot_builder(Outcome)


def _success(body: Any) -> Outcome:
    """``Outcome(action=Action.SUCCESS, body=body)`` without the constructor's checks (2.8 µs
    on every answer)."""
    return _build_outcome(Action.SUCCESS, None, None, None, None, False, body)


def _outcome_for(error: KimiError, *, mid_stream: bool = False) -> Outcome:
    """The decision an error stands for, read from its flags (see errors.py)."""
    action = (Action.FATAL_RUN if error.fatal_for_run
              else Action.RETRY if error.retryable else Action.FAIL)
    return Outcome(action=action, error=error, retry_after=getattr(error, "retry_after", None),
                   dimension=getattr(error, "dimension", None),
                   limit=getattr(error, "limit", None),
                   trips_breaker=error.trips_breaker and (error.mid_stream or not mid_stream))


def _parse_json(text: str | bytes) -> tuple[bool, Any, str | None]:
    """(parsed, value, what is wrong when not parsed)."""
    try:
        return True, jsontext.loads(text), None
    except ValueError as exc:
        return False, None, str(exc)


def classify_response(status: int, headers: Mapping[str, str], body: bytes, *,
                      wall_now: float | None = None) -> Outcome:
    """Decide what one complete HTTP answer means. Never raises.

    ``wall_now`` (``time.time()``) lets a ``Retry-After`` HTTP date count; without it only
    numeric waits are read.
    """
    request_id = _request_id(headers)
    if 300 <= status < 400:
        return Outcome(action=Action.FAIL,
                       error=_redirect_error(status, headers, request_id, body))
    if 200 <= status < 300:
        parsed_ok, parsed, problem = _parse_json(body)
        if not parsed_ok:
            text = body[:KEPT_ERROR_BODY_BYTES].decode("utf-8", errors="replace")
            return Outcome(action=Action.RETRY, error=ProtocolError(
                f"{_describe_body(status, text)} ({problem}; a chat answer must be JSON)",
                request_id=request_id))
        if not ((type(parsed) is dict or isinstance(parsed, Mapping)) and parsed.get("error")):
            return _success(parsed)
        payload: Mapping[str, Any] = parsed
    else:
        text = body.decode("utf-8", errors="replace")
        parsed_ok, parsed, _ = _parse_json(text)
        if parsed_ok and isinstance(parsed, Mapping):
            payload = parsed
        elif parsed_ok and isinstance(parsed, str) and parsed.strip():
            payload = {"message": parsed}
        else:
            described = (f"HTTP {status} with a JSON body that is not an error object: "
                         f"{_excerpt(text)}" if parsed_ok else _describe_body(status, text))
            retry_after = parse_retry_after(headers, described, wall_now=wall_now)
            return _outcome_for(_build_error(status, None, described, request_id=request_id,
                                             retry_after=retry_after, body=body))
    _, message = _error_fields(payload)
    retry_after = parse_retry_after(headers, message, wall_now=wall_now)
    return _outcome_for(error_from_payload(status, payload, request_id=request_id,
                                           retry_after=retry_after, body=body))


def _redirect_error(status: int, headers: Mapping[str, str], request_id: str | None,
                    body: bytes) -> RedirectError:
    location = _header(headers, "location")
    target = f" to {redact_url(location)}" if location else " without a Location"
    return RedirectError(
        f"HTTP {status} redirect{target}: API calls do not follow redirects (a POST would "
        f"become a GET, or the key would go to another host); set base_url to the address "
        f"that answers", status=status, request_id=request_id, location=location,
        body=body[:KEPT_ERROR_BODY_BYTES])


def classify_error(error: KimiError, *, mid_stream: bool = False) -> Outcome:
    """Decide what an error raised on the way (transport, stream, in-stream API error) means.

    The flags of the error's class decide (errors.py). ``mid_stream`` says the error ended a
    stream that had delivered events: a drop or a stall then says little about the server's
    health and does not count toward the breaker, while an error chunk counts as its type
    does (overload trips it).
    """
    return _outcome_for(error, mid_stream=mid_stream)
