"""The HTTP edge: one aiohttp session, its timeouts, and the one place aiohttp errors become ours.

Nothing here decides what an answer means (protocol/classify.py does); this module only moves
bytes and turns every aiohttp or socket failure into ``ConnectionFailedError``,
``RequestTimeoutError`` or ``ProtocolError``. aiohttp exceptions that carry the request's
headers (and so the key) are never chained.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import aiohttp
import orjson

from .errors import ConnectionFailedError, KimiError, ProtocolError, RequestTimeoutError
from .policy import Timeouts

__all__ = [
    "MAX_BODY_BYTES",
    "MAX_ERROR_BODY_BYTES",
    "RawResponse",
    "StreamResponse",
    "Transport",
    "json_body",
]

MAX_BODY_BYTES = 64 << 20
MAX_ERROR_BODY_BYTES = 1 << 20


@dataclass(frozen=True, slots=True, kw_only=True)
class RawResponse:
    status: int
    headers: Mapping[str, str]
    body: bytes
    content_type: str


def _map_error(exc: BaseException, *, phase: str, timeouts: Timeouts) -> KimiError:
    """Turn an aiohttp/socket failure into our error. ``phase`` says what we were waiting
    for; a connect timeout is recognised by its type whatever the phase."""
    if isinstance(exc, asyncio.TimeoutError | TimeoutError):
        if isinstance(exc, aiohttp.ConnectionTimeoutError):
            phase = "connect"
        limit = {"connect": timeouts.connect, "first_byte": timeouts.first_byte,
                 "read_idle": timeouts.read_idle, "response": timeouts.response}.get(phase)
        err: KimiError = RequestTimeoutError(
            f"timed out waiting for the {phase.replace('_', ' ')} after {limit} s",
            phase=phase, timeout=limit)
    elif isinstance(exc, aiohttp.ClientConnectorError):
        err = ConnectionFailedError(f"cannot connect to {exc.host}:{exc.port}: {exc.os_error}")
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
    if not isinstance(exc, aiohttp.ClientResponseError):
        err.__cause__ = exc
    err.__suppress_context__ = True
    return err


_TRANSPORT_ERRORS = (aiohttp.ClientError, OSError, asyncio.TimeoutError, TimeoutError)


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

    async def chunks(self) -> AsyncGenerator[bytes, None]:
        """Body bytes as they arrive; a gap longer than ``read_idle`` raises a timeout."""
        content = self._response.content
        try:
            while True:
                data = await content.readany()
                if not data:
                    return
                yield data
        except _TRANSPORT_ERRORS as exc:
            raise _map_error(exc, phase="read_idle", timeouts=self._timeouts) from None

    async def read(self, limit: int = MAX_ERROR_BODY_BYTES) -> bytes:
        """Read (up to ``limit`` bytes of) the rest of the body, e.g. an error page."""
        try:
            return await _read_body(self._response.content, limit, truncate=True)
        except _TRANSPORT_ERRORS as exc:
            raise _map_error(exc, phase="read_idle", timeouts=self._timeouts) from None


class Transport:
    """One aiohttp session for every actor, its connection pool sized to the concurrency."""

    def __init__(self, *, base_url: str, api_key: str, timeouts: Timeouts,
                 pool_size: int | None = None, headers: Mapping[str, str] | None = None,
                 report_sent: bool = False) -> None:
        self._base_url = base_url.rstrip("/")
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
        return f"Transport(base_url={self._base_url!r})"

    @property
    def base_url(self) -> str:
        return self._base_url

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
                trace_configs=traces,
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=self._timeouts.connect))
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            session, self._session = self._session, None
            await session.close()

    def url(self, path: str) -> str:
        return f"{self._base_url}/{path.lstrip('/')}"

    async def post(self, path: str, body: bytes, *, headers: Mapping[str, str] | None = None,
                   on_sent: Callable[[], None] | None = None) -> RawResponse:
        """POST and read the whole answer (bounded by ``Timeouts.response``). ``on_sent`` is
        called once the request is on the wire, when the transport reports sending."""
        timeout = aiohttp.ClientTimeout(total=self._timeouts.response,
                                        sock_connect=self._timeouts.connect)
        try:
            async with self._get_session().post(self.url(path), data=body, headers=headers,
                                                timeout=timeout,
                                                trace_request_ctx=on_sent) as response:
                data = await _read_body(response.content, MAX_BODY_BYTES, truncate=False)
                return RawResponse(status=response.status, headers=response.headers,
                                   body=data, content_type=response.content_type)
        except _TRANSPORT_ERRORS as exc:
            raise _map_error(exc, phase="response", timeouts=self._timeouts) from None

    async def get(self, path: str) -> RawResponse:
        timeout = aiohttp.ClientTimeout(total=self._timeouts.first_byte,
                                        sock_connect=self._timeouts.connect)
        try:
            async with self._get_session().get(self.url(path), timeout=timeout) as response:
                data = await _read_body(response.content, MAX_BODY_BYTES, truncate=False)
                return RawResponse(status=response.status, headers=response.headers,
                                   body=data, content_type=response.content_type)
        except _TRANSPORT_ERRORS as exc:
            raise _map_error(exc, phase="response", timeouts=self._timeouts) from None

    @asynccontextmanager
    async def stream(self, path: str, body: bytes, *, headers: Mapping[str, str] | None = None,
                     on_sent: Callable[[], None] | None = None
                     ) -> AsyncIterator[StreamResponse]:
        """POST and hold the response open for streaming. Headers must come within
        ``first_byte``; after that, each gap between reads may last ``read_idle``. Leaving the
        block closes the connection unless the body was read to its end."""
        timeouts = self._timeouts
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=timeouts.connect,
                                        sock_read=timeouts.first_byte)
        try:
            async with asyncio.timeout(timeouts.connect + timeouts.first_byte):
                response = await self._get_session().post(
                    self.url(path), data=body, headers=headers, timeout=timeout,
                    trace_request_ctx=on_sent)
        except _TRANSPORT_ERRORS as exc:
            raise _map_error(exc, phase="first_byte", timeouts=timeouts) from None
        try:
            connection = response.connection
            if connection is not None and connection.protocol is not None:
                connection.protocol.read_timeout = timeouts.read_idle
            yield StreamResponse(response, timeouts)
        finally:
            if response.content.at_eof():
                response.release()
            else:
                response.close()


async def _call_on_sent(session: aiohttp.ClientSession, context: SimpleNamespace,
                        params: aiohttp.TraceRequestHeadersSentParams) -> None:
    on_sent = context.trace_request_ctx
    if on_sent is not None:
        on_sent()


def json_body(body: Mapping[str, Any]) -> bytes:
    """Compact UTF-8 JSON; non-string keys (e.g. ``logit_bias`` token ids) become strings,
    as ``json.dumps`` would make them. Raises TypeError for values JSON cannot hold."""
    return orjson.dumps(body, option=orjson.OPT_NON_STR_KEYS)
