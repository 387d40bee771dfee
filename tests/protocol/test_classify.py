"""classify_response / classify_error / parse_retry_after, row by row against KIMI_API.md."""

from __future__ import annotations

import email.utils
import json
import math
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from multidict import CIMultiDict, CIMultiDictProxy

from kimi_actors.errors import (
    APIError,
    AuthenticationError,
    BadRequestError,
    CircuitOpenError,
    ConnectionFailedError,
    ContentFilterError,
    ContextLengthError,
    EngineOverloadedError,
    IncompleteStreamError,
    KimiError,
    ModelNotFoundError,
    NotFoundError,
    PermissionDeniedError,
    ProtocolError,
    QuotaExhaustedError,
    RateLimitError,
    RedirectError,
    RequestTimeoutError,
    ServerError,
    SupervisorClosedError,
)
from kimi_actors.limits import Dimension
from kimi_actors.protocol.classify import (
    KEPT_ERROR_BODY_BYTES,
    MAX_RETRY_AFTER,
    REQUEST_ID_HEADER,
    Action,
    Outcome,
    classify_error,
    classify_response,
    error_from_payload,
    parse_retry_after,
)

ACCOUNT = "Your account cn0a1b2c3d4e5f<ak-f4s6b5bu2ag111kkhvj1>"


def error_body(error_type: str | None, message: str) -> bytes:
    error: dict[str, Any] = {"message": message}
    if error_type is not None:
        error["type"] = error_type
    return json.dumps({"error": error}).encode()


