"""The supervisor: owns the TaskGroup, the shared governor and breaker, and every actor.

``chat`` runs a request actor in the caller's own task (a task per call would add a task
switch and, through its reference cycles, most of a call's garbage-collector time), under the
supervisor's watch all the same; ``stream`` spawns a stream actor, ``map`` fans a (possibly
endless) iterable of bodies out through a bounded window of actors. An actor that fails, even
on a bug, fails only its own call: its exception goes to its caller, never to the TaskGroup.
Closing drains: no new work, queued and backing-off work fails at once with
``SupervisorClosedError``, in-flight work gets ``drain_timeout`` seconds to finish, and then
nothing is left running.
"""

from __future__ import annotations

import asyncio
import os
import random
from collections.abc import (
    AsyncGenerator,
    AsyncIterable,
    AsyncIterator,
    Awaitable,
    Callable,
    Coroutine,
    Iterable,
    Mapping,
    Sequence,
)
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal, Self, TypeAlias, TypeVar, Unpack

from .. import telemetry
from ..clock import EMPTY_CONTEXT, Clock, MonotonicClock
from ..errors import (
    DeadlineExceededError,
    ProtocolError,
    SupervisorClosedError,
    TransportError,
)
from ..governance.governor import DEFAULT_WINDOW_MARGIN, Governor, GovernorStats
from ..governance.interface import GovernorProtocol
from ..governance.shared import RedisConfig, default_account
from ..limits import Limits
from ..observe import emit
from ..params import ChatParams, warn_unknown_keys
from ..policy import (
    AdaptPolicy,
    BreakerPolicy,
    FatalPolicy,
    ResumePolicy,
    RetryPolicy,
    SchedulePolicy,
    TelemetryPolicy,
    Timeouts,
)
from ..protocol.chunks import ChatResult, Delta
from ..protocol.classify import Action, classify_response
from ..protocol.tokens import DEFAULT_MAX_TOKENS
from ..redaction import redact_url, register_secret
from ..transport import RawResponse, Transport, TransportProtocol, cleartext_host, json_body
from .request import RequestActor
from .runtime import Runtime
from .stream import AwayCheck, DeltaChannel, StreamActor

if TYPE_CHECKING:
    from openai import AsyncOpenAI
    from redis.asyncio import Redis as RedisClient

    from ..openai_sdk import OpenAITransport

__all__ = [
    "DEFAULT_BASE_URL",
    "MapFailure",
    "MapResult",
    "MapSuccess",
    "Stream",
    "Supervisor",
    "SupervisorStats",
]

DEFAULT_BASE_URL = "https://api.moonshot.cn/v1"
#: Deltas a stream buffers for a consumer that does not read, by default (about 1 MB).
DEFAULT_STREAM_BUFFER = 256
_T = TypeVar("_T")
_warned_cleartext: set[str] = set()


def _warn_cleartext(base_url: str) -> None:
    """Say once per host and process that the key would travel in clear text."""
    host = cleartext_host(base_url)
    if host is not None and host not in _warned_cleartext:
        _warned_cleartext.add(host)
        emit("warning", "cleartext_api_key", host=host, base_url=redact_url(base_url),
             message=f"base_url is plain http:// to {host}: the API key is sent unencrypted; "
                     f"use https://")


@dataclass(frozen=True, slots=True, kw_only=True)
class SupervisorStats:
    """A snapshot of one supervisor. Token figures are Kimi's admission counts
    (prompt + max_tokens) for ``tokens_*`` and billed usage for ``prompt/completion_tokens``."""

    in_flight: int
    queued: int
    waiting: int
    actors: int
    submitted: int
    completed: int
    failed: int
    attempts: int
    retries: int
    resumes: int
    restarts: int
    length_continuations: int
    rate_limited: int
    overloaded: int
    server_errors: int
    transport_errors: int
    prompt_tokens: int
    completion_tokens: int
    usage_anomalies: int
    #: Retries that waited for the retry budget to have one (a spent budget slows, not fails).
    budget_waits: int
    tokens_reserved: int
    tokens_settled: int
    failures_by_type: Mapping[str, int]
    breaker_state: str
    breaker_trips: int
    governor: GovernorStats
    closed: bool
    #: True while a run-fatal error (rejected key, exhausted quota) makes new calls fail fast.
    account_refused: bool
    #: The latest attempt that could not reach the server or lost its connection.
    last_transport_error: TransportError | None


