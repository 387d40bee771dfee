"""The openai SDK, and every framework built on it, running on a :class:`Supervisor`.

``sup.openai_client()`` returns a real ``openai.AsyncOpenAI`` whose HTTP transport is
:class:`OpenAITransport`; ``sup.httpx_transport()`` gives the transport alone, for frameworks
that take an httpx client. Chat completions go through the supervisor: the governor, the
breaker, one retry policy and stream resume. Other endpoints (models, files, batches) are
passed through as they are, under the supervisor's key. The transport serves the httpx
package the installed SDK uses (``httpx2`` for openai 3, ``httpx`` before), and either
package's clients, since it answers each request with its own package's classes.

- A non-stream answer is the server's own body, so the SDK parses it into its
  ``ChatCompletion`` unchanged.
- A stream is rendered from the deltas the stream actor delivered (protocol/render.py): a
  stream resumed through Partial Mode reaches the SDK as one stream, under one id, with one
  ``[DONE]``. A stream the actor had to *restart* after text reached the SDK cannot be shown
  on one SSE stream: it fails with ``APIConnectionError``.
- Errors are raised as the SDK's own classes, which the SDK passes on as they are, with the
  supervisor's error as ``__cause__``: ``except openai.RateLimitError`` keeps working.

Per request, ``kimi-actors-priority`` and ``kimi-actors-tenant`` headers (``extra_headers``)
or a ``"kimi_actors": {"priority": 1, "tenant": "acme"}`` object in ``extra_body`` say where
the request queues; neither reaches the server. The SDK's ``timeout`` bounds a non-stream
call, queueing and retries included (``APITimeoutError``); a stream is bounded by the
supervisor's :class:`~kimi_actors.Timeouts` instead, since an SDK timeout bounds one read.

:class:`BackgroundSupervisor` serves synchronous code (``openai.OpenAI``): a supervisor on an
event loop in its own thread.
"""

from __future__ import annotations

import asyncio
import importlib
import sys
import threading
from collections.abc import AsyncIterator, Coroutine, Iterator, Mapping
from concurrent.futures import Future
from types import ModuleType, TracebackType
from typing import TYPE_CHECKING, Any, Self, TypeVar, cast
from urllib.parse import urlsplit

import openai
import orjson

from .errors import (
    APIError,
    IncompleteStreamError,
    KimiError,
    LimitExceededError,
    RequestTimeoutError,
)
from .protocol.render import DONE_EVENT, ChunkRenderer, RestartAfterOutput

if TYPE_CHECKING:
    import httpx2 as _httpx

    from .actors.supervisor import Stream, Supervisor
    from .protocol.results import Delta
else:
    _httpx = None

__all__ = [
    "BODY_KEY",
    "PRIORITY_HEADER",
    "TENANT_HEADER",
    "BackgroundSupervisor",
    "OpenAITransport",
    "SyncOpenAITransport",
    "openai_error",
]

PRIORITY_HEADER = "kimi-actors-priority"
TENANT_HEADER = "kimi-actors-tenant"
#: The ``extra_body`` key whose object carries ``priority`` and ``tenant``.
BODY_KEY = "kimi_actors"
CHAT_ROUTE = "chat/completions"
#: Request headers not forwarded: the transport sets its own, and the SDK's ``X-Stainless``
#: telemetry says nothing the server needs.
_OWN_HEADERS = frozenset({"authorization", "host", "content-length", "content-type", "accept",
                          "accept-encoding", "connection", "user-agent", "transfer-encoding",
                          PRIORITY_HEADER, TENANT_HEADER})
_SSE_HEADERS = (("content-type", "text/event-stream; charset=utf-8"),
                ("cache-control", "no-cache"))
_T = TypeVar("_T")


def _sdk_httpx() -> ModuleType:
    """The httpx package the installed openai SDK builds its clients on."""
    for cls in openai.DefaultAsyncHttpxClient.__mro__:
        root = cls.__module__.partition(".")[0]
        if root in ("httpx2", "httpx"):
            return importlib.import_module(root)
    raise ImportError("cannot tell which httpx package the installed openai SDK uses")