# (status, type, message, class, action, trips_breaker, dimension, retry_after)
ERROR_TABLE: list[tuple[int, str | None, str, type[APIError], Action, bool,
                        Dimension | None, float | None]] = [
    (400, "content_filter", "The request was rejected because it was considered high risk",
     ContentFilterError, Action.FAIL, False, None, None),
    (400, "invalid_request_error", "Invalid request: Input token length too long",
     ContextLengthError, Action.FAIL, False, None, None),
    (400, "invalid_request_error",
     "Invalid request: Your request exceeded model token limit: 8192",
     ContextLengthError, Action.FAIL, False, None, None),
    (400, "invalid_request_error", "This model's maximum context length is 131072 tokens",
     ContextLengthError, Action.FAIL, False, None, None),
    (400, "invalid_request_error", "Invalid request: temperature must be in [0, 1]",
     BadRequestError, Action.FAIL, False, None, None),
    (400, None, "bad request", BadRequestError, Action.FAIL, False, None, None),
    (401, "invalid_authentication_error", "Invalid Authentication",
     AuthenticationError, Action.FATAL_RUN, False, None, None),
    (401, "incorrect_api_key_error", "Incorrect API key provided",
     AuthenticationError, Action.FATAL_RUN, False, None, None),
    (401, "something_else", "no", AuthenticationError, Action.FATAL_RUN, False, None, None),
    (402, None, "Payment Required", QuotaExhaustedError, Action.FATAL_RUN, False, None, None),
    (403, "permission_denied_error", "The API you are accessing is not open",
     PermissionDeniedError, Action.FAIL, False, None, None),
    (403, "permission_denied_error", "Your account has insufficient balance",
     QuotaExhaustedError, Action.FATAL_RUN, False, None, None),
    (403, "exceeded_current_quota_error", "please recharge",
     QuotaExhaustedError, Action.FATAL_RUN, False, None, None),
    (403, "permission_denied_error", f"{ACCOUNT} is suspended",
     QuotaExhaustedError, Action.FATAL_RUN, False, None, None),
    (403, None, "account in arrears", QuotaExhaustedError, Action.FATAL_RUN, False, None, None),
    (404, "resource_not_found_error", "Not found the model moonshot-v9-8k or Permission denied",
     ModelNotFoundError, Action.FAIL, False, None, None),
    (404, "resource_not_found_error", "Not found the file file-abc",
     NotFoundError, Action.FAIL, False, None, None),
    (408, None, "Request Timeout", ServerError, Action.RETRY, False, None, None),
    (425, None, "Too Early", ServerError, Action.RETRY, False, None, None),
    (429, "rate_limit_reached_error",
     f"{ACCOUNT} request reached organization max concurrency: 1, "
     "please try again after 1 seconds",
     RateLimitError, Action.RETRY, False, Dimension.CONCURRENCY, 1.0),
    (429, "rate_limit_reached_error",
     f"{ACCOUNT} request reached organization max RPM: 3, please try again after 20 seconds",
     RateLimitError, Action.RETRY, False, Dimension.RPM, 20.0),
    (429, "rate_limit_reached_error",
     f"{ACCOUNT} request reached organization TPM rate limit, current:123, limit:100",
     RateLimitError, Action.RETRY, False, Dimension.TPM, None),
    (429, "rate_limit_reached_error",
     f"{ACCOUNT} request reached organization TPD rate limit, current: 1500001, limit: 1500000",
     RateLimitError, Action.RETRY, False, Dimension.TPD, None),
    (429, "rate_limit_reached_error", "you are sending too fast",
     RateLimitError, Action.RETRY, False, None, None),
    (429, None, "Too Many Requests", RateLimitError, Action.RETRY, False, None, None),
    (429, "engine_overloaded_error", "The engine is currently overloaded, please try again later",
     EngineOverloadedError, Action.RETRY, True, None, None),
    (429, None, "server overloaded, retry in 2s",
     EngineOverloadedError, Action.RETRY, True, None, 2.0),
    (429, "exceeded_current_quota_error",
     f"{ACCOUNT} is suspended, please check your plan and billing details",
     QuotaExhaustedError, Action.FATAL_RUN, False, None, None),
    (429, "exceeded_current_quota_error",
     "You exceeded your current token quota: <org-1> 1000, please check your account balance",
     QuotaExhaustedError, Action.FATAL_RUN, False, None, None),
    (429, "rate_limit_reached_error", "insufficient balance",
     QuotaExhaustedError, Action.FATAL_RUN, False, None, None),
    (500, "server_error", "internal error", ServerError, Action.RETRY, True, None, None),
    (500, "unexpected_output", "the model produced invalid output",
     ServerError, Action.RETRY, True, None, None),
    (502, None, "Bad Gateway", ServerError, Action.RETRY, True, None, None),
    (503, None, "Service Unavailable", ServerError, Action.RETRY, True, None, None),
    (504, None, "Gateway Timeout", ServerError, Action.RETRY, True, None, None),
    (599, None, "odd", ServerError, Action.RETRY, True, None, None),
    (409, None, "Conflict", APIError, Action.FAIL, False, None, None),
    (422, "invalid_request_error", "unprocessable", APIError, Action.FAIL, False, None, None),
]


@pytest.mark.parametrize(
    ("status", "error_type", "message", "cls", "action", "trips", "dimension", "retry_after"),
    ERROR_TABLE)
def test_error_table(status: int, error_type: str | None, message: str, cls: type[APIError],
                     action: Action, trips: bool, dimension: Dimension | None,
                     retry_after: float | None) -> None:
    body = error_body(error_type, message)
    outcome = classify_response(status, {REQUEST_ID_HEADER: "req-1"}, body)
    error = outcome.error
    assert type(error) is cls
    assert isinstance(error, APIError)
    assert outcome.action is action
    assert outcome.trips_breaker is trips
    assert outcome.dimension is dimension
    assert outcome.retry_after == retry_after
    assert outcome.body is None
    assert error.status == status
    assert error.error_type == error_type
    assert error.message == message
    assert error.request_id == "req-1"
    assert error.retry_after == retry_after
    assert error.body == body
    if isinstance(error, RateLimitError):
        assert error.dimension is dimension


@pytest.mark.parametrize(
    ("status", "error_type", "message", "cls", "action", "trips", "dimension", "retry_after"),
    ERROR_TABLE)
