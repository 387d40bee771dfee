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
import ipaddress
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Mapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any, Protocol, runtime_checkable

import aiohttp
import orjson
from yarl import URL

from .errors import ConnectionFailedError, KimiError, ProtocolError, timeout_error
from .policy import Timeouts
from .redaction import redact_text, redact_url

__all__ = [
    "ERROR_PAGE_READ_BYTES",
    "MAX_BODY_BYTES",
    "MAX_SAME_ORIGIN_REDIRECTS",
    "ChunkReader",
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


async def _read_body(content: aiohttp.StreamReader, limit: int, *, truncate: bool) -> bytes:
    """The whole body. Past ``limit`` bytes: the first ``limit`` when ``truncate`` (an error
    page), else ProtocolError. (``StreamReader.read(n)`` returns only what is buffered, so a
    body arriving in pieces would be cut short.)"""
    parts: list[bytes] = []
    size = 0
    while True:
        data = await content.readany()
        if not data:
            return b"".join(parts)
        parts.append(data)
        size += len(data)
        if size > limit:
            if truncate:
                return b"".join(parts)[:limit]
            raise ProtocolError(f"the response body is larger than {limit} bytes")


class StreamResponse:
    """An open streaming response. Iterate ``chunks()`` for the body bytes as they come."""

    __slots__ = ("_response", "_timeouts", "content_type", "headers", "status")

    def __init__(self, response: aiohttp.ClientResponse, timeouts: Timeouts) -> None:
        self._response = response
        self._timeouts = timeouts
        self.status = response.status
        self.headers: Mapping[str, str] = response.headers
        self.content_type = response.content_type
        # The body's gaps are bounded by its reader's watchdog, not here: a socket timer
        # re-armed on every read would cost a timer per chunk.
        _set_read_timeout(response, None)

    async def read_chunk(self) -> bytes:
        """The next body bytes as they arrive, ``b""`` at the end. Cancelling it loses
        nothing: the bytes stay buffered for the next call."""
        try:
            return await self._response.content.readany()
        except _TRANSPORT_ERRORS as exc:
            failure = _map_error(exc, phase="read_idle", timeouts=self._timeouts)
        raise failure

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
                 pool_size: int | None = None, headers: Mapping[str, str] | None = None,
                 report_sent: bool = False) -> None:
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
        self._report_sent = report_sent
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
            connector = aiohttp.TCPConnector(limit=self._pool_size or 0, limit_per_host=0,
                                             ttl_dns_cache=300)
            traces = []
            if self._report_sent:
                trace = aiohttp.TraceConfig()
                trace.on_request_headers_sent.append(_call_on_sent)
                traces.append(trace)
            self._session = aiohttp.ClientSession(
                connector=connector, headers=self._headers, auto_decompress=True,
                read_bufsize=READ_BUFFER_BYTES,
                trace_configs=traces,
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
                    headers: Mapping[str, str] | None, on_sent: Callable[[], None] | None,
                    first_byte: float, total: float | None) -> aiohttp.ClientResponse:
        """Send and wait for the response headers, within ``connect + first_byte``; follow
        same-origin 307/308 redirects; leave every other answer, redirects included, to the
        caller. ``total`` bounds the whole exchange, body included."""
        timeouts = self._timeouts
        timeout = aiohttp.ClientTimeout(total=total, sock_connect=timeouts.connect,
                                        sock_read=first_byte)
        url = self.url(path)
        scope = asyncio.timeout(timeouts.connect + first_byte)
        try:
            async with scope:
                for _ in range(MAX_SAME_ORIGIN_REDIRECTS + 1):
                    response = await self._get_session().request(
                        method, url, data=body, headers=headers, timeout=timeout,
                        allow_redirects=False, trace_request_ctx=on_sent)
                    target = self._same_origin_target(response)
                    if target is None:
                        return response
                    _finish(response)
                    url = target
                return response
        except _TRANSPORT_ERRORS as exc:
            phase, limit = "first_byte", first_byte
            if total is not None and not scope.expired() \
                    and not isinstance(exc, aiohttp.ServerTimeoutError):
                phase, limit = "response", total
            failure = _map_error(exc, phase=phase, timeouts=timeouts, limit=limit)
        raise failure

    async def _whole(self, response: aiohttp.ClientResponse) -> RawResponse:
        """Read a response's body whole: its reads may pause ``read_idle`` at most."""
        try:
            _set_read_timeout(response, self._timeouts.read_idle)
            data = await _read_body(response.content, MAX_BODY_BYTES, truncate=False)
            return RawResponse(status=response.status, headers=response.headers,
                               body=data, content_type=response.content_type)
        except _TRANSPORT_ERRORS as exc:
            failure = _map_error(exc, phase="response", timeouts=self._timeouts)
        finally:
            _finish(response)
        raise failure

    async def post(self, path: str, body: bytes, *, headers: Mapping[str, str] | None = None,
                   on_sent: Callable[[], None] | None = None) -> RawResponse:
        """POST and read the whole answer. The headers must come within
        ``non_stream_first_byte`` (the answer is generated before them), the whole answer
        within ``response``. ``on_sent`` is called once the request is on the wire, when the
        transport reports sending."""
        timeouts = self._timeouts
        response = await self._open("POST", path, body, headers=headers, on_sent=on_sent,
                                    first_byte=timeouts.non_stream_first_byte,
                                    total=timeouts.response)
        return await self._whole(response)

    async def get(self, path: str) -> RawResponse:
        timeouts = self._timeouts
        response = await self._open("GET", path, None, headers=None, on_sent=None,
                                    first_byte=timeouts.first_byte, total=timeouts.response)
        return await self._whole(response)

    async def forward(self, method: str, path: str, body: bytes | None, *,
                      query: str = "", headers: Mapping[str, str] | None = None) -> RawResponse:
        """Send any request under the base URL as it is (the key added) and read the whole
        answer: the pass-through for endpoints the actors do not govern (files, batches)."""
        timeouts = self._timeouts
        if query:
            path = f"{path}?{query}"
        response = await self._open(method, path, body, headers=headers, on_sent=None,
                                    first_byte=timeouts.non_stream_first_byte,
                                    total=timeouts.response)
        return await self._whole(response)

    @asynccontextmanager
    async def stream(self, path: str, body: bytes, *, headers: Mapping[str, str] | None = None,
                     on_sent: Callable[[], None] | None = None
                     ) -> AsyncIterator[StreamResponse]:
        """POST and hold the response open for streaming. Headers must come within
        ``first_byte``; after that, ``read()`` waits ``read_idle`` at most per read, and
        ``chunks()`` leaves the gaps to its reader (the stream actor bounds the gap between
        complete events, and the whole stream).
        Leaving the block closes the connection unless the body was read to its end."""
        timeouts = self._timeouts
        response = await self._open("POST", path, body, headers=headers, on_sent=on_sent,
                                    first_byte=timeouts.first_byte, total=None)
        try:
            yield StreamResponse(response, timeouts)
        finally:
            _finish(response)


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


async def _call_on_sent(session: aiohttp.ClientSession, context: SimpleNamespace,
                        params: aiohttp.TraceRequestHeadersSentParams) -> None:
    on_sent = context.trace_request_ctx
    if on_sent is not None:
        on_sent()


def json_body(body: Mapping[str, Any]) -> bytes:
    """Compact UTF-8 JSON; non-string keys (e.g. ``logit_bias`` token ids) become strings,
    as ``json.dumps`` would make them. Raises TypeError for values JSON cannot hold."""
    data = orjson.dumps(body, option=orjson.OPT_NON_STR_KEYS)
    # orjson's output keeps its 4 KiB starting buffer: a 60-byte body held 4 KiB for as long
    # as its request lived (queued, streaming). An exact copy of a small one costs 0.2 µs.
    return bytes(memoryview(data)) if len(data) < _ORJSON_BUFFER else data


_ORJSON_BUFFER = 4096