#: The SDK's httpx package: transports subclass its base classes.
SDK_HTTPX: ModuleType = _sdk_httpx()
if not TYPE_CHECKING:
    _httpx = SDK_HTTPX


def _package(request: _httpx.Request) -> Any:
    """The httpx package ``request`` belongs to: the answer is built from the same one."""
    return sys.modules[type(request).__module__.partition(".")[0]]


#: The SDK's status error class for each HTTP status (the SDK's own ``_make_status_error``).
STATUS_ERRORS: Mapping[int, type[openai.APIStatusError]] = {
    400: openai.BadRequestError,
    401: openai.AuthenticationError,
    403: openai.PermissionDeniedError,
    404: openai.NotFoundError,
    409: openai.ConflictError,
    422: openai.UnprocessableEntityError,
    429: openai.RateLimitError,
}


def _status_class(status: int) -> type[openai.APIStatusError]:
    found = STATUS_ERRORS.get(status)
    if found is not None:
        return found
    return openai.InternalServerError if status >= 500 else openai.APIStatusError


def _error_body(error: APIError) -> bytes:
    if error.body:
        return error.body
    detail: dict[str, Any] = {"message": error.message}
    if error.error_type:
        detail["type"] = error.error_type
    return orjson.dumps({"error": detail})


def openai_error(error: KimiError, request: _httpx.Request) -> openai.OpenAIError:
    """The SDK's exception for one of ours (raise it ``from error``).

    An answer from the server becomes the SDK's status error for its status, built on a
    response with the server's (redacted) body and request id. A timeout becomes
    ``APITimeoutError``. A request larger than a limit allows becomes ``BadRequestError``
    on a 400 response made here (it never reached the server). Everything else (a broken
    connection, a broken stream, an open breaker, a closed supervisor) becomes
    ``APIConnectionError`` with our message.
    """
    hx = _package(request)
    if isinstance(error, RequestTimeoutError):
        return openai.APITimeoutError(request=request)
    if isinstance(error, APIError | LimitExceededError):
        if isinstance(error, APIError):
            status, content = error.status, _error_body(error)
        else:
            status = 400
            content = orjson.dumps({"error": {"message": error.message,
                                              "type": "limit_exceeded_error"}})
        headers = {"content-type": "application/json"}
        if error.request_id:
            headers["x-request-id"] = error.request_id
        retry_after = getattr(error, "retry_after", None)
        if retry_after is not None:
            headers["retry-after"] = f"{retry_after:g}"
        response = hx.Response(status, headers=headers, content=content, request=request)
        try:
            parsed: Any = orjson.loads(content)
        except orjson.JSONDecodeError:
            parsed = content.decode("utf-8", errors="replace")
        body = parsed.get("error", parsed) if isinstance(parsed, Mapping) else parsed
        message = f"Error code: {status} - {parsed}"
        if status < 400:  # an error object inside a 200 stream, or a redirect
            return openai.APIError(message, request, body=body)
        return _status_class(status)(message, response=response, body=body)
    return openai.APIConnectionError(message=str(error), request=request)


def _control(request: _httpx.Request,
             body: dict[str, Any]) -> tuple[int | None, str | None]:
    """Priority and tenant from ``extra_body`` or the headers (None: not named); the body's
    own object is removed, so it never reaches the server."""
    headers = request.headers
    priority: Any = headers.get(PRIORITY_HEADER)
    tenant: Any = headers.get(TENANT_HEADER)
    own = body.pop(BODY_KEY, None)
    if own is not None:
        if not isinstance(own, Mapping):
            raise ValueError(f"extra_body[{BODY_KEY!r}] must be an object, got "
                             f"{type(own).__name__}")
        unknown = set(own) - {"priority", "tenant"}
        if unknown:
            raise ValueError(f"extra_body[{BODY_KEY!r}] takes priority and tenant, not "
                             f"{', '.join(sorted(unknown))}")
        priority = own.get("priority", priority)
        tenant = own.get("tenant", tenant)
    if tenant is not None and (not isinstance(tenant, str) or not tenant):
        raise ValueError(f"the request's tenant must be a non-empty string, got {tenant!r}")
    if priority is None:
        return None, tenant
    try:
        if isinstance(priority, bool) or not isinstance(priority, int | str):
            raise TypeError
        return int(priority), tenant
    except (TypeError, ValueError):
        raise ValueError(f"the request's priority must be an integer, got {priority!r}") \
            from None