def test_classify_error_reads_the_table_from_the_error_alone(
        status: int, error_type: str | None, message: str, cls: type[APIError],
        action: Action, trips: bool, dimension: Dimension | None,
        retry_after: float | None) -> None:
    # An error raised on the way (an error chunk, a re-raised error) carries no response: the
    # verdict must come from the error object itself, and match the table.
    error = classify_response(status, {}, error_body(error_type, message)).error
    assert error is not None
    outcome = classify_error(error)
    assert outcome.error is error
    assert (outcome.action, outcome.trips_breaker, outcome.dimension, outcome.retry_after) == (
        action, trips, dimension, retry_after)


def test_success_returns_parsed_body() -> None:
    body = {"id": "chatcmpl-1", "choices": [{"index": 0, "message": {"content": "hi"}}]}
    outcome = classify_response(200, {}, json.dumps(body).encode())
    assert outcome.action is Action.SUCCESS
    assert outcome.body == body
    assert outcome.error is None
    assert not outcome.trips_breaker


@pytest.mark.parametrize("raw", [b'{"choices": [], "error": null}', b'[1, 2]', b'"text"'])
def test_success_for_any_json_without_error(raw: bytes) -> None:
    outcome = classify_response(200, {}, raw)
    assert outcome.action is Action.SUCCESS
    assert outcome.body == json.loads(raw)


@pytest.mark.parametrize(("raw", "says"), [
    (b'{"id": "chatcmpl-1", "choices": [{"index": 0, "mess', "not valid JSON"),
    (b"", "empty body"),
    (b"  \n ", "empty body"),
    (b"<html><body>oops</body></html>", "HTML body"),
    (b"OK", "plain-text body"),
    (b'{"content": "caf\xc3"}', "not valid JSON"),
])
def test_garbled_success_is_retried_without_breaker(raw: bytes, says: str) -> None:
    outcome = classify_response(201, {"x-request-id": "r9"}, raw)
    assert outcome.action is Action.RETRY
    assert type(outcome.error) is ProtocolError
    assert says in outcome.error.message
    assert "HTTP 201" in outcome.error.message
    assert outcome.error.request_id == "r9"
    assert not outcome.trips_breaker


@pytest.mark.parametrize(("payload", "cls", "action", "trips"), [
    ({"error": {"type": "engine_overloaded_error", "message": "overloaded"}},
     EngineOverloadedError, Action.RETRY, True),
    ({"error": {"type": "content_filter", "message": "high risk"}},
     ContentFilterError, Action.FAIL, False),
    ({"error": {"type": "invalid_request_error", "message": "Input token length too long"}},
     ContextLengthError, Action.FAIL, False),
    ({"error": {"type": "invalid_authentication_error", "message": "bad key"}},
     AuthenticationError, Action.FATAL_RUN, False),
    ({"error": {"type": "exceeded_current_quota_error", "message": "suspended"}},
     QuotaExhaustedError, Action.FATAL_RUN, False),
    ({"error": {"type": "resource_not_found_error", "message": "Not found the model m"}},
     ModelNotFoundError, Action.FAIL, False),
    ({"error": {"type": "server_error", "message": "boom"}}, ServerError, Action.RETRY, True),
    ({"error": {"type": "mystery", "message": "something broke"}},
     ServerError, Action.RETRY, True),
    ({"error": "stream interrupted"}, ServerError, Action.RETRY, True),
    ({"error": {"message": "request reached organization max RPM: 3"}},
     RateLimitError, Action.RETRY, False),
    ({"error": {"message": "The engine is currently overloaded"}},
     EngineOverloadedError, Action.RETRY, True),
    ({"error": {"message": "exceeded your current token quota"}},
     QuotaExhaustedError, Action.FATAL_RUN, False),
])
def test_error_object_inside_a_2xx(payload: dict[str, Any], cls: type[APIError],
                                   action: Action, trips: bool) -> None:
    outcome = classify_response(200, {}, json.dumps(payload).encode())
    assert type(outcome.error) is cls
    assert outcome.action is action
    assert outcome.trips_breaker is trips
    assert isinstance(outcome.error, APIError)
    assert outcome.error.status == 200


