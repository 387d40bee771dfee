"""One exception tree for everything kimi_actors raises.

::

    KimiError
    ├── APIError                      the server answered with an error
    │   ├── BadRequestError           400 invalid_request_error: fix the request
    │   │   └── ContextLengthError    prompt + max_tokens over the model's context
    │   ├── ContentFilterError        400 content_filter
    │   ├── AuthenticationError       401: fatal for the whole run
    │   ├── PermissionDeniedError     403 permission_denied_error
    │   ├── NotFoundError             404 resource_not_found_error
    │   │   └── ModelNotFoundError    "Not found the model X"
    │   ├── RateLimitError            429 rate_limit_reached_error (.dimension says which limit)
    │   ├── EngineOverloadedError     429 engine_overloaded_error
    │   ├── QuotaExhaustedError       exceeded_current_quota_error, suspended: fatal for the run
    │   ├── RedirectError             3xx: API calls do not follow redirects (.location)
    │   └── ServerError               5xx, unexpected_output
    ├── TransportError                no usable HTTP answer
    │   ├── ConnectionFailedError     connect refused, reset, dropped
    │   └── RequestTimeoutError       .phase says what it waited for; one class per phase:
    │       ├── ConnectTimeoutError       TCP and TLS set-up
    │       ├── FirstByteTimeoutError     the response headers
    │       ├── ReadIdleTimeoutError      the next complete stream event, or body read
    │       ├── ResponseTimeoutError      the end of one whole attempt
    │       └── DeadlineExceededError     the caller's own timeout= for the whole call
    ├── StreamError                   the stream itself went wrong
    │   ├── IncompleteStreamError     ended without ``data: [DONE]``
    │   └── ProtocolError             malformed SSE, invalid UTF-8, bad JSON
    ├── CircuitOpenError              the breaker is open longer than the caller may wait
    ├── LimitExceededError            the request alone is larger than a configured limit
    ├── SupervisorClosedError         the supervisor stopped before the request ran
    └── BatchInputError               a batch input file has bad lines (.problems lists them)

Every error carries structured fields rather than only a message. What the runtime does with
an error is data on its class, read by the consumers instead of isinstance chains:

=================  ==========================================================================
flag               meaning
=================  ==========================================================================
``retryable``      sending the same request again may succeed
``fatal_for_run``  every further request of the run would fail the same way
``trips_breaker``  it says the server is unhealthy: it counts toward the circuit breaker
``mid_stream``     it still counts when it ends a stream that was flowing (``trips_breaker``)
``spends_budget``  a retry of it draws on the retry budget (not when the governor paces it)
``counts_attempts`` its retries count toward ``RetryPolicy.max_attempts``
``pushback``       the server pushed back: ``"rate"`` (a rate limit: the governor pauses or
                   learns) or ``"overload"`` (the working concurrency goes down)
``final``          the server refused this very request: a re-run gets the same answer
``counter``        the ``statistics()`` field an attempt that failed this way increments
=================  ==========================================================================

Adding an error type is a class here with its flags, and one line in protocol/classify.py that
says which answers produce it. When retries run out (attempts or retry budget) the last error
itself is raised, with ``attempts`` set and a note saying why.

The API key never survives into an error: messages, notes, error types, bodies and reprs pass
:func:`~kimi_actors.redaction.redact_text` when they are set and again when they are shown, so
a server or proxy that quotes the Authorization header back cannot leak it through an error.
"""

from __future__ import annotations

from typing import Any, ClassVar

from .limits import Dimension
from .policy import TimeoutPhase
from .redaction import redact_bytes, redact_text, redact_url

__all__ = [
    "APIError",
    "AuthenticationError",
    "BadRequestError",
    "BatchInputError",
    "CircuitOpenError",
    "ConnectTimeoutError",
    "ConnectionFailedError",
    "ContentFilterError",
    "ContextLengthError",
    "DeadlineExceededError",
    "EngineOverloadedError",
    "FirstByteTimeoutError",
    "IncompleteStreamError",
    "KimiError",
    "LimitExceededError",
    "ModelNotFoundError",
    "NotFoundError",
    "PermissionDeniedError",
    "ProtocolError",
    "QuotaExhaustedError",
    "RateLimitError",
    "ReadIdleTimeoutError",
    "RedirectError",
    "RequestTimeoutError",
    "ResponseTimeoutError",
    "ServerError",
    "SharedGovernorError",
    "StreamError",
    "SupervisorClosedError",
    "TransportError",
]





