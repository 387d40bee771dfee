"""The HTTP edge: one aiohttp session, its timeouts, and the one place aiohttp errors become ours.

Nothing here decides what an answer means (protocol/classify.py does); this module only moves
bytes and turns every aiohttp or socket failure into ``ConnectionFailedError``,
``RequestTimeoutError`` or ``ProtocolError``. aiohttp exceptions that carry the request's
headers (and so the key), or whose text holds a credential, are never chained.

Redirects are not followed: an API call answered with a redirect fails with the status and the
location (classify.py), because following one turns a POST into a GET (301/302/303) or sends
the key to another host. The one exception is a 307/308 to the same origin, which keeps the
method, the body and the host the key was meant for.
"""

from __future__ import annotations

import asyncio
import contextvars
import ipaddress
import sys
import types
from collections.abc import (
    AsyncGenerator,
    Awaitable,
    Callable,
    Coroutine,
    Mapping,
)
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import aiohttp
import orjson
from yarl import URL

from .clock import EMPTY_CONTEXT
from .errors import ConnectionFailedError, KimiError, ProtocolError, timeout_error
from .policy import Timeouts
from .protocol.results import slot_builder
from .redaction import redact_text, redact_url

if TYPE_CHECKING:
    from aiohttp.connector import Connection
    from aiohttp.tracing import Trace

__all__ = [
    "ERROR_PAGE_READ_BYTES",
    "MAX_BODY_BYTES",
    "MAX_SAME_ORIGIN_REDIRECTS",
    "ChunkReader",
    "NowaitReader",
    "RawResponse",
    "StreamLike",
    "StreamResponse",
    "Transport",
    "TransportProtocol",
    "cleartext_host",
    "json_body",
]

MAX_BODY_BYTES = 64 << 20
#: aiohttp pauses reading a socket once twice this much is buffered and unread. Its default
#: (256 KiB) let a stream whose consumer stopped reading hold about 0.8 MB in aiohttp alone.
READ_BUFFER_BYTES = 64 << 10
#: An error page is read up to this many bytes before it is classified (classify.py keeps
#: ``KEPT_ERROR_BODY_BYTES`` of it on the error).
ERROR_PAGE_READ_BYTES = 1 << 20
#: Same-origin 307/308 redirects followed for one request before the answer is taken as is.
MAX_SAME_ORIGIN_REDIRECTS = 3
_KEEP_METHOD_REDIRECTS = frozenset({307, 308})
_URL_CACHE_SIZE = 256


def cleartext_host(base_url: str) -> str | None:
    """The host a ``base_url`` would send the key to in clear text (plain ``http://`` to a
    host that is not loopback), or ``None`` when the key stays safe."""
    url = URL(base_url)
    if url.scheme != "http":
        return None
    host = url.host or ""
    if host == "localhost" or host.endswith(".localhost"):
        return None
    try:
        if ipaddress.ip_address(host).is_loopback:
            return None
    except ValueError:
        pass
    return host


@dataclass(frozen=True, slots=True, kw_only=True)
class RawResponse:
    status: int
    headers: Mapping[str, str]
    body: bytes
    content_type: str