def test_2xx_rate_limit_names_its_dimension() -> None:
    payload = {"error": {"type": "rate_limit_reached_error",
                         "message": f"{ACCOUNT} request reached organization max RPM: 3, "
                                    "please try again after 20 seconds"}}
    outcome = classify_response(200, {}, json.dumps(payload).encode())
    assert outcome.dimension is Dimension.RPM
    assert outcome.retry_after == 20.0


def test_html_502_from_a_proxy() -> None:
    page = (b"<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>\r\n"
            b"<center><h1>502 Bad Gateway</h1></center>\r\n<hr><center>nginx</center>\r\n"
            b"</body>\r\n</html>\r\n")
    outcome = classify_response(502, {"Content-Type": "text/html"}, page)
    error = outcome.error
    assert type(error) is ServerError
    assert outcome.action is Action.RETRY
    assert outcome.trips_breaker
    assert error.message == "HTTP 502 with an HTML body: 502 Bad Gateway"
    assert error.error_type is None
    assert error.body == page


def test_html_without_title_shows_text_not_tags_or_scripts() -> None:
    page = (b"<!DOCTYPE html><html><head><script>var secret = 1;</script>"
            b"<style>p {}</style></head><body><p>Service   temporarily\n down</p></body></html>")
    error = classify_response(503, {}, page).error
    assert error is not None
    assert error.message == "HTTP 503 with an HTML body: Service temporarily down"


@pytest.mark.parametrize(("status", "raw", "cls", "expected"), [
    (503, b"upstream connect error or disconnect/reset before headers", ServerError,
     "HTTP 503 with a plain-text body: upstream connect error or disconnect/reset before "
     "headers"),
    (504, b"", ServerError, "HTTP 504 with an empty body"),
    (500, b'{"error": {"type": "server_er', ServerError,
     'HTTP 500 with a body that is not valid JSON: {"error": {"type": "server_er'),
    (400, b"[1, 2]", BadRequestError,
     "HTTP 400 with a JSON body that is not an error object: [1, 2]"),
    (429, b"Too Many Requests", RateLimitError,
     "HTTP 429 with a plain-text body: Too Many Requests"),
    (401, b"Unauthorized", AuthenticationError, "HTTP 401 with a plain-text body: Unauthorized"),
])
def test_bodies_that_are_not_error_objects(status: int, raw: bytes, cls: type[APIError],
                                           expected: str) -> None:
    error = classify_response(status, {}, raw).error
    assert type(error) is cls
    assert error.message == expected
    assert error.status == status
    assert error.body == raw


def test_invalid_utf8_error_body_is_replaced_in_the_message_and_kept_raw() -> None:
    raw = b'{"error": {"type": "server_error", "message": "bad \xff byte"}}'
    error = classify_response(500, {}, raw).error
    assert type(error) is ServerError
    assert error.message == "bad \ufffd byte"
    assert error.body == raw


def test_invalid_utf8_plain_body() -> None:
    error = classify_response(502, {}, b"\xff\xfe\xfa broken").error
    assert error is not None
    assert error.message.startswith("HTTP 502 with a plain-text body: ")
    assert "broken" in error.message


def test_huge_body_is_capped_and_message_is_short() -> None:
    raw = b"<html><body>" + b"x" * (1 << 20) + b"</body></html>"
    error = classify_response(502, {}, raw).error
    assert isinstance(error, APIError)
    assert error.body == raw[:KEPT_ERROR_BODY_BYTES]
    assert len(error.message) < 300


def test_huge_server_message_is_capped() -> None:
    error = classify_response(400, {}, error_body("invalid_request_error", "y" * 10_000)).error
    assert error is not None
    assert 1000 < len(error.message) < 2100
    assert error.message.endswith("...")