class KimiError(Exception):
    """Root of every error kimi_actors raises."""

    #: Every further request of the run would fail the same way.
    fatal_for_run: ClassVar[bool] = False
    #: Sending the same request again may succeed.
    retryable: ClassVar[bool] = False
    #: It says the server is unhealthy: it counts toward the circuit breaker. An instance may
    #: say otherwise (a 408 is a retryable 5xx-like answer that says nothing of health).
    trips_breaker: bool = False
    #: It still counts toward the breaker when it ends a stream that was already flowing.
    mid_stream: ClassVar[bool] = True
    #: A retry of it draws on the retry budget.
    spends_budget: ClassVar[bool] = True
    #: Its retries count toward ``RetryPolicy.max_attempts``.
    counts_attempts: ClassVar[bool] = True
    #: How the server pushed back: "rate" (a rate limit) or "overload"; None: it did not.
    pushback: ClassVar[str | None] = None
    #: The server refused this very request: a re-run gets the same answer.
    final: ClassVar[bool] = False
    #: The ``statistics()`` counter an attempt that failed this way increments.
    counter: ClassVar[str | None] = None

    def __init__(self, message: str, *, request_id: str | None = None) -> None:
        message = redact_text(message)
        super().__init__(message)
        self.message = message
        self.request_id = request_id
        #: How many attempts were made before this error was final (set by the actor).
        self.attempts = 1

    def __str__(self) -> str:
        if self.request_id:
            return redact_text(f"{self.message} (request id {self.request_id})")
        return redact_text(self.message)

    def add_note(self, note: str, /) -> None:
        super().add_note(redact_text(note))

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild, (type(self), self.__dict__.copy()))


def _rebuild(cls: type[KimiError], state: dict[str, Any]) -> KimiError:
    err = cls.__new__(cls)
    Exception.__init__(err, state.get("message", ""))
    err.__dict__.update(state)
    return err


class APIError(KimiError):
    """The server answered with an HTTP or in-body error."""

    final = True

    def __init__(
        self,
        message: str,
        *,
        status: int,
        error_type: str | None = None,
        request_id: str | None = None,
        retry_after: float | None = None,
        body: bytes | None = None,
    ) -> None:
        super().__init__(message, request_id=request_id)
        self.status = status
        self.error_type = None if error_type is None else redact_text(error_type)
        self.retry_after = retry_after
        #: The raw body (capped, credentials masked), for fields the library does not model.
        self.body = None if body is None else redact_bytes(body)

    def __str__(self) -> str:
        kind = f" {self.error_type}" if self.error_type else ""
        return f"HTTP {self.status}{kind}: {super().__str__()}"

    def __repr__(self) -> str:
        return redact_text(
            f"{type(self).__name__}(status={self.status}, error_type={self.error_type!r}, "
            f"message={self.message!r}, request_id={self.request_id!r}, "
            f"retry_after={self.retry_after!r})")


class BadRequestError(APIError):
    pass


class ContextLengthError(BadRequestError):
    pass


class ContentFilterError(APIError):
    pass


class AuthenticationError(APIError):
    fatal_for_run = True
    final = False


class PermissionDeniedError(APIError):
    pass


class NotFoundError(APIError):
    pass


class ModelNotFoundError(NotFoundError):
    pass