def _safe_cause(exc: BaseException) -> bool:
    """Whether ``exc`` may be chained: its text and its own chain carry no credential."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, aiohttp.ClientResponseError):  # holds the request's headers
            return False
        for text in (str(seen), repr(seen)):
            if redact_text(text) != text:
                return False
        seen = seen.__cause__ or seen.__context__
    return True


def _map_error(exc: BaseException, *, phase: str, timeouts: Timeouts,
               limit: float | None = None) -> KimiError:
    """Turn an aiohttp/socket failure into our error. ``phase`` says what we were waiting
    for and ``limit`` its bound (default: the timeout of that name); a connect timeout is
    recognised by its type whatever the phase. Callers raise the result outside their
    ``except`` block, so the failure is its ``__cause__`` only when that is safe and never a
    hidden ``__context__``."""
    if isinstance(exc, asyncio.TimeoutError | TimeoutError):
        if isinstance(exc, aiohttp.ConnectionTimeoutError):
            phase, limit = "connect", timeouts.connect
        if limit is None:
            limit = {"connect": timeouts.connect, "first_byte": timeouts.first_byte,
                     "read_idle": timeouts.read_idle, "response": timeouts.response}.get(phase)
        err: KimiError = timeout_error(
            phase, f"timed out waiting for the {phase.replace('_', ' ')} after {limit} s",
            timeout=limit)
        if phase == "connect" and isinstance(exc, aiohttp.ConnectionTimeoutError):
            err.add_note("kimi_actors: no answer to the connection attempt: check the "
                         "network, a firewall or proxy, and the host in base_url")
    elif isinstance(exc, aiohttp.ClientConnectorError):
        reason = _connect_reason(exc)
        err = ConnectionFailedError(
            f"cannot connect to {exc.host}:{exc.port} ({reason}): {exc.os_error}",
            reason=reason, host=exc.host, port=exc.port)
    elif isinstance(exc, aiohttp.ClientPayloadError):
        err = ConnectionFailedError(f"the connection broke during the {phase.replace('_', ' ')}:"
                                    f" {type(exc).__name__}")
    elif isinstance(exc, aiohttp.ClientResponseError):
        err = ProtocolError(f"the server's HTTP response is malformed: {exc.message}")
    elif isinstance(exc, aiohttp.ClientError | OSError):
        err = ConnectionFailedError(f"connection failed during the {phase.replace('_', ' ')}: "
                                    f"{type(exc).__name__}: {exc}")
    else:  # pragma: no cover - callers only pass the types above
        raise TypeError(f"not a transport failure: {exc!r}")
    if _safe_cause(exc):
        err.__cause__ = exc
    err.__suppress_context__ = True
    return err


_TRANSPORT_ERRORS = (aiohttp.ClientError, OSError, asyncio.TimeoutError, TimeoutError)


def _connect_reason(exc: aiohttp.ClientConnectorError) -> str:
    if isinstance(exc, aiohttp.ClientConnectorDNSError):
        return "dns"
    if isinstance(exc, aiohttp.ClientConnectorCertificateError | aiohttp.ClientSSLError):
        return "tls"
    if isinstance(exc.os_error, ConnectionRefusedError):
        return "refused"
    if isinstance(exc.os_error, TimeoutError):
        return "timeout"
    return "unreachable"


async def _read_body(content: aiohttp.StreamReader, limit: int, *, truncate: bool,
                     deadline: _Deadline | None = None, first: bytes = b"") -> bytes:
    """The whole body (after ``first``, its start already read). Past ``limit`` bytes: the
    first ``limit`` when ``truncate`` (an error page), else ProtocolError.
    (``StreamReader.read(n)`` returns only what is buffered, so a body arriving in pieces
    would be cut short.) ``deadline`` is re-armed before each read that has to wait, not for
    bytes already buffered."""
    parts: list[bytes] = [first] if first else []
    size = len(first)
    if size > limit:
        if truncate:
            return first[:limit]
        raise ProtocolError(f"the response body is larger than {limit} bytes")
    while True:
        data = content.read_nowait()
        if not data:
            if content.at_eof():
                return b"".join(parts)
            if deadline is not None:
                deadline.reading()
            data = await content.readany()
            if not data:
                return b"".join(parts)
        parts.append(data)
        size += len(data)
        if size > limit:
            if truncate:
                return b"".join(parts)[:limit]
            raise ProtocolError(f"the response body is larger than {limit} bytes")


class _Deadline:
    """One timer for one exchange, moved from phase to phase: the connection and the response
    headers (``connect + first_byte``, re-armed to ``first_byte`` once the connection is
    ready), then each body read that waits (``read_idle``), never past ``total`` from the
    start. One timer per exchange replaces aiohttp's total timer, its socket-read timer
    re-armed on every read, and a scope of ours, which together cost about 40 µs a request.

    It interrupts the task as ``asyncio.timeout`` does (cancel, then :meth:`stop` takes the
    cancellation back), without that scope's two coroutines. The timer moves lazily: it
    first fires ``first_byte`` after the start, the earliest any phase can end, and each
    firing re-arms for the current phase's end until that has passed, so that moving the
    bound later (the request sent, the common case) costs no new timer.
    """

    __slots__ = ("_at", "_cancelling", "_end", "_first_byte", "_handle", "_loop", "_on_sent",
                 "_task", "_timeouts", "_total", "_when", "expired", "headers", "limit",
                 "phase")

    def __init__(self, timeouts: Timeouts, *, first_byte: float, total: float | None,
                 on_sent: Callable[[], None] | None) -> None:
        self._loop = loop = asyncio.get_running_loop()
        self._timeouts = timeouts
        self._first_byte = first_byte
        self._total = total
        start = loop.time()
        self._end = None if total is None else start + total
        self._on_sent = on_sent
        #: Whether the response headers came (errors after them are the response's).
        self.headers = False
        #: Whether the timer fired and interrupted the task.
        self.expired = False
        self.phase, self.limit, self._when = self._bound("first_byte",
                                                         timeouts.connect + first_byte)
        self._at = min(self._when, start + first_byte)
        self._task: asyncio.Task[Any] | None = None
        self._cancelling = 0
        self._handle: asyncio.TimerHandle | None = None

    def start(self) -> None:
        """Start timing the running task (call :meth:`stop` in a ``finally``)."""
        task = self._task = current_task_of(self._loop)
        if task is None:
            raise RuntimeError("a transport exchange must run inside a task")
        self._cancelling = task.cancelling()
        self._set_timer(self._at)

    def stop(self) -> bool:
        """Stop the timer; whether it interrupted the task, its cancellation taken back (a
        cancellation by anybody else stays). Idempotent.

        It lets go of the task and of ``on_sent``: the connection made during the exchange
        keeps a copy of the context that held this deadline (its socket's reader callback
        runs in it), for as long as the connection lives in the pool."""
        handle = self._handle
        if handle is not None:
            self._handle = None
            handle.cancel()
        task, self._task = self._task, None
        self._on_sent = None
        if not self.expired or task is None:
            return False
        return task.uncancel() <= self._cancelling

    def _fire(self) -> None:
        if self._task is None or self.expired:
            return
        now = self._loop.time()
        if now < self._when:
            self._set_timer(self._when)
            return
        self._handle = None
        self.expired = True
        self._task.cancel()

    def _bound(self, phase: str, seconds: float) -> tuple[str, float, float]:
        when = self._loop.time() + seconds
        end = self._end
        if end is not None and when >= end:
            assert self._total is not None
            return "response", self._total, end
        return phase, seconds, when

    def _arm(self, phase: str, seconds: float) -> None:
        if self.expired:
            return
        self.phase, self.limit, when = self._bound(phase, seconds)
        self._when = when
        if when < self._at and self._handle is not None:
            self._handle.cancel()
            self._set_timer(when)

    def _set_timer(self, when: float) -> None:
        self._at = when
        self._handle = self._loop.call_at(when, self._fire, context=EMPTY_CONTEXT)

    def sent(self) -> None:
        """The connection is ready and the request goes out now: the headers' wait starts,
        and the rate units count from here (``on_sent``)."""
        self._arm("first_byte", self._first_byte)
        if self._on_sent is not None:
            self._on_sent()

    def reading(self) -> None:
        """A body read is about to wait for bytes."""
        self._arm("read_idle", self._timeouts.read_idle)

    def timed_out(self) -> KimiError:
        """The timeout error of the phase the timer ended."""
        return _map_error(TimeoutError(), phase=self.phase, timeouts=self._timeouts,
                          limit=self.limit)

    def error(self, exc: BaseException) -> KimiError:
        return _map_error(exc, phase="response" if self.headers else "first_byte",
                          timeouts=self._timeouts)


def _task_lookup() -> Callable[[asyncio.AbstractEventLoop], asyncio.Task[Any] | None]:
    """``asyncio.current_task(loop)``, as a C call: before 3.12 it is Python code, a frame on
    every exchange and every stream read; its table can be read directly."""
    if sys.version_info < (3, 12) and type(asyncio.current_task) is types.FunctionType:
        tasks = getattr(asyncio.tasks, "_current_tasks", None)
        if isinstance(tasks, dict):
            return tasks.get
    return asyncio.current_task


#: The task running on a loop (shared with the stream reader).
current_task_of = _task_lookup()


#: The deadline of the exchange this task is sending, for the connector to tell when its
#: connection is ready.
_SENDING: contextvars.ContextVar[_Deadline | None] = contextvars.ContextVar(
    "kimi_actors_sending", default=None)


class _Connector(aiohttp.TCPConnector):
    """A TCPConnector that tells the exchange being sent when its connection is ready, the
    moment before aiohttp writes the request. (aiohttp's ``on_request_headers_sent`` trace
    says the same a loop turn later, but a trace config costs every request a dozen
    coroutines.)"""

    async def connect(self, req: aiohttp.ClientRequest, traces: list[Trace],
                      timeout: aiohttp.ClientTimeout) -> Connection:
        connection = await super().connect(req, traces, timeout)
        deadline = _SENDING.get()
        if deadline is not None:
            deadline.sent()
        return connection


class StreamResponse:
    """An open streaming response. Iterate ``chunks()`` for the body bytes as they come."""

    __slots__ = ("_response", "_timeouts", "content_type", "headers", "status")

    def __init__(self, response: aiohttp.ClientResponse, timeouts: Timeouts) -> None:
        self._response = response
        self._timeouts = timeouts
        self.status = response.status
        self.headers: Mapping[str, str] = response.headers
        # The body's gaps are bounded by its reader's watchdog: the session sets no socket
        # read timer, which would be re-armed on every read.
        self.content_type = response.content_type

    async def read_chunk(self) -> bytes:
        """The next body bytes as they arrive, ``b""`` at the end. Cancelling it loses
        nothing: the bytes stay buffered for the next call."""
        try:
            return await self._response.content.readany()
        except _TRANSPORT_ERRORS as exc:
            failure = self.read_failure(exc)
        raise failure

    def read_nowait(self) -> bytes | None:
        """The body bytes already received, without waiting: ``b""`` at the end, ``None`` when
        a read would wait for the network; a failure already known is raised as ours."""
        content = self._response.content
        try:
            data = content.read_nowait()
        except _TRANSPORT_ERRORS as exc:
            failure = self.read_failure(exc)
        else:
            return data if data or content.at_eof() else None
        raise failure

    def direct_read(self) -> tuple[Callable[[], Awaitable[bytes]], tuple[type[Exception], ...]]:
        """:meth:`read_chunk` taken apart, for a reader that calls it for every delta: the
        read itself (a coroutine less per read) and the errors it raises, which
        :meth:`read_failure` maps as ``read_chunk`` does."""
        return self._response.content.readany, _TRANSPORT_ERRORS

    def read_failure(self, exc: BaseException) -> KimiError:
        return _map_error(exc, phase="read_idle", timeouts=self._timeouts)

    async def chunks(self) -> AsyncGenerator[bytes, None]:
        """Body bytes as they arrive (:meth:`read_chunk` until the end)."""
        while data := await self.read_chunk():
            yield data

    async def read(self, limit: int = ERROR_PAGE_READ_BYTES) -> bytes:
        """Read (up to ``limit`` bytes of) the rest of the body, e.g. an error page; each read
        may wait ``read_idle``."""
        try:
            _set_read_timeout(self._response, self._timeouts.read_idle)
            return await _read_body(self._response.content, limit, truncate=True)
        except _TRANSPORT_ERRORS as exc:
            failure = _map_error(exc, phase="read_idle", timeouts=self._timeouts)
        raise failure


class StreamLike(Protocol):
    """An open streaming response, as the stream actor reads it."""

    status: int
    headers: Mapping[str, str]
    content_type: str

    def chunks(self) -> AsyncGenerator[bytes, None]:
        """Body bytes as they arrive; transport failures as our errors."""
        ...

    async def read(self, limit: int = ...) -> bytes:
        """The rest of the body (an error page), up to ``limit`` bytes."""
        ...


@runtime_checkable
class ChunkReader(Protocol):
    """What a stream may offer besides :class:`StreamLike`: one read at a time, safe to
    cancel. A consumer cancelled inside a read (a timeout around ``anext(stream)``) then
    loses nothing and the stream goes on; through ``chunks()`` alone that read breaks the
    attempt, which the actor then resumes. Both of this package's transports offer it."""

    async def read_chunk(self) -> bytes:
        """The next body bytes, ``b""`` at the end; transport failures as our errors."""
        ...