@pytest.mark.parametrize(("payload", "error_type", "message"), [
    ({"error": "plain error text"}, None, "plain error text"),
    ({"message": "top-level message", "type": "invalid_request_error"},
     "invalid_request_error", "top-level message"),
    ({"code": "invalid_request_error", "msg": "code and msg"},
     "invalid_request_error", "code and msg"),
    ({"code": 5, "msg": "numeric code"}, None, "numeric code"),
    ({"detail": "fastapi style"}, None, "fastapi style"),
    ({"error": {"code": "invalid_request_error", "msg": "nested msg"}},
     "invalid_request_error", "nested msg"),
    ({"error": {"type": "invalid_request_error", "message": ["a", "b"]}},
     "invalid_request_error", '["a", "b"]'),
])
def test_error_shapes(payload: dict[str, Any], error_type: str | None, message: str) -> None:
    error = classify_response(400, {}, json.dumps(payload).encode()).error
    assert isinstance(error, BadRequestError)
    assert error.error_type == error_type
    assert error.message == message


def test_json_string_body_is_the_message() -> None:
    error = classify_response(503, {}, b'"upstream unavailable"').error
    assert type(error) is ServerError
    assert error.message == "upstream unavailable"


@pytest.mark.parametrize(("payload", "fragment"), [
    ({}, "HTTP 500 error with no message: {}"),
    ({"error": {"type": "server_error"}}, "HTTP 500 server_error error with no message"),
])
def test_error_without_message_gets_a_synthesized_one(payload: dict[str, Any],
                                                      fragment: str) -> None:
    error = classify_response(500, {}, json.dumps(payload).encode()).error
    assert type(error) is ServerError
    assert fragment in error.message


@pytest.mark.parametrize("name", ["Msh-Request-Id", "msh-request-id", "MSH-REQUEST-ID",
                                  "x-request-id", "X-Request-Id"])
def test_request_id_header_any_case(name: str) -> None:
    outcome = classify_response(500, {name: "abc123"}, b"")
    assert outcome.error is not None
    assert outcome.error.request_id == "abc123"


def test_msh_request_id_preferred_over_x_request_id() -> None:
    headers = {"X-Request-Id": "generic", "msh-request-id": "kimi"}
    assert classify_response(500, headers, b"").error.request_id == "kimi"  # type: ignore[union-attr]


def test_multidict_headers() -> None:
    headers = CIMultiDictProxy(CIMultiDict({"MSH-Request-ID": "m1", "RETRY-AFTER": "4"}))
    outcome = classify_response(429, headers, error_body("rate_limit_reached_error", "slow"))
    assert outcome.error is not None
    assert outcome.error.request_id == "m1"
    assert outcome.retry_after == 4.0


def test_no_request_id() -> None:
    assert classify_response(500, {"Content-Type": "x"}, b"").error.request_id is None  # type: ignore[union-attr]


WALL_NOW = 1_700_000_000.0


@pytest.mark.parametrize(("headers", "message", "expected"), [
    ({"retry-after-ms": "1500"}, None, 1.5),
    ({"Retry-After-Ms": "1500", "Retry-After": "9"}, "try again after 3 seconds", 1.5),
    ({"Retry-After": "9"}, "try again after 3 seconds", 9.0),
    ({"retry-after": "2.5"}, None, 2.5),
    ({"RETRY-AFTER": " 7 "}, None, 7.0),
    ({"Retry-After": "-5"}, None, 0.0),
    ({"retry-after-ms": "-5"}, None, 0.0),
    ({"Retry-After": "99999"}, None, MAX_RETRY_AFTER),
    ({"Retry-After": "inf"}, None, MAX_RETRY_AFTER),
    ({"Retry-After": "nan"}, "try again after 3 seconds", 3.0),
    ({"Retry-After": "soon"}, "try again after 3 seconds", 3.0),
    ({"retry-after-ms": "x", "Retry-After": "4"}, None, 4.0),
    ({}, "please try again after 1 seconds", 1.0),
    ({}, "Retry after 20 second", 20.0),
    ({}, "retry after 1 second.", 1.0),
    ({}, "Please retry in 5s", 5.0),
    ({}, "please try again in 1.5 seconds", 1.5),
    ({}, "TRY AGAIN AFTER 3 SECONDS", 3.0),
    ({}, "try again in 250ms", 0.25),
    ({}, "try again in 250 milliseconds", 0.25),
    ({}, "try again in 2 minutes", 120.0),
    ({}, "Please try again in 1m30s", 90.0),
    ({}, "try again in 1 hour", 3600.0),
    ({}, "retry after 100000 seconds", MAX_RETRY_AFTER),
    ({}, "try again after 12", 12.0),
    ({}, "The engine is currently overloaded, please try again later", None),
    ({}, "", None),
    ({}, None, None),
    ({"Content-Type": "application/json"}, None, None),
])
def test_parse_retry_after(headers: dict[str, str], message: str | None,
                           expected: float | None) -> None:
    assert parse_retry_after(headers, message, wall_now=WALL_NOW) == expected