def _forwarded(request: _httpx.Request) -> dict[str, str] | None:
    headers = {name: value for name, value in request.headers.items()
               if name.lower() not in _OWN_HEADERS and not name.lower().startswith("x-stainless")}
    return headers or None


def _read_timeout(request: _httpx.Request) -> float | None:
    timeout = request.extensions.get("timeout")
    if isinstance(timeout, Mapping):
        value = timeout.get("read")
        if isinstance(value, int | float) and value > 0:
            return float(value)
    return None


class _SSEBody:
    """A stream's deltas as SSE bytes, for the response the SDK reads."""

    def __init__(self, stream: Stream, first: list[Delta], request: _httpx.Request) -> None:
        self._stream = stream
        self._first = first
        self._request = request
        self._renderer = ChunkRenderer()
        self._closed = False

    async def __aiter__(self) -> AsyncIterator[bytes]:
        stream, renderer, request = self._stream, self._renderer, self._request
        pending, self._first = self._first, []
        try:
            while True:
                pending += stream.ready()
                try:
                    data = renderer.render(pending)
                except RestartAfterOutput:
                    broken = IncompleteStreamError(
                        "the stream broke where Partial Mode cannot continue it (a tool call,"
                        " reasoning or several choices in progress), and a restarted answer "
                        "cannot follow text already sent on one SSE stream")
                    raise openai.APIConnectionError(message=str(broken),
                                                    request=request) from broken
                if data:
                    yield data
                try:
                    pending = [await anext(stream)]
                except StopAsyncIteration:
                    yield DONE_EVENT
                    return
                except KimiError as exc:
                    raise openai_error(exc, request) from exc
        finally:
            await self.aclose()

    async def aclose(self) -> None:
        """Stop the stream (a consumer that leaves early): its actor is cancelled."""
        if not self._closed:
            self._closed = True
            await self._stream.__aexit__(None, None, None)


_BODY_CLASSES: dict[str, type[_SSEBody]] = {}


def _body_class(hx: Any) -> type[_SSEBody]:
    """:class:`_SSEBody` as an ``AsyncByteStream`` of ``hx`` (httpx checks the base class)."""
    cls = _BODY_CLASSES.get(hx.__name__)
    if cls is None:
        cls = _BODY_CLASSES[hx.__name__] = type("SSEBody", (_SSEBody, hx.AsyncByteStream), {})
    return cls