@runtime_checkable
class NowaitReader(Protocol):
    """What a stream may offer besides :class:`ChunkReader`: a read that never waits. The
    actor then reads only what has arrived, and leaves the wait for the next bytes to a
    consumer waiting for a delta, which reads them in its own task (no hand-off between
    two tasks). Both of this package's transports offer it."""

    def read_nowait(self) -> bytes | None:
        """The bytes already received, ``b""`` at the end, ``None`` when a read would wait;
        transport failures as our errors."""
        ...


@runtime_checkable
class TransportProtocol(Protocol):
    """What the actors need of a transport: the seam ``Supervisor(transport=...)`` takes, with
    :class:`Transport` (aiohttp) as the real one and ``kimi_actors.testing.ScriptedTransport``
    as a scripted double. Failures are raised as ``TransportError`` or ``ProtocolError``;
    ``on_sent`` is called once the request is on the wire (the governor counts from then)."""

    @property
    def base_url(self) -> str: ...

    @property
    def timeouts(self) -> Timeouts: ...

    async def post(self, path: str, body: bytes, *, headers: Mapping[str, str] | None = None,
                   on_sent: Callable[[], None] | None = None) -> RawResponse: ...

    async def get(self, path: str) -> RawResponse: ...

    def stream(self, path: str, body: bytes, *, headers: Mapping[str, str] | None = None,
               on_sent: Callable[[], None] | None = None
               ) -> AbstractAsyncContextManager[StreamLike]: ...

    async def close(self) -> None: ...