def test_retry_after_http_date_needs_wall_now() -> None:
    date = email.utils.formatdate(WALL_NOW + 30, usegmt=True)
    assert parse_retry_after({"Retry-After": date}, wall_now=WALL_NOW) == pytest.approx(30.0)
    assert parse_retry_after({"Retry-After": date}) is None
    assert parse_retry_after({"Retry-After": date}, "retry after 5 seconds") == 5.0


def test_retry_after_http_date_in_the_past_is_zero() -> None:
    date = email.utils.formatdate(WALL_NOW - 100, usegmt=True)
    assert parse_retry_after({"Retry-After": date}, wall_now=WALL_NOW) == 0.0


def test_retry_after_date_without_zone_is_utc() -> None:
    date = email.utils.formatdate(WALL_NOW + 60, usegmt=True).replace(" GMT", "")
    assert parse_retry_after({"Retry-After": date}, wall_now=WALL_NOW) == pytest.approx(60.0)


def test_unparseable_date_falls_back_to_message() -> None:
    headers = {"Retry-After": "Wed, 99 Foo 2024 99:99:99 GMT"}
    assert parse_retry_after(headers, "try again after 2 seconds", wall_now=WALL_NOW) == 2.0
    assert parse_retry_after(headers, wall_now=WALL_NOW) is None


def test_response_header_beats_message() -> None:
    body = error_body("rate_limit_reached_error",
                      f"{ACCOUNT} request reached organization max RPM: 3, "
                      "please try again after 20 seconds")
    outcome = classify_response(429, {"Retry-After": "45"}, body)
    assert outcome.retry_after == 45.0
    assert isinstance(outcome.error, RateLimitError)
    assert outcome.error.retry_after == 45.0


def test_response_retry_after_date() -> None:
    date = email.utils.formatdate(WALL_NOW + 12, usegmt=True)
    body = error_body("rate_limit_reached_error", "TPD rate limit, current: 2, limit: 1")
    outcome = classify_response(429, {"retry-after": date}, body, wall_now=WALL_NOW)
    assert outcome.retry_after == pytest.approx(12.0)
    assert outcome.dimension is Dimension.TPD
    assert classify_response(429, {"retry-after": date}, body).retry_after is None


def test_retry_after_on_non_json_answer() -> None:
    outcome = classify_response(503, {"Retry-After": "30"}, b"Service Unavailable")
    assert outcome.retry_after == 30.0
    assert outcome.action is Action.RETRY


def test_retry_after_header_on_error_without_message() -> None:
    outcome = classify_response(503, {"Retry-After": "8"}, b"{}")
    assert outcome.retry_after == 8.0


def test_dimension_ignores_the_bracketed_key_id() -> None:
    message = ("Your account u1<ak-rpm-tpd> request reached organization TPM rate limit, "
               "current:1, limit:0")
    outcome = classify_response(429, {}, error_body("rate_limit_reached_error", message))
    assert outcome.dimension is Dimension.TPM