class RateLimitError(APIError):
    """A rate limit was hit. Its retry is paced by the governor's pause of the named
    dimension (or, when the message names none, by the rate learned from what the server
    accepted), so it cannot multiply traffic and does not draw on the retry budget."""

    retryable = True
    final = False
    spends_budget = False
    pushback = "rate"
    counter = "rate_limited"

    def __init__(self, message: str, *, dimension: Dimension | None = None,
                 limit: int | None = None, scope: str | None = None, **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        #: Which account limit the server says was hit, when it says so.
        self.dimension = dimension
        #: The limit's value the server names ("max RPM: 20"), when it names one.
        self.limit = limit
        #: Whose limit: "organization" or "project", when the message says.
        self.scope = scope


class EngineOverloadedError(APIError):
    """The server is busy. The runtime lowers its working concurrency and the request waits
    in the admission queue: it fails only at its deadline, or when the breaker has judged the
    service down for ``BreakerPolicy.give_up_after``. It counts toward the breaker only once
    the working concurrency is at its floor (docs/design.md: who decides what)."""

    retryable = True
    final = False
    trips_breaker = True
    spends_budget = False
    counts_attempts = False
    pushback = "overload"
    counter = "overloaded"


class QuotaExhaustedError(APIError):
    fatal_for_run = True
    final = False


class RedirectError(APIError):
    """The server answered with a redirect. It is not followed (except a 307/308 to the same
    origin): a POST would turn into a GET, or the key would go to another host."""

    def __init__(self, message: str, *, location: str | None = None, **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        #: Where the server pointed (credentials masked).
        self.location = None if location is None else redact_url(location)


#: Statuses that say "not now" without a word about the server's health (408, 425).
NOT_NOW_STATUSES = frozenset({408, 425})


class ServerError(APIError):
    """5xx, ``server_error``, ``unexpected_output``; 408 and 425 too, which do not count
    toward the breaker."""

    retryable = True
    final = False
    trips_breaker = True
    counter = "server_errors"

    def __init__(self, message: str, *, status: int, **kwargs: Any) -> None:
        super().__init__(message, status=status, **kwargs)
        if status in NOT_NOW_STATUSES:
            self.trips_breaker = False


class TransportError(KimiError):
    """No usable HTTP answer. Before a response it says the server may be unhealthy; once a
    stream flowed, a drop or a stall says little (a network path, a proxy's idle cut)."""

    retryable = True
    trips_breaker = True
    mid_stream = False
    counter = "transport_errors"


class ConnectionFailedError(TransportError):
    """The connection could not be made, or broke. ``reason`` says how a connection attempt
    failed: ``"refused"``, ``"dns"``, ``"tls"``, ``"timeout"`` or ``"unreachable"``; it is
    ``None`` for a connection that broke after it was made."""

    def __init__(self, message: str, *, reason: str | None = None, host: str | None = None,
                 port: int | None = None, request_id: str | None = None) -> None:
        super().__init__(message, request_id=request_id)
        self.reason = reason
        self.host = host
        self.port = port


class RequestTimeoutError(TransportError):
    """A timeout; ``phase`` says what it waited for, and each phase has its own subclass
    (``except ReadIdleTimeoutError``). ``timeout_error`` builds the right one."""

    def __init__(self, message: str, *, phase: TimeoutPhase | str,
                 timeout: float | None = None, request_id: str | None = None) -> None:
        super().__init__(message, request_id=request_id)
        #: What it was waiting for (compares equal to its string value, "read_idle").
        self.phase = TimeoutPhase(phase)
        self.timeout = timeout


class ConnectTimeoutError(RequestTimeoutError):
    """TCP and TLS set-up took longer than ``Timeouts.connect``."""


class FirstByteTimeoutError(RequestTimeoutError):
    """The response headers did not come within ``first_byte`` (a stream) or
    ``non_stream_first_byte``."""


class ReadIdleTimeoutError(RequestTimeoutError):
    """No complete stream event (or, for a body, no read) for ``read_idle`` seconds."""


class ResponseTimeoutError(RequestTimeoutError):
    """One whole attempt lasted longer than ``Timeouts.response``."""


class DeadlineExceededError(RequestTimeoutError):
    """The call did not finish within the caller's own ``timeout=``, retries included."""


_TIMEOUT_CLASSES: dict[TimeoutPhase, type[RequestTimeoutError]] = {
    TimeoutPhase.CONNECT: ConnectTimeoutError,
    TimeoutPhase.FIRST_BYTE: FirstByteTimeoutError,
    TimeoutPhase.READ_IDLE: ReadIdleTimeoutError,
    TimeoutPhase.RESPONSE: ResponseTimeoutError,
    TimeoutPhase.DEADLINE: DeadlineExceededError,
}


def timeout_error(phase: TimeoutPhase | str, message: str, *, timeout: float | None = None,
                  request_id: str | None = None) -> RequestTimeoutError:
    """The timeout error of ``phase``'s own class."""
    phase = TimeoutPhase(phase)
    return _TIMEOUT_CLASSES[phase](message, phase=phase, timeout=timeout,
                                   request_id=request_id)


class StreamError(KimiError):
    retryable = True


class IncompleteStreamError(StreamError):
    """The stream ended (or stalled) before ``data: [DONE]``."""


class ProtocolError(StreamError):
    """The server sent bytes that are not valid SSE, UTF-8 or JSON."""


class CircuitOpenError(KimiError):
    def __init__(self, message: str, *, retry_in: float) -> None:
        super().__init__(message)
        #: Seconds until the breaker lets a probe through.
        self.retry_in = retry_in


class LimitExceededError(KimiError):
    """The request needs more of a dimension (e.g. TPM tokens) than its limit allows at all,
    so waiting can never admit it."""

    def __init__(self, message: str, *, dimension: Dimension, amount: int, limit: int) -> None:
        super().__init__(message)
        self.dimension = dimension
        self.amount = amount
        self.limit = limit


class SupervisorClosedError(KimiError):
    pass


class SharedGovernorError(KimiError):
    """The shared governor's store refused its script (a bug or a misconfigured server, not
    an outage): the request was not admitted rather than admitted under limits nobody
    shares."""


class BatchInputError(KimiError):
    """A batch input file has lines that cannot be sent; ``problems`` holds
    ``(line_number, reason)`` pairs, in file order."""

    def __init__(self, message: str, *, problems: tuple[tuple[int, str], ...] = ()) -> None:
        super().__init__(message)
        self.problems = problems
