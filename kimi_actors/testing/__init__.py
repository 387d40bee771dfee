"""FakeKimi: a faithful Kimi API server for tests, demos and benchmarks.

Three ways to use it: ``async with FakeKimi(...) as fake:`` in any asyncio code, the
``fake_kimi`` pytest fixture (installed with the package), and ``kimi-actors fake-server`` on
the command line. See docs/testing.md.
"""

from __future__ import annotations

from ..clock import FakeClock
from .faults import Faults, Latency
from .replies import (
    DEFAULT_MODELS,
    Reply,
    ToolCall,
    context_length,
    count_prompt_tokens,
    expected_reply,
    expected_tool_call,
)
from .scripted import Fail, Gap, Respond, ScriptedTransport, SentRequest, Then, chunk_events
from .server import FAKE_API_KEY, FakeKimi, FakeStats

__all__ = [
    "DEFAULT_MODELS",
    "FAKE_API_KEY",
    "Fail",
    "FakeClock",
    "FakeKimi",
    "FakeStats",
    "Faults",
    "Gap",
    "Latency",
    "Reply",
    "Respond",
    "ScriptedTransport",
    "SentRequest",
    "Then",
    "ToolCall",
    "chunk_events",
    "context_length",
    "count_prompt_tokens",
    "expected_reply",
    "expected_tool_call",
]