@pytest.mark.parametrize(("message", "dimension"), [
    ("too many requests per minute", Dimension.RPM),
    ("tokens per day exhausted", Dimension.TPD),
    ("Tokens Per Minute exceeded", Dimension.TPM),
    ("max concurrent requests", Dimension.CONCURRENCY),
])
def test_dimension_phrases(message: str, dimension: Dimension) -> None:
    outcome = classify_response(429, {}, error_body("rate_limit_reached_error", message))
    assert outcome.dimension is dimension


@pytest.mark.parametrize(("error", "action", "trips"), [
    (ConnectionFailedError("connection reset by peer"), Action.RETRY, True),
    (RequestTimeoutError("no byte for 60 s", phase="read_idle", timeout=60.0),
     Action.RETRY, True),
    (IncompleteStreamError("ended before [DONE]"), Action.RETRY, False),
    (ProtocolError("bad JSON"), Action.RETRY, False),
    (CircuitOpenError("open", retry_in=3.0), Action.FAIL, False),
    (SupervisorClosedError("closed"), Action.FAIL, False),
    (KimiError("anything"), Action.FAIL, False),
    (RateLimitError("slow", status=429, dimension=Dimension.TPM, retry_after=2.0),
     Action.RETRY, False),
    (ServerError("timeout", status=408), Action.RETRY, False),
    (ServerError("bad gateway", status=502), Action.RETRY, True),
    (EngineOverloadedError("busy", status=429), Action.RETRY, True),
    (QuotaExhaustedError("suspended", status=429), Action.FATAL_RUN, False),
    (AuthenticationError("bad key", status=401), Action.FATAL_RUN, False),
    (BadRequestError("bad", status=400), Action.FAIL, False),
    (APIError("teapot", status=418), Action.FAIL, False),
])
def test_classify_error(error: KimiError, action: Action, trips: bool) -> None:
    outcome = classify_error(error)
    assert outcome.action is action
    assert outcome.trips_breaker is trips
    assert outcome.error is error


def test_classify_error_carries_dimension_and_wait() -> None:
    outcome = classify_error(RateLimitError("slow", status=429, dimension=Dimension.TPM,
                                            retry_after=2.0))
    assert outcome.dimension is Dimension.TPM
    assert outcome.retry_after == 2.0


def test_classify_error_fatal_flag_of_an_unknown_error() -> None:
    class RunKiller(KimiError):
        fatal_for_run = True

    assert classify_error(RunKiller("stop")).action is Action.FATAL_RUN


def test_classify_error_retryable_api_subclass() -> None:
    class Flaky(APIError):
        retryable = True

    outcome = classify_error(Flaky("again", status=418))
    assert outcome.action is Action.RETRY
    assert not outcome.trips_breaker


def test_error_from_payload_reads_wait_from_message() -> None:
    payload = {"error": {"type": "rate_limit_reached_error",
                         "message": "max concurrency: 1, please try again after 3 seconds"}}
    error = error_from_payload(200, payload, request_id="s1")
    assert type(error) is RateLimitError
    assert error.retry_after == 3.0
    assert error.dimension is Dimension.CONCURRENCY
    assert error.request_id == "s1"
    assert error.status == 200


def test_error_from_payload_explicit_wait_and_body_cap() -> None:
    payload = {"error": {"type": "server_error", "message": "try again after 3 seconds"}}
    body = b"z" * (KEPT_ERROR_BODY_BYTES + 10)
    error = error_from_payload(500, payload, retry_after=9.0, body=body)
    assert error.retry_after == 9.0
    assert error.body == body[:KEPT_ERROR_BODY_BYTES]


@pytest.mark.parametrize("kwargs", [
    {"action": Action.SUCCESS, "error": ServerError("x", status=500)},
    {"action": Action.RETRY},
    {"action": Action.RETRY, "error": ProtocolError("x"), "retry_after": -1.0},
    {"action": Action.RETRY, "error": ProtocolError("x"), "retry_after": math.inf},
    {"action": "retry", "error": ProtocolError("x")},
])
def test_outcome_validation(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="Outcome"):
        Outcome(**kwargs)