class Transport:
    """One aiohttp session for every actor, its connection pool sized to the concurrency."""

    def __init__(self, *, base_url: str, api_key: str, timeouts: Timeouts,
                 pool_size: int | None = None,
                 headers: Mapping[str, str] | None = None) -> None:
        self._base_url = base_url.rstrip("/")
        self._base = URL(self._base_url)
        self._origin = self._base.origin()
        self._urls: dict[str, URL] = {}
        self._headers = {
            "Authorization": f"Bearer {api_key}",
            "Content-Type": "application/json",
            "Accept": "application/json, text/event-stream",
            **(headers or {}),
        }
        self._timeouts = timeouts
        self._pool_size = pool_size
        self._session: aiohttp.ClientSession | None = None

    def __repr__(self) -> str:
        return f"Transport(base_url={redact_url(self._base_url)!r})"

    @property
    def base_url(self) -> str:
        return self._base_url

    @property
    def timeouts(self) -> Timeouts:
        return self._timeouts

    def _get_session(self) -> aiohttp.ClientSession:
        if self._session is None:
            connector = _Connector(limit=self._pool_size or 0, limit_per_host=0,
                                   ttl_dns_cache=300)
            # No total or socket-read timeout: each exchange's _Deadline bounds it.
            self._session = aiohttp.ClientSession(
                connector=connector, headers=self._headers, auto_decompress=True,
                read_bufsize=READ_BUFFER_BYTES,
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=self._timeouts.connect))
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            session, self._session = self._session, None
            await session.close()

    def url(self, path: str) -> URL:
        """``path`` (with its own query, if any) under the base URL's path; a query in the
        base URL is kept."""
        url = self._urls.get(path)
        if url is None:
            base = self._base
            route, _, query = path.partition("?")
            url = base.with_path(f"{base.path.rstrip('/')}/{route.lstrip('/')}",
                                 keep_query=True)
            if query:
                url = url.update_query(query)
            if len(self._urls) < _URL_CACHE_SIZE:  # forwarded paths carry ids: keep it bounded
                self._urls[path] = url
        return url

    def _same_origin_target(self, response: aiohttp.ClientResponse) -> URL | None:
        """Where a redirect that may be followed points, or ``None``."""
        if response.status not in _KEEP_METHOD_REDIRECTS:
            return None
        location = response.headers.get("Location")
        if not location:
            return None
        try:
            target = response.url.join(URL(location))
        except ValueError:
            return None
        return target if target.origin() == self._origin else None

    async def _open(self, method: str, path: str, body: bytes | None, *,
                    headers: Mapping[str, str] | None,
                    deadline: _Deadline) -> aiohttp.ClientResponse:
        """Send and wait for the response headers; follow same-origin 307/308 redirects; leave
        every other answer, redirects included, to the caller. Runs inside
        the deadline's timing."""
        url = self.url(path)
        session = self._get_session()
        token = _SENDING.set(deadline)
        try:
            for _ in range(MAX_SAME_ORIGIN_REDIRECTS + 1):
                response = await session.request(method, url, data=body, headers=headers,
                                                 allow_redirects=False)
                target = self._same_origin_target(response)
                if target is None:
                    break
                _finish(response)
                url = target
        finally:
            _SENDING.reset(token)
        deadline.headers = True
        return response

    async def _exchange(self, method: str, path: str, body: bytes | None, *,
                        headers: Mapping[str, str] | None, on_sent: Callable[[], None] | None,
                        first_byte: float) -> RawResponse:
        """Send and read the whole answer: its headers within ``connect + first_byte``
        (``first_byte`` from sending), each pause in its body ``read_idle`` at most, all of
        it within ``response``."""
        timeouts = self._timeouts
        deadline = _Deadline(timeouts, first_byte=first_byte, total=timeouts.response,
                             on_sent=on_sent)
        deadline.start()
        try:
            response = await self._open(method, path, body, headers=headers,
                                        deadline=deadline)
            try:
                content = response.content
                # Mostly the whole answer is buffered with its headers: taken without a
                # reading coroutine.
                data = content.read_nowait()
                if not content.at_eof() or len(data) > MAX_BODY_BYTES:
                    data = await _read_body(content, MAX_BODY_BYTES, truncate=False,
                                            deadline=deadline, first=data)
            finally:
                _finish(response)
        except asyncio.CancelledError:
            if not deadline.stop():
                raise
            failure = deadline.timed_out()
        except _TRANSPORT_ERRORS as exc:
            deadline.stop()
            failure = deadline.error(exc)
        else:
            deadline.stop()
            return _raw_response(response.status, response.headers, data,
                                 response.content_type)
        finally:
            deadline.stop()
        raise failure

    def post(self, path: str, body: bytes, *, headers: Mapping[str, str] | None = None,
             on_sent: Callable[[], None] | None = None) -> Coroutine[Any, Any, RawResponse]:
        """POST and read the whole answer. The headers must come within
        ``non_stream_first_byte`` of sending (the answer is generated before them), the whole
        answer within ``response``. ``on_sent`` is called once the request goes out on its
        connection (again for a redirect followed). (The exchange's own coroutine is the
        awaitable: one coroutine less on every call.)"""
        return self._exchange("POST", path, body, headers=headers, on_sent=on_sent,
                                    first_byte=self._timeouts.non_stream_first_byte)

    async def get(self, path: str) -> RawResponse:
        return await self._exchange("GET", path, None, headers=None, on_sent=None,
                                    first_byte=self._timeouts.first_byte)

    async def forward(self, method: str, path: str, body: bytes | None, *,
                      query: str = "", headers: Mapping[str, str] | None = None) -> RawResponse:
        """Send any request under the base URL as it is (the key added) and read the whole
        answer: the pass-through for endpoints the actors do not govern (files, batches)."""
        if query:
            path = f"{path}?{query}"
        return await self._exchange(method, path, body, headers=headers, on_sent=None,
                                    first_byte=self._timeouts.non_stream_first_byte)

    def stream(self, path: str, body: bytes, *, headers: Mapping[str, str] | None = None,
               on_sent: Callable[[], None] | None = None
               ) -> AbstractAsyncContextManager[StreamResponse]:
        """POST and hold the response open for streaming. Headers must come within
        ``first_byte`` of sending; after that, ``read()`` waits ``read_idle`` at most per
        read, and ``read_chunk()`` leaves the gaps to its reader (the stream actor bounds the
        gap between complete events, and the whole stream).
        Leaving the block closes the connection unless the body was read to its end."""
        return _Streaming(self, path, body, headers, on_sent)


