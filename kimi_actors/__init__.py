"""kimi_actors: an asyncio actor runtime for the Kimi (Moonshot) chat API.

A supervisor spawns request and stream actors that share one governor (concurrency, RPM, TPM,
TPD) and one circuit breaker, retry in one place under a budget, and resume broken streams
through Kimi's Partial Mode.

The public surface is this module's ``__all__``, ``kimi_actors.testing`` (FakeKimi, the
scripted transport, FakeClock), ``kimi_actors.batch`` (the runner behind ``kimi-actors
run``) and ``kimi_actors.openai_sdk`` (the openai SDK on a supervisor; needs the ``openai``
extra). The subpackages ``actors``, ``governance`` and ``protocol`` are internal: their names
may move between releases.
"""

from __future__ import annotations

from .actors.supervisor import (
    DEFAULT_BASE_URL,
    MapFailure,
    MapResult,
    MapSuccess,
    Stream,
    Supervisor,
    SupervisorStats,
)
from .clock import Clock, FakeClock, MonotonicClock
from .errors import (
    APIError,
    AuthenticationError,
    BadRequestError,
    BatchInputError,
    CircuitOpenError,
    ConnectionFailedError,
    ConnectTimeoutError,
    ContentFilterError,
    ContextLengthError,
    DeadlineExceededError,
    EngineOverloadedError,
    FirstByteTimeoutError,
    IncompleteStreamError,
    KimiError,
    LimitExceededError,
    ModelNotFoundError,
    NotFoundError,
    PermissionDeniedError,
    ProtocolError,
    QuotaExhaustedError,
    RateLimitError,
    ReadIdleTimeoutError,
    RedirectError,
    RequestTimeoutError,
    ResponseTimeoutError,
    ServerError,
    SharedGovernorError,
    StreamError,
    SupervisorClosedError,
    TransportError,
)
from .governance.governor import DimensionStats, GovernorStats, SharedStats, TenantStats
from .governance.shared import RedisConfig
from .limits import TIERS, Dimension, Limits
from .params import ChatParams
from .policy import (
    AdaptPolicy,
    BreakerPolicy,
    FatalMode,
    FatalPolicy,
    ResumeMode,
    ResumePolicy,
    RetryPolicy,
    SchedulePolicy,
    TelemetryPolicy,
    TenantPolicy,
    TimeoutPhase,
    Timeouts,
)
from .protocol.results import ChatResult, Choice, Delta, Function, Message, ToolCall, Usage
from .protocol.tokens import admission_tokens, estimate_prompt_tokens, estimate_text_tokens

__version__ = "0.1.0"

__all__ = [
    "DEFAULT_BASE_URL",
    "TIERS",
    "APIError",
    "AdaptPolicy",
    "AuthenticationError",
    "BadRequestError",
    "BatchInputError",
    "BreakerPolicy",
    "ChatParams",
    "ChatResult",
    "Choice",
    "CircuitOpenError",
    "Clock",
    "ConnectTimeoutError",
    "ConnectionFailedError",
    "ContentFilterError",
    "ContextLengthError",
    "DeadlineExceededError",
    "Delta",
    "Dimension",
    "DimensionStats",
    "EngineOverloadedError",
    "FakeClock",
    "FatalMode",
    "FatalPolicy",
    "FirstByteTimeoutError",
    "Function",
    "GovernorStats",
    "IncompleteStreamError",
    "KimiError",
    "LimitExceededError",
    "Limits",
    "MapFailure",
    "MapResult",
    "MapSuccess",
    "Message",
    "ModelNotFoundError",
    "MonotonicClock",
    "NotFoundError",
    "PermissionDeniedError",
    "ProtocolError",
    "QuotaExhaustedError",
    "RateLimitError",
    "ReadIdleTimeoutError",
    "RedirectError",
    "RedisConfig",
    "RequestTimeoutError",
    "ResponseTimeoutError",
    "ResumeMode",
    "ResumePolicy",
    "RetryPolicy",
    "SchedulePolicy",
    "ServerError",
    "SharedGovernorError",
    "SharedStats",
    "Stream",
    "StreamError",
    "Supervisor",
    "SupervisorClosedError",
    "SupervisorStats",
    "TelemetryPolicy",
    "TenantPolicy",
    "TenantStats",
    "TimeoutPhase",
    "Timeouts",
    "ToolCall",
    "TransportError",
    "Usage",
    "__version__",
    "admission_tokens",
    "estimate_prompt_tokens",
    "estimate_text_tokens",
]