class OpenAITransport(_httpx.AsyncBaseTransport):
    """An httpx async transport that sends chat completions through a :class:`Supervisor`.

    ``priority`` and ``tenant`` are the defaults for requests that do not name their own.
    Closing it leaves the supervisor open: the supervisor's owner closes that.
    """

    def __init__(self, supervisor: Supervisor, *, priority: int = 0,
                 tenant: str | None = None) -> None:
        self._supervisor = supervisor
        self._priority = priority
        self._tenant = tenant
        self._prefix = f"{urlsplit(supervisor.base_url).path.rstrip('/')}/"

    def __repr__(self) -> str:
        return f"OpenAITransport({self._supervisor!r})"

    def _route(self, path: str) -> str:
        if path.startswith(self._prefix):
            return path[len(self._prefix):]
        return path.lstrip("/")

    async def handle_async_request(self, request: _httpx.Request) -> _httpx.Response:
        route = self._route(request.url.path)
        content = await request.aread()
        if request.method == "POST" and route == CHAT_ROUTE:
            return await self._chat(request, content)
        return await self._forward(request, route, content)

    async def _chat(self, request: _httpx.Request, content: bytes) -> _httpx.Response:
        try:
            body = orjson.loads(content)
        except orjson.JSONDecodeError as exc:
            raise ValueError(f"the chat completion body is not JSON: {exc}") from None
        if not isinstance(body, dict):
            raise ValueError("the chat completion body must be a JSON object")
        priority, tenant = _control(request, body)
        if priority is None:
            priority = self._priority
        if tenant is None:
            tenant = self._tenant
        sup = self._supervisor
        hx = _package(request)
        headers = _forwarded(request)
        if body.get("stream") is not True:
            try:
                # The SDK's body is complete: it goes as extra_body, unchecked by ChatParams.
                result = await sup.chat(  # type: ignore[call-arg]
                    timeout=_read_timeout(request), priority=priority, tenant=tenant,
                    extra_headers=headers, extra_body=body)
            except KimiError as exc:
                raise openai_error(exc, request) from exc
            answer = [("content-type", "application/json")]
            if result.request_id:
                answer.append(("x-request-id", result.request_id))
            return cast("_httpx.Response", hx.Response(
                200, headers=answer, content=orjson.dumps(result.to_dict()), request=request))
        try:
            stream = sup.stream(priority=priority, tenant=tenant,  # type: ignore[call-arg]
                                extra_headers=headers, extra_body=body)
        except KimiError as exc:
            raise openai_error(exc, request) from exc
        await stream.__aenter__()
        try:
            first = [await anext(stream)]
        except StopAsyncIteration:
            first = []
        except BaseException as exc:
            await stream.__aexit__(None, None, None)
            if isinstance(exc, KimiError):
                raise openai_error(exc, request) from exc
            raise
        answer = list(_SSE_HEADERS)
        if stream.request_id:
            answer.append(("x-request-id", stream.request_id))
        return cast("_httpx.Response", hx.Response(
            200, headers=answer, stream=_body_class(hx)(stream, first, request),
            request=request))

    async def _forward(self, request: _httpx.Request, route: str,
                       content: bytes) -> _httpx.Response:
        headers = _forwarded(request) or {}
        content_type = request.headers.get("content-type")
        if content_type:
            headers["Content-Type"] = content_type
        try:
            raw = await self._supervisor.forward(request.method, route, content or None,
                                                 query=request.url.query.decode("ascii"),
                                                 headers=headers)
        except KimiError as exc:
            raise openai_error(exc, request) from exc
        answer = [("content-type", raw.content_type or "application/octet-stream")]
        answer += [(name, value) for name in ("x-request-id", "msh-request-id", "retry-after")
                   if (value := raw.headers.get(name)) is not None]
        return cast("_httpx.Response", _package(request).Response(
            raw.status, headers=answer, content=raw.body, request=request))


def openai_client(supervisor: Supervisor, *, priority: int = 0, tenant: str | None = None,
                  **kwargs: Any) -> openai.AsyncOpenAI:
    """The body of :meth:`Supervisor.openai_client`."""
    _refuse_owned(kwargs)
    transport = OpenAITransport(supervisor, priority=priority, tenant=tenant)
    return openai.AsyncOpenAI(api_key=_PLACEHOLDER_KEY, base_url=supervisor.base_url,
                              max_retries=0,
                              http_client=openai.DefaultAsyncHttpxClient(transport=transport),
                              **kwargs)


#: The SDK insists on a key; the real one is added by the supervisor's transport, so the
#: SDK client (its reprs, its debug logs, a framework that copies it) never holds it.
_PLACEHOLDER_KEY = "kimi-actors-holds-the-key"
_OWNED = ("api_key", "base_url", "http_client", "max_retries")


def _refuse_owned(kwargs: Mapping[str, Any]) -> None:
    owned = [name for name in _OWNED if name in kwargs]
    if owned:
        raise TypeError(f"openai_client() sets {', '.join(owned)} itself: the supervisor holds "
                        "the key and the base URL, sends every request, and retries in one "
                        "place (the SDK's own retries would multiply traffic)")


# -- synchronous code ----------------------------------------------------------------------


class _SyncSSEBody:
    """An async SSE body read from a synchronous thread, one part per loop round trip."""

    def __init__(self, body: _SSEBody, background: BackgroundSupervisor) -> None:
        self._body = body
        self._call = background.call
        self._parts = aiter(body)

    def __iter__(self) -> Iterator[bytes]:
        parts = self._parts

        async def step() -> bytes | None:
            return await anext(parts, None)

        while (part := self._call(step())) is not None:
            yield part

    def close(self) -> None:
        self._call(self._body.aclose())


_SYNC_BODY_CLASSES: dict[str, type[_SyncSSEBody]] = {}