class _Streaming:
    """``async with transport.stream(...) as response``. (A class, not an
    ``asynccontextmanager``: its generator costs every stream a few µs, and registers with
    the loop's async generators.)"""

    __slots__ = ("_body", "_headers", "_on_sent", "_path", "_response", "_transport")

    def __init__(self, transport: Transport, path: str, body: bytes,
                 headers: Mapping[str, str] | None,
                 on_sent: Callable[[], None] | None) -> None:
        self._transport = transport
        self._path = path
        self._body = body
        self._headers = headers
        self._on_sent = on_sent
        self._response: aiohttp.ClientResponse | None = None

    async def __aenter__(self) -> StreamResponse:
        timeouts = self._transport.timeouts
        deadline = _Deadline(timeouts, first_byte=timeouts.first_byte, total=None,
                             on_sent=self._on_sent)
        failure: KimiError | None = None
        deadline.start()
        try:
            response = await self._transport._open("POST", self._path, self._body,
                                                   headers=self._headers, deadline=deadline)
        except asyncio.CancelledError:
            if not deadline.stop():
                raise
            failure = deadline.timed_out()
        except _TRANSPORT_ERRORS as exc:
            deadline.stop()
            failure = deadline.error(exc)
        finally:
            deadline.stop()
        if failure is not None:
            raise failure
        self._response = response
        return StreamResponse(response, timeouts)

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        if self._response is not None:
            _finish(self._response)