@dataclass(frozen=True, slots=True, kw_only=True)
class MapSuccess:
    """A ``Supervisor.map`` item that was answered: its position, its body and its result."""

    index: int
    request: Mapping[str, Any]
    result: ChatResult
    error: None = None

    @property
    def ok(self) -> Literal[True]:
        return True


@dataclass(frozen=True, slots=True, kw_only=True)
class MapFailure:
    """A ``Supervisor.map`` item that failed: its position, its body and its error."""

    index: int
    request: Mapping[str, Any]
    error: BaseException
    result: None = None

    @property
    def ok(self) -> Literal[False]:
        return False


#: One finished item of ``Supervisor.map``. ``if item.ok:`` narrows it for a type checker:
#: ``item.result`` is then a :class:`ChatResult`, else ``item.error`` is the exception.
MapResult: TypeAlias = MapSuccess | MapFailure


class _InlineCall:
    """A chat call running in its caller's task, as the supervisor sees it."""

    __slots__ = ("_finished", "cancelling", "stopped", "task")

    def __init__(self, task: asyncio.Task[Any]) -> None:
        self.task = task
        self.cancelling = task.cancelling()
        self.stopped = False
        self._finished: asyncio.Future[None] | None = None

    def finished(self) -> asyncio.Future[None]:
        """Done once the call has returned or raised (made on demand: only a drain waits)."""
        if self._finished is None:
            self._finished = asyncio.get_running_loop().create_future()
        return self._finished

    def finish(self) -> None:
        if self._finished is not None and not self._finished.done():
            self._finished.set_result(None)

    def stop(self) -> None:
        """Past the drain: interrupt the call where it waits."""
        if not self.stopped:
            self.stopped = True
            self.task.cancel()


class Stream:
    """An open stream. ``async for delta in stream`` yields :class:`Delta` objects as they
    arrive; a delta with ``restart=True`` means: discard everything received so far. After
    the iteration, ``result`` is the assembled :class:`ChatResult`. Errors are raised from
    the iteration after every delta received before them was delivered."""

    def __init__(self, supervisor: Supervisor, body: dict[str, Any], *, buffer: int,
                 timeout: float | None, priority: int,
                 headers: Mapping[str, str] | None, tenant: str | None = None) -> None:
        self._supervisor = supervisor
        self._channel = DeltaChannel(buffer, supervisor._away)
        self._actor = StreamActor(supervisor._runtime, body, self._channel, priority=priority,
                                  deadline=supervisor._deadline(timeout), headers=headers,
                                  tenant=tenant)
        self._timeout = timeout
        self._task: asyncio.Task[None] | None = None
        self._finished = False
        self._result: ChatResult | None = None
        self._error: BaseException | None = None

    async def __aenter__(self) -> Self:
        self._task = self._supervisor._spawn(self._run())
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        task = self._task
        if task is not None and not task.done():
            task.cancel()
            await asyncio.wait([task])

    async def _run(self) -> None:
        # Supervisor._guarded written out: one coroutine less held by every open stream.
        runtime = self._supervisor._runtime
        runtime.counters.submitted += 1
        try:
            run = self._actor.run()
            self._result = await (run if self._timeout is None
                                  else self._supervisor._within(run, self._timeout))
        except asyncio.CancelledError:
            self._error = SupervisorClosedError("the supervisor closed before the stream ended")
            raise
        except BaseException as exc:
            self._error = exc
            if not isinstance(exc, Exception):
                raise
            runtime.failed(exc)
        else:
            runtime.counters.completed += 1
        finally:
            self._finished = True
            self._channel.close()

    def __aiter__(self) -> Self:
        return self

    def __anext__(self) -> Awaitable[Delta]:
        # Nothing waiting and nobody reading the body: the consumer's own read is the
        # awaitable, one coroutine per delta instead of two. (Only an entered stream's actor
        # offers a body to read.)
        reader = self._channel.puller()
        return self._next() if reader is None else reader.pull(self._next)

    async def _next(self) -> Delta:
        if self._task is None:
            raise RuntimeError("use the stream as `async with sup.stream(...) as stream:`")
        channel = self._channel
        while (delta := channel.get_nowait()) is None:
            if channel.closed:
                if self._error is not None:
                    raise self._error
                raise StopAsyncIteration
            if (delta := await channel.refill()) is not None:
                break
        return delta

    def ready(self) -> list[Delta]:
        """Every delta received and not yet taken, without waiting (empty when none is): a
        consumer that handles deltas in batches takes one, then what else is ready."""
        return self._channel.take_ready()

    @property
    def buffered(self) -> int:
        """Deltas received and not yet taken by this consumer (at most the buffer size)."""
        return self._channel.buffered

    @property
    def request_id(self) -> str | None:
        return self._actor.request_id

    @property
    def done(self) -> bool:
        return self._finished

    @property
    def result(self) -> ChatResult:
        """The assembled answer; raises the stream's error, or RuntimeError before the end."""
        if self._error is not None:
            raise self._error
        if self._result is None:
            raise RuntimeError("the stream has not finished: iterate it to the end first")
        return self._result

    async def collect(self) -> ChatResult:
        """Drain the remaining deltas and return the result."""
        async for _ in self:
            pass
        return self.result