def _sync_body_class(hx: Any) -> type[_SyncSSEBody]:
    cls = _SYNC_BODY_CLASSES.get(hx.__name__)
    if cls is None:
        cls = _SYNC_BODY_CLASSES[hx.__name__] = type("SyncSSEBody",
                                                     (_SyncSSEBody, hx.SyncByteStream), {})
    return cls


class SyncOpenAITransport(_httpx.BaseTransport):
    """An httpx sync transport that runs each request on a :class:`BackgroundSupervisor`."""

    def __init__(self, background: BackgroundSupervisor, *, priority: int = 0,
                 tenant: str | None = None) -> None:
        self._background = background
        self._priority = priority
        self._tenant = tenant
        self._inner: OpenAITransport | None = None

    def handle_request(self, request: _httpx.Request) -> _httpx.Response:
        background = self._background
        request.read()
        if self._inner is None:
            self._inner = OpenAITransport(background.supervisor, priority=self._priority,
                                          tenant=self._tenant)
        response = background.call(self._inner.handle_async_request(request))
        stream = response.stream
        if isinstance(stream, _SSEBody):
            sync_body: Any = _sync_body_class(_package(request))(stream, background)
            response.stream = sync_body
        return response


class BackgroundSupervisor:
    """A :class:`Supervisor` on an event loop in its own thread, for synchronous programs.

    ``with BackgroundSupervisor(api_key=..., limits=...) as bg:`` starts the loop and the
    supervisor (the keyword arguments are :class:`Supervisor`'s); ``bg.openai_client()``
    returns an ``openai.OpenAI`` whose requests it serves, from any number of threads, under
    one governor. Leaving the block drains and closes the supervisor, then stops the loop.
    """

    def __init__(self, **supervisor_options: Any) -> None:
        self._options = supervisor_options
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._supervisor: Supervisor | None = None

    @property
    def supervisor(self) -> Supervisor:
        if self._supervisor is None:
            raise RuntimeError("use it as `with BackgroundSupervisor(...) as bg:`")
        return self._supervisor

    def __enter__(self) -> Self:
        from .actors.supervisor import Supervisor

        if self._loop is not None:
            raise RuntimeError("a BackgroundSupervisor can be entered once")
        loop = self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=loop.run_forever, name="kimi_actors.background",
                                        daemon=True)
        self._thread.start()

        async def start() -> Supervisor:
            return await Supervisor(**self._options).__aenter__()

        try:
            self._supervisor = self.call(start())
        except BaseException:
            self._stop()
            raise
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        try:
            if self._supervisor is not None:
                self.call(self._supervisor.aclose())
        finally:
            self._stop()

    def _stop(self) -> None:
        loop, thread = self._loop, self._thread
        if loop is not None and thread is not None:
            loop.call_soon_threadsafe(loop.stop)
            thread.join()
            loop.close()

    def call(self, coroutine: Coroutine[Any, Any, _T]) -> _T:
        """Run ``coroutine`` on the supervisor's loop and wait for its result here."""
        loop = self._loop
        if loop is None or not loop.is_running():
            coroutine.close()
            raise RuntimeError("the BackgroundSupervisor is not running")
        if threading.current_thread() is self._thread:
            coroutine.close()
            raise RuntimeError("the synchronous client was called from the supervisor's own "
                               "loop, which would wait for itself: use sup.openai_client()")
        future: Future[_T] = asyncio.run_coroutine_threadsafe(coroutine, loop)
        return future.result()

    def httpx_transport(self, *, priority: int = 0,
                        tenant: str | None = None) -> SyncOpenAITransport:
        return SyncOpenAITransport(self, priority=priority, tenant=tenant)

    def openai_client(self, *, priority: int = 0, tenant: str | None = None,
                      **kwargs: Any) -> openai.OpenAI:
        """A synchronous ``openai.OpenAI`` served by this supervisor (options as
        :meth:`Supervisor.openai_client`)."""
        _refuse_owned(kwargs)
        transport = self.httpx_transport(priority=priority, tenant=tenant)
        return openai.OpenAI(api_key=_PLACEHOLDER_KEY, base_url=self.supervisor.base_url,
                             max_retries=0,
                             http_client=openai.DefaultHttpxClient(transport=transport),
                             **kwargs)