def test_action_values() -> None:
    assert [a.value for a in Action] == ["success", "retry", "fail", "fatal_run"]


@given(status=st.integers(min_value=100, max_value=599), body=st.binary(max_size=300),
       retry_after=st.one_of(st.none(), st.text(max_size=30)))
def test_never_raises_on_arbitrary_answers(status: int, body: bytes,
                                           retry_after: str | None) -> None:
    headers = {} if retry_after is None else {"Retry-After": retry_after}
    outcome = classify_response(status, headers, body, wall_now=WALL_NOW)
    if outcome.action is Action.SUCCESS:
        assert 200 <= status < 300
        assert outcome.error is None
    else:
        assert isinstance(outcome.error, KimiError)
        if not 200 <= status < 300:
            assert isinstance(outcome.error, APIError)
            assert outcome.error.status == status
    if outcome.retry_after is not None:
        assert 0.0 <= outcome.retry_after <= MAX_RETRY_AFTER


@given(status=st.integers(min_value=200, max_value=599),
       error=st.one_of(
           st.text(max_size=40),
           st.dictionaries(st.sampled_from(["type", "message", "code", "msg"]),
                           st.one_of(st.text(max_size=40), st.integers(), st.none()))))
def test_never_raises_on_arbitrary_error_objects(status: int, error: Any) -> None:
    outcome = classify_response(status, {}, json.dumps({"error": error}).encode())
    if error:
        assert isinstance(outcome.error, APIError)
        assert outcome.error.status == status
        assert outcome.error.message


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
def test_a_redirect_fails_naming_its_status_and_location(status: int) -> None:
    headers = {"Location": "https://elsewhere.example/v1/chat?api_key=sk-secret-in-location"}
    outcome = classify_response(status, headers, b"<html>moved</html>")
    error = outcome.error
    assert isinstance(error, RedirectError)
    assert outcome.action is Action.FAIL
    assert not outcome.trips_breaker
    assert error.status == status
    assert error.location == "https://elsewhere.example/v1/chat?api_key=[redacted]"
    assert f"HTTP {status} redirect to https://elsewhere.example/v1/chat" in str(error)
    assert "sk-secret-in-location" not in str(error) + repr(error)


def test_a_redirect_without_a_location_says_so() -> None:
    outcome = classify_response(302, {}, b"")
    assert isinstance(outcome.error, RedirectError)
    assert outcome.error.location is None
    assert "without a Location" in outcome.error.message


@pytest.mark.parametrize(("error", "before", "after"), [
    (ConnectionFailedError("reset"), True, False),
    (RequestTimeoutError("stall", phase="read_idle"), True, False),
    (EngineOverloadedError("overloaded", status=429), True, True),
    (ServerError("boom", status=500), True, True),
    (ServerError("later", status=408), False, False),
    (IncompleteStreamError("no [DONE]"), False, False),
    (RateLimitError("max RPM: 3", status=429), False, False),
])
def test_the_breaker_flag_before_and_after_a_stream_flowed(
        error: KimiError, before: bool, after: bool) -> None:
    assert classify_error(error).trips_breaker is before
    assert classify_error(error, mid_stream=True).trips_breaker is after


def test_rate_limit_messages_give_the_governor_numbers_and_a_scope() -> None:
    message = ("Your account org-x<ak-y> request reached project TPM rate limit, "
               "current: 1410, limit: 100")
    outcome = classify_response(429, {}, error_body("rate_limit_reached_error", message))
    error = outcome.error
    assert isinstance(error, RateLimitError)
    assert outcome.dimension is Dimension.TPM
    assert outcome.limit == error.limit == 100
    assert error.scope == "project"
    vague = classify_response(429, {}, error_body(
        "rate_limit_reached_error", "We're receiving too many requests at the moment."))
    assert isinstance(vague.error, RateLimitError)
    assert (vague.dimension, vague.limit, vague.error.scope) == (None, None, None)