class Supervisor:
    """Runs chat requests and streams against one account, within its limits.

    ``api_key`` defaults to ``$MOONSHOT_API_KEY`` and ``base_url`` to ``$MOONSHOT_BASE_URL``
    or the China endpoint. ``limits`` defaults to tier 1; a 429 that names the account's real,
    lower limit lowers it automatically. ``governor`` plugs in another implementation of
    :class:`~kimi_actors.governance.interface.GovernorProtocol` (one shared by processes,
    say) instead of the in-memory one. ``redis`` (a URL, a ``redis.asyncio.Redis`` or a
    :class:`~kimi_actors.RedisConfig`) shares the limits with every process of the account
    through Redis (docs/deployment.md); ``transport`` another
    :class:`~kimi_actors.transport.TransportProtocol` (``ScriptedTransport`` in tests), which
    then holds the key, the base URL and the timeouts. Use it as
    ``async with Supervisor(...) as sup:``.
    """

    def __init__(self, *, api_key: str | None = None, base_url: str | None = None,
                 limits: Limits | None = None, retry: RetryPolicy | None = None,
                 breaker: BreakerPolicy | None = None, resume: ResumePolicy | None = None,
                 timeouts: Timeouts | None = None, clock: Clock | None = None,
                 rng: random.Random | None = None,
                 default_max_tokens: int = DEFAULT_MAX_TOKENS,
                 stream_buffer: int = DEFAULT_STREAM_BUFFER,
                 window_margin: float = DEFAULT_WINDOW_MARGIN,
                 headers: Mapping[str, str] | None = None, drain_timeout: float = 30.0,
                 fatal: FatalPolicy | None = None,
                 adapt: AdaptPolicy | None = None, schedule: SchedulePolicy | None = None,
                 governor: GovernorProtocol | None = None,
                 redis: str | RedisClient | RedisConfig | None = None,
                 transport: TransportProtocol | None = None,
                 telemetry: TelemetryPolicy | None = None) -> None:
        key = api_key if api_key is not None else os.environ.get("MOONSHOT_API_KEY")
        if not key and transport is None:
            raise ValueError("no API key: pass api_key= or set MOONSHOT_API_KEY")
        if stream_buffer < 1:
            raise ValueError(f"stream_buffer must be >= 1, got {stream_buffer}")
        register_secret(key)
        if governor is not None and limits is not None:
            raise ValueError("pass limits= or governor=, not both: a governor has its own")
        self.limits = (governor.limits if governor is not None
                       else limits if limits is not None else Limits.tier(1))
        if transport is not None and (timeouts is not None or base_url is not None):
            raise ValueError("pass timeouts= and base_url= to the transport, not both")
        self.timeouts = transport.timeouts if transport is not None else timeouts or Timeouts()
        self.drain_timeout = drain_timeout
        self._clock = clock or MonotonicClock()
        self._stream_buffer = stream_buffer
        if governor is not None and redis is not None:
            raise ValueError("pass governor= or redis=, not both: redis= builds the governor")
        base = (transport.base_url if transport is not None
                else base_url or os.environ.get("MOONSHOT_BASE_URL") or DEFAULT_BASE_URL)
        if redis is not None:
            governor = _shared_governor(RedisConfig.of(redis), self.limits, clock=self._clock,
                                        account=default_account(key or "", base),
                                        window_margin=window_margin)
        elif governor is None:
            governor = Governor(self.limits, clock=self._clock, window_margin=window_margin)
        if transport is None:
            assert key is not None
            _warn_cleartext(base)
            transport = Transport(base_url=base, api_key=key, timeouts=self.timeouts,
                                  pool_size=self.limits.concurrency, headers=headers)
        self._runtime = Runtime(
            transport=transport, governor=governor, clock=self._clock,
            rng=rng or random.Random(), retry=retry or RetryPolicy(),
            breaker=breaker or BreakerPolicy(), resume=resume or ResumePolicy(),
            default_max_tokens=default_max_tokens, fatal=fatal, adapt=adapt, schedule=schedule,
            window_margin=window_margin, telemetry=telemetry)
        self._group: asyncio.TaskGroup | None = None
        self._dispatcher: asyncio.Task[None] | None = None
        self._actors: set[asyncio.Task[Any]] = set()
        #: The chat calls running in their callers' tasks.
        self._calls: set[_InlineCall] = set()
        self._away = AwayCheck()
        self._closing = False
        self._closed = False

    def __repr__(self) -> str:
        state = "closed" if self._closed else "closing" if self._closing else "open"
        return (f"Supervisor(base_url={redact_url(self._runtime.transport.base_url)!r}, "
                f"limits={self.limits!r}, {state})")

    # -- lifecycle ---------------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        if self._group is not None or self._closed:
            raise RuntimeError("a Supervisor can be entered once")
        self._group = asyncio.TaskGroup()
        await self._group.__aenter__()
        self._dispatcher = self._group.create_task(self._runtime.gate.run(),
                                                   name="kimi_actors.gate")
        telemetry.register(self)
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        await self.aclose()

    async def aclose(self, timeout: float | None = None) -> None:
        """Drain and stop: see the module docstring. ``timeout`` overrides ``drain_timeout``."""
        if self._closed or self._group is None:
            return
        self._closing = True
        telemetry.unregister(self)
        self._runtime.stop(SupervisorClosedError("the supervisor is closed"))
        actors = set(self._actors)
        calls: dict[asyncio.Future[Any], _InlineCall] = {
            call.finished(): call for call in self._calls}
        try:
            if actors or calls:
                limit = self.drain_timeout if timeout is None else timeout
                _, still_running = await asyncio.wait({*actors, *calls}, timeout=limit)
                for waiting in still_running:
                    call = calls.get(waiting)
                    if call is not None:
                        call.stop()
                    else:
                        waiting.cancel()
                if still_running:
                    await asyncio.wait(still_running)
        finally:
            if self._dispatcher is not None:
                self._dispatcher.cancel()
            await self._runtime.transport.close()
            group, self._group = self._group, None
            self._closed = True
            await group.__aexit__(None, None, None)

    @property
    def closed(self) -> bool:
        return self._closing

    def _check_open(self) -> None:
        if self._closing:
            raise SupervisorClosedError("the supervisor is closed")
        if self._group is None:
            raise SupervisorClosedError("the supervisor is not running: use it as "
                                        "`async with Supervisor(...) as sup:`")
        stopped = self._runtime.stopped
        if stopped is not None:
            raise stopped

    def _spawn(self, coro: Coroutine[Any, Any, _T]) -> asyncio.Task[_T]:
        assert self._group is not None
        task = self._group.create_task(coro)
        self._actors.add(task)
        task.add_done_callback(self._actors.discard, context=EMPTY_CONTEXT)
        return task

    def _deadline(self, timeout: float | None) -> float | None:
        return None if timeout is None else self._clock.now() + timeout

    async def _guarded(self, run: Awaitable[ChatResult], timeout: float | None) -> ChatResult:
        """Run an actor body with the caller's timeout, keeping the counters."""
        counters = self._runtime.counters
        counters.submitted += 1
        try:
            if timeout is None:
                result = await run
            else:
                result = await self._within(run, timeout)
        except Exception as exc:
            self._runtime.failed(exc)
            raise
        counters.completed += 1
        return result

    async def _within(self, run: Awaitable[ChatResult], timeout: float) -> ChatResult:
        """``run`` bounded by ``timeout`` on the supervisor's clock (as ``asyncio.timeout``
        does on the loop's: the expiry cancels this task, and only that cancellation becomes
        ``DeadlineExceededError``)."""
        task = asyncio.current_task()
        assert task is not None
        cancelling = task.cancelling()
        expired = False

        def expire() -> None:
            nonlocal expired
            expired = True
            task.cancel()

        timer = self._clock.call_later(timeout, expire)
        try:
            return await run
        except asyncio.CancelledError:
            if expired and task.uncancel() <= cancelling:
                raise DeadlineExceededError(
                    f"the request did not finish within its timeout of {timeout} s",
                    phase="deadline", timeout=timeout) from None
            raise
        finally:
            timer.cancel()

    @staticmethod
    def _body(body: Mapping[str, Any], extra_body: Mapping[str, Any] | None) -> dict[str, Any]:
        warn_unknown_keys(body)
        return {**body, **extra_body} if extra_body else dict(body)

    # -- the API -----------------------------------------------------------------------------

    async def chat(self, *, timeout: float | None = None, priority: int = 0,
                   tenant: str | None = None,
                   extra_body: Mapping[str, Any] | None = None,
                   extra_headers: Mapping[str, str] | None = None,
                   **body: Unpack[ChatParams]) -> ChatResult:
        """Send one chat completion (keyword arguments are the OpenAI chat body) and return
        the result once it succeeded, retrying where that can help. ``priority``: lower goes
        first; ``tenant``: whose share of the account it draws on (``SchedulePolicy``)."""
        self._check_open()
        actor = RequestActor(self._runtime, self._body(body, extra_body), priority=priority,
                             deadline=self._deadline(timeout), headers=extra_headers,
                             tenant=tenant)
        # Run in the caller's task, registered as one of the supervisor's actors: closing
        # waits for it, and past the drain it is interrupted with SupervisorClosedError (as
        # asyncio.timeout interrupts a task: cancel, then uncancel). _guarded's work is
        # written out here: one coroutine less on every resume of every call.
        task = asyncio.current_task()
        if task is None:
            raise RuntimeError("sup.chat() must be awaited inside a task")
        call = _InlineCall(task)
        self._calls.add(call)
        runtime = self._runtime
        runtime.counters.submitted += 1
        try:
            result = await (actor.run() if timeout is None
                            else self._within(actor.run(), timeout))
        except asyncio.CancelledError:
            if call.stopped and task.uncancel() <= call.cancelling:
                raise SupervisorClosedError(
                    "the supervisor closed before the request finished") from None
            raise
        except Exception as exc:
            runtime.failed(exc)
            raise
        finally:
            self._calls.discard(call)
            call.finish()
        runtime.counters.completed += 1
        return result

    def stream(self, *, timeout: float | None = None, priority: int = 0,
               tenant: str | None = None,
               buffer: int | None = None, extra_body: Mapping[str, Any] | None = None,
               extra_headers: Mapping[str, str] | None = None,
               **body: Unpack[ChatParams]) -> Stream:
        """Open a stream: ``async with sup.stream(model=..., messages=[...]) as stream:``.
        ``buffer`` is how many deltas wait for a consumer that does not read before the
        socket is paused (default ``stream_buffer``)."""
        self._check_open()
        return Stream(self, self._body(body, extra_body),
                      buffer=buffer or self._stream_buffer, timeout=timeout,
                      priority=priority, headers=extra_headers, tenant=tenant)

    async def map(self, requests: Iterable[Mapping[str, Any]] | AsyncIterable[Mapping[str, Any]],
                  *, stream: bool = False, window: int | None = None, priority: int = 0,
                  tenant: str | Callable[[Mapping[str, Any]], str | None] | None = None,
                  timeout: float | None = None) -> AsyncGenerator[MapResult, None]:
        """Send every body of ``requests`` and yield a :class:`MapResult` for each as it
        finishes (completion order). ``tenant`` names the tenant of every body, or is a
        function of the body that names it. At most ``window`` actors exist at once (default: twice
        the concurrency limit), so an iterable of any length runs in bounded memory. Errors
        are reported in the results, never raised, except run-fatal ones, which end the map.
        Closing the iterator (``async with contextlib.aclosing(sup.map(...))``, or letting it
        be collected after a ``break``) cancels what is still running."""
        self._check_open()
        limit = self.limits.concurrency
        window = window or max(16, 2 * (limit or 256))
        finished: asyncio.Queue[MapResult] = asyncio.Queue()
        pending: set[asyncio.Task[Any]] = set()
        source = _aiter(requests)
        exhausted = False
        index = yielded = 0
        try:
            while True:
                while (not exhausted and index - yielded < window
                       and self._runtime.halted is None):
                    try:
                        body = await anext(source)
                    except StopAsyncIteration:
                        exhausted = True
                        break
                    owner = tenant(body) if callable(tenant) else tenant
                    task = self._spawn(self._map_one(index, self._body(body, None), stream,
                                                     priority, owner, timeout, finished))
                    pending.add(task)
                    task.add_done_callback(pending.discard)
                    index += 1
                if index == yielded:
                    halted = self._runtime.halted
                    if halted is not None and not exhausted:
                        raise halted
                    return
                yielded += 1
                yield await finished.get()
        finally:
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending)

    async def _map_one(self, index: int, body: dict[str, Any], stream: bool, priority: int,
                       tenant: str | None, timeout: float | None,
                       finished: asyncio.Queue[MapResult]) -> None:
        actor: RequestActor | StreamActor
        if stream:
            actor = StreamActor(self._runtime, body, None, priority=priority,
                                deadline=self._deadline(timeout), tenant=tenant)
        else:
            actor = RequestActor(self._runtime, body, priority=priority,
                                 deadline=self._deadline(timeout), tenant=tenant)
        try:
            result = await self._guarded(actor.run(), timeout)
        except asyncio.CancelledError:
            if self._closing:  # cancelled by the drain: its consumer is owed an answer
                finished.put_nowait(MapFailure(index=index, request=body, error=(
                    SupervisorClosedError("the supervisor closed before the request finished"))))
            raise
        except Exception as exc:
            finished.put_nowait(MapFailure(index=index, request=body, error=exc))
        else:
            finished.put_nowait(MapSuccess(index=index, request=body, result=result))

    async def estimate_tokens(self, *, model: str, messages: Sequence[Mapping[str, Any]],
                              **body: Any) -> int:
        """Kimi's own prompt token count for a chat body (``/tokenizers/estimate-token-count``).
        Not governed: it is a cheap side call, not a completion."""
        self._check_open()
        data = await self._side_call("tokenizers/estimate-token-count",
                                     {"model": model, "messages": messages, **body})
        try:
            return int(data["data"]["total_tokens"])
        except (KeyError, TypeError, ValueError):
            raise ProtocolError(f"unexpected estimate-token-count answer: {data!r:.200}") \
                from None

    async def balance(self) -> Mapping[str, Any]:
        """The account balance (``/users/me/balance``): available, voucher and cash."""
        self._check_open()
        data = await self._side_call("users/me/balance")
        balance = data.get("data") if isinstance(data, Mapping) else None
        if not isinstance(balance, Mapping):
            raise ProtocolError(f"unexpected balance answer: {data!r:.200}")
        return balance

    async def models(self) -> list[str]:
        """The ids of the models this key may use (``/models``)."""
        self._check_open()
        data = await self._side_call("models")
        try:
            return [str(item["id"]) for item in data["data"]]
        except (KeyError, TypeError):
            raise ProtocolError(f"unexpected models answer: {data!r:.200}") from None

    async def _side_call(self, path: str, body: Mapping[str, Any] | None = None) -> Any:
        """GET ``path``, or POST ``body`` to it; a run-fatal answer counts as the account's."""
        transport = self._runtime.transport
        raw = await (transport.get(path) if body is None
                     else transport.post(path, json_body(body)))
        outcome = classify_response(raw.status, raw.headers, raw.body,
                                    wall_now=self._clock.wall())
        if outcome.error is not None:
            if outcome.action is Action.FATAL_RUN:
                self._runtime.record(outcome, None)
            raise outcome.error
        return outcome.body

    @property
    def server_address(self) -> str:
        """The API's host name (OpenTelemetry's ``server.address``)."""
        return self._runtime.server_address

    @property
    def base_url(self) -> str:
        """The API's base URL (credentials in it masked)."""
        return redact_url(self._runtime.transport.base_url)

    async def forward(self, method: str, path: str, body: bytes | None = None, *,
                      query: str = "", headers: Mapping[str, str] | None = None) -> RawResponse:
        """Send a request under the base URL as it is, with the key: not governed, not
        retried, its answer (errors included) returned as it came. For endpoints the actors
        do not serve (files, batches); the openai SDK's transport passes them through here.
        Needs the aiohttp transport (a scripted one has no ``forward``)."""
        self._check_open()
        forward = getattr(self._runtime.transport, "forward", None)
        if forward is None:
            raise TypeError(f"{type(self._runtime.transport).__name__} carries chat "
                            "completions only: it has no forward()")
        response: RawResponse = await forward(method, path, body, query=query,
                                              headers=headers)
        return response

    def openai_client(self, *, priority: int = 0, tenant: str | None = None,
                      **kwargs: Any) -> AsyncOpenAI:
        """A real ``openai.AsyncOpenAI`` whose every request goes through this supervisor
        (``pip install 'kimi-actors[openai]'``; see kimi_actors/openai_sdk.py). ``priority``
        and ``tenant`` are its requests' defaults; other keyword arguments go to the SDK,
        except ``api_key``, ``base_url``, ``http_client`` and ``max_retries``, which the
        supervisor sets (the key never enters the SDK client)."""
        from ..openai_sdk import openai_client

        return openai_client(self, priority=priority, tenant=tenant, **kwargs)

    def httpx_transport(self, *, priority: int = 0,
                        tenant: str | None = None) -> OpenAITransport:
        """The transport behind :meth:`openai_client`, for frameworks that take an httpx
        client: ``httpx2.AsyncClient(transport=sup.httpx_transport())`` (or ``httpx``'s)."""
        from ..openai_sdk import OpenAITransport

        return OpenAITransport(self, priority=priority, tenant=tenant)

    def statistics(self) -> SupervisorStats:
        rt = self._runtime
        counters = rt.counters.snapshot()
        governor = rt.gate.statistics()
        return SupervisorStats(
            **{name: getattr(counters, name) for name in counters.__dataclass_fields__},
            in_flight=governor.in_flight, queued=governor.queued, waiting=rt.waiting,
            actors=len(self._actors) + len(self._calls),
            tokens_reserved=governor.tokens_reserved, tokens_settled=governor.tokens_settled,
            breaker_state=rt.breaker.state(rt.clock.now()).value,
            breaker_trips=rt.breaker.trips,
            governor=governor, closed=self._closing,
            account_refused=rt.halted is not None,
            last_transport_error=rt.last_transport_error)


async def _aiter(items: Iterable[Any] | AsyncIterable[Any]) -> AsyncIterator[Any]:
    if isinstance(items, AsyncIterable):
        async for item in items:
            yield item
    else:
        for item in items:
            yield item


def _shared_governor(config: RedisConfig, limits: Limits, *, clock: Clock, account: str,
                     window_margin: float) -> GovernorProtocol:
    """The Redis governor, imported only when asked for (redis-py costs a tenth of a second)."""
    from ..governance.redis import RedisGovernor

    return RedisGovernor.from_config(config, limits, account=account, clock=clock,
                                     window_margin=window_margin)