#: A RawResponse of (status, headers, body, content_type), built without the frozen
#: constructor's keyword call (0.3 against 0.7 µs).
_raw_response: Callable[[int, Mapping[str, str], bytes, str], RawResponse] = \
    slot_builder(RawResponse)


def _finish(response: aiohttp.ClientResponse) -> None:
    """Give the connection back when the body was read to its end, else close it."""
    if response.content.at_eof():
        response.release()
    else:
        response.close()


def _set_read_timeout(response: aiohttp.ClientResponse, seconds: float | None) -> None:
    """From the headers on, a socket read may wait ``seconds`` (not the first-byte bound)."""
    connection = response.connection
    if connection is not None and connection.protocol is not None:
        connection.protocol.read_timeout = seconds


def json_body(body: Mapping[str, Any]) -> bytes:
    """Compact UTF-8 JSON; non-string keys (e.g. ``logit_bias`` token ids) become strings,
    as ``json.dumps`` would make them. Raises TypeError for values JSON cannot hold."""
    data = orjson.dumps(body, option=orjson.OPT_NON_STR_KEYS)
    # orjson's output keeps its 4 KiB starting buffer: a 60-byte body held 4 KiB for as long
    # as its request lived (queued, streaming). An exact copy of a small one costs 0.2 µs.
    return bytes(memoryview(data)) if len(data) < _ORJSON_BUFFER else data


_ORJSON_BUFFER = 4096
