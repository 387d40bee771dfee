"""kimi_actors: an asyncio actor runtime for the Kimi (Moonshot) chat API.

A supervisor spawns request and stream actors that share one governor (concurrency, RPM, TPM,
TPD) and one circuit breaker, retry in one place under a budget, and resume broken streams
through Kimi's Partial Mode.
"""

from __future__ import annotations

from .clock import Clock, FakeClock, MonotonicClock
from .errors import (
    APIError,
    AuthenticationError,
    BadRequestError,
    BatchInputError,
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
    RequestTimeoutError,
    ServerError,
    StreamError,
    SupervisorClosedError,
    TransportError,
)
from .limits import TIERS, Dimension, Limits
from .policy import BreakerPolicy, ResumeMode, ResumePolicy, RetryPolicy, Timeouts

__version__ = "0.1.0"

__all__ = [
    "TIERS",
    "APIError",
    "AuthenticationError",
    "BadRequestError",
    "BatchInputError",
    "BreakerPolicy",
    "CircuitOpenError",
    "Clock",
    "ConnectionFailedError",
    "ContentFilterError",
    "ContextLengthError",
    "Dimension",
    "EngineOverloadedError",
    "FakeClock",
    "IncompleteStreamError",
    "KimiError",
    "Limits",
    "ModelNotFoundError",
    "MonotonicClock",
    "NotFoundError",
    "PermissionDeniedError",
    "ProtocolError",
    "QuotaExhaustedError",
    "RateLimitError",
    "RequestTimeoutError",
    "ResumeMode",
    "ResumePolicy",
    "RetryPolicy",
    "ServerError",
    "StreamError",
    "SupervisorClosedError",
    "Timeouts",
    "TransportError",
    "__version__",
]
