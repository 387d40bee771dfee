"""Limits, policies, token estimates, the error tree, the clock and the public surface."""

from __future__ import annotations

import asyncio
import logging
import pickle
import random
import time
from pathlib import Path

import pytest
import structlog
from hypothesis import given
from hypothesis import strategies as st

import kimi_actors
from kimi_actors import (
    APIError,
    AuthenticationError,
    BreakerPolicy,
    Dimension,
    FakeClock,
    KimiError,
    Limits,
    MonotonicClock,
    QuotaExhaustedError,
    RateLimitError,
    ResumePolicy,
    RetryPolicy,
    Timeouts,
)
from kimi_actors.protocol.tokens import (
    admission_tokens,
    estimate_prompt_tokens,
    estimate_text_tokens,
    requested_max_tokens,
)

# -- limits ------------------------------------------------------------------------------------


def test_tier_presets_match_kimis_table() -> None:
    table = {0: (1, 3, 500_000, 1_500_000), 1: (50, 200, 2_000_000, None),
             2: (100, 500, 3_000_000, None), 3: (200, 5_000, 3_000_000, None),
             4: (400, 5_000, 4_000_000, None), 5: (1_000, 10_000, 5_000_000, None)}
    for tier, (concurrency, rpm, tpm, tpd) in table.items():
        limits = Limits.tier(tier)
        assert (limits.concurrency, limits.rpm, limits.tpm, limits.tpd) == \
            (concurrency, rpm, tpm, tpd)
        assert limits.window(Dimension.RPM) == 60.0
        assert limits.window(Dimension.TPD) == 86_400.0


def test_windows_can_be_shortened_for_tests() -> None:
    limits = Limits.tier(2, minute=1.5, day=30.0)
    assert limits.window(Dimension.TPM) == 1.5
    assert limits.window(Dimension.TPD) == 30.0
    assert limits.window(Dimension.CONCURRENCY) == 0.0
    assert limits.limit(Dimension.RPM) == 500


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"rpm": 0}, "rpm must be at least 1"), ({"tpm": -5}, "tpm must be at least 1"),
     ({"concurrency": 1.5}, "concurrency must be an int"), ({"rpm": True}, "must be an int"),
     ({"minute": 0}, "minute must be a positive"), ({"day": float("nan")}, "day must be")],
)
def test_nonsense_limits_are_rejected_clearly(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Limits(**kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize("tier", [-1, 6, True, "2"])
def test_unknown_tiers_are_rejected(tier: object) -> None:
    with pytest.raises(ValueError, match="unknown Kimi tier"):
        Limits.tier(tier)  # type: ignore[arg-type]


def test_overrides_replace_only_given_values() -> None:
    limits = Limits.tier(1).with_overrides(rpm=50, tpm=None)
    assert (limits.rpm, limits.tpm, limits.concurrency) == (50, 2_000_000, 50)
    assert Limits.unlimited() == Limits()


# -- policies ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("factory", "message"),
    [(lambda: RetryPolicy(max_attempts=0), "max_attempts"),
     (lambda: RetryPolicy(base=0), "base"), (lambda: RetryPolicy(base=10, cap=1), "exceed"),
     (lambda: RetryPolicy(budget_ratio=-1), "budget_ratio"),
     (lambda: BreakerPolicy(failure_rate=0), "failure_rate"),
     (lambda: BreakerPolicy(min_calls=0), "min_calls"),
     (lambda: BreakerPolicy(growth=0.5), "growth"),
     (lambda: BreakerPolicy(open_for=100, max_open_for=10), "max_open_for"),
     (lambda: ResumePolicy(max_resumes=-1), "max_resumes"),
     (lambda: Timeouts(read_idle=0), "read_idle")],
)
def test_bad_policies_are_rejected(factory: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        factory()  # type: ignore[operator]


# -- tokens ------------------------------------------------------------------------------------


def test_ascii_counts_four_characters_a_token_rounded_up() -> None:
    assert estimate_text_tokens("") == 0
    assert estimate_text_tokens("abcd") == 1
    assert estimate_text_tokens("abcde") == 2


def test_cjk_counts_a_token_per_character_and_emoji_two() -> None:
    assert estimate_text_tokens("你好世界") == 4
    assert estimate_text_tokens("こんにちは") == 5
    assert estimate_text_tokens("🙂") == 2
    assert estimate_text_tokens("héllo") == 1 + 1  # "hllo" -> 1, "é" -> half a token


@given(st.text(max_size=200), st.text(max_size=200))
def test_estimates_are_monotone_under_concatenation(a: str, b: str) -> None:
    # Rounding up per class can only over-count a split text, never under-count the whole.
    assert estimate_text_tokens(a + b) <= estimate_text_tokens(a) + estimate_text_tokens(b)
    assert estimate_text_tokens(a + b) >= max(estimate_text_tokens(a),
                                              estimate_text_tokens(b)) - 1


def test_prompt_estimate_counts_every_part_of_the_body() -> None:
    base = {"messages": [{"role": "user", "content": "hello there"}]}
    plain = estimate_prompt_tokens(base)
    with_name = estimate_prompt_tokens(
        {"messages": [{"role": "user", "content": "hello there", "name": "alice"}]})
    with_tools = estimate_prompt_tokens({**base, "tools": [{"type": "function", "function": {
        "name": "lookup", "parameters": {"type": "object"}}}]})
    with_parts = estimate_prompt_tokens({"messages": [{"role": "user", "content": [
        {"type": "text", "text": "hello there"}, {"type": "image_url", "image_url": "x"}]}]})
    assert with_name > plain
    assert with_tools > plain
    assert with_parts >= plain + 1000
    assert estimate_prompt_tokens({"messages": ["raw string"]}) > 0


def test_every_message_shape_is_estimated_without_raising() -> None:
    def one(message: object) -> int:
        return estimate_prompt_tokens({"messages": [message]})

    empty = one({"role": "assistant", "content": None})
    assert one({"role": "assistant", "content": None, "reasoning_content": "x" * 40}) \
        == empty + 10
    assert one({"role": "assistant", "content": None,
                "tool_calls": [{"id": "c1", "function": {"name": "f", "arguments": "{}"}}]}) \
        > empty
    assert one({"role": "user", "content": [{"type": "audio", "data": object()},
                                             "bare string part"]}) > empty
    assert one({"role": "user", "content": {"unexpected": ["shape", 1]}}) > empty


def test_admission_is_prompt_plus_max_tokens_times_choices() -> None:
    body = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 100}
    assert requested_max_tokens(body) == 100
    assert requested_max_tokens({**body, "n": 3}) == 300
    assert requested_max_tokens({"messages": []}, default=77) == 77
    assert requested_max_tokens({"max_completion_tokens": 9}) == 9
    assert admission_tokens(body) == estimate_prompt_tokens(body) + 100


# -- errors ------------------------------------------------------------------------------------


def test_errors_carry_structured_fields_and_flags() -> None:
    err = RateLimitError("slow down", status=429, error_type="rate_limit_reached_error",
                         request_id="req-1", retry_after=3.0, dimension=Dimension.RPM)
    assert isinstance(err, APIError)
    assert isinstance(err, KimiError)
    assert err.retryable
    assert not err.fatal_for_run
    assert (err.status, err.retry_after, err.dimension) == (429, 3.0, Dimension.RPM)
    assert str(err) == "HTTP 429 rate_limit_reached_error: slow down (request id req-1)"
    assert "retry_after=3.0" in repr(err)
    assert AuthenticationError("no", status=401).fatal_for_run
    assert QuotaExhaustedError("no", status=429).fatal_for_run


def test_errors_survive_pickling_with_their_fields() -> None:
    err = RateLimitError("slow", status=429, dimension=Dimension.TPM, retry_after=1.5)
    err.attempts = 4
    copy = pickle.loads(pickle.dumps(err))
    assert type(copy) is RateLimitError
    assert (copy.dimension, copy.retry_after, copy.attempts, str(copy)) == \
        (Dimension.TPM, 1.5, 4, str(err))


def test_every_error_is_under_the_one_root() -> None:
    import kimi_actors.errors as errors

    for name in errors.__all__:
        assert issubclass(getattr(errors, name), KimiError), name


# -- clock -------------------------------------------------------------------------------------


async def test_fake_clock_wakes_sleepers_in_deadline_order() -> None:
    clock = FakeClock(start=100.0)
    woke: list[str] = []

    async def sleeper(name: str, seconds: float) -> None:
        await clock.sleep(seconds)
        woke.append(name)

    tasks = [asyncio.create_task(sleeper("late", 5)), asyncio.create_task(sleeper("early", 2))]
    await clock.wait_for_sleepers(2)
    assert clock.next_deadline() == 102.0
    clock.advance(3)
    await asyncio.sleep(0)
    assert woke == ["early"]
    clock.advance(2)
    await asyncio.gather(*tasks)
    assert woke == ["early", "late"]
    assert clock.now() == 105.0
    assert clock.sleepers == 0
    with pytest.raises(ValueError, match="forward"):
        clock.advance(-1)


async def test_fake_clock_timers_can_be_cancelled_and_zero_sleeps_yield() -> None:
    clock = FakeClock()
    fired: list[int] = []
    handle = clock.call_later(1.0, lambda: fired.append(1))
    clock.call_later(2.0, lambda: fired.append(2))
    handle.cancel()
    clock.advance(5)
    assert fired == [2]
    await clock.sleep(0)
    assert "FakeClock" in repr(clock)


async def test_the_monotonic_clock_is_real_time() -> None:
    clock = MonotonicClock()
    # Readings bracket time.monotonic() and time.time(): the real clocks, not a copy of them.
    low = time.monotonic()
    reading = clock.now()
    assert low <= reading <= time.monotonic()
    low = time.time()
    wall = clock.wall()
    assert low <= wall <= time.time()
    # A timer fires through the running loop; a negative delay is taken as zero.
    fired = asyncio.Event()
    handle = clock.call_later(-5, fired.set)
    assert isinstance(handle, asyncio.TimerHandle)
    assert handle.when() <= asyncio.get_running_loop().time()
    await fired.wait()
    await clock.sleep(-1)  # a negative sleep returns at once instead of raising
    assert repr(clock) == "MonotonicClock()"


async def test_a_timer_runs_without_the_callers_context() -> None:
    import contextvars

    variable: contextvars.ContextVar[str] = contextvars.ContextVar("caller", default="none")
    variable.set("the caller's")
    seen: list[str] = []
    fired = asyncio.Event()

    def callback() -> None:
        seen.append(variable.get())
        fired.set()

    MonotonicClock().call_later(0, callback)
    await fired.wait()
    assert seen == ["none"]


def test_an_injected_random_source_makes_backoff_reproducible() -> None:
    from kimi_actors.governance.backoff import backoff_delay

    policy = RetryPolicy()
    first = [backoff_delay(n, policy, random.Random(5)) for n in range(1, 8)]
    second = [backoff_delay(n, policy, random.Random(5)) for n in range(1, 8)]
    assert first == second
    # The delay is drawn from the source given: another seed gives other delays, and the
    # draw is the source's own uniform over [0, ceiling].
    assert [backoff_delay(n, policy, random.Random(6)) for n in range(1, 8)] != first
    assert first[0] == random.Random(5).uniform(0.0, policy.base)


# -- public surface ----------------------------------------------------------------------------


def test_public_all_is_exactly_the_documented_surface() -> None:
    expected = {
        "APIError", "AdaptPolicy", "SchedulePolicy", "TelemetryPolicy", "TenantPolicy",
        "TenantStats",
        "AuthenticationError", "BadRequestError", "BatchInputError", "BreakerPolicy",
        "ChatResult", "Choice", "CircuitOpenError", "Clock", "ConnectionFailedError",
        "ContentFilterError", "ContextLengthError", "DEFAULT_BASE_URL", "Delta", "Dimension",
        "DimensionStats", "EngineOverloadedError", "FakeClock", "FatalMode", "FatalPolicy",
            "GovernorStats",
        "IncompleteStreamError", "KimiError", "LimitExceededError", "Limits", "MapResult",
            "MapSuccess", "MapFailure", "Message", "Function", "ChatParams", "TimeoutPhase",
            "ConnectTimeoutError", "DeadlineExceededError", "FirstByteTimeoutError",
            "ReadIdleTimeoutError", "ResponseTimeoutError",
        "ModelNotFoundError", "MonotonicClock", "NotFoundError", "PermissionDeniedError",
        "ProtocolError", "QuotaExhaustedError", "RateLimitError", "RedirectError",
            "RequestTimeoutError", "RedisConfig", "SharedGovernorError", "SharedStats",
        "ResumeMode", "ResumePolicy", "RetryPolicy", "ServerError", "Stream", "StreamError",
        "Supervisor", "SupervisorClosedError", "SupervisorStats", "TIERS", "Timeouts",
        "ToolCall", "TransportError", "Usage", "__version__", "admission_tokens",
        "estimate_prompt_tokens", "estimate_text_tokens",
    }
    assert set(kimi_actors.__all__) == expected
    assert len(kimi_actors.__all__) == len(expected)
    for name in kimi_actors.__all__:
        assert hasattr(kimi_actors, name), name


def _flags_table() -> dict[str, list[str]]:
    text = (Path(__file__).resolve().parents[1] / "docs" / "errors.md").read_text()
    start = text.index("| error | retryable |")
    rows = {}
    for line in text[start:].splitlines()[2:]:
        if not line.startswith("|"):
            break
        name, *cells = (cell.strip() for cell in line.strip("|").split("|"))
        rows[name] = cells
    return rows


def test_docs_errors_table_is_the_flags_of_the_classes() -> None:
    """docs/errors.md's table is read from the classes, the one source of their behaviour."""
    import kimi_actors.errors as errors

    def yes(value: bool) -> str:
        return "yes" if value else "no"

    rows = _flags_table()
    assert set(rows) == set(errors.__all__)
    for name, cells in rows.items():
        cls = getattr(errors, name)
        trips = ("at the concurrency floor" if cls.pushback == "overload"
                 else "before a stream flowed" if cls.trips_breaker and not cls.mid_stream
                 else yes(cls.trips_breaker))
        assert cells == [yes(cls.retryable), yes(cls.fatal_for_run), trips,
                         yes(cls.spends_budget), yes(cls.counts_attempts), yes(cls.final),
                         cls.counter or ""], name


# -- the default logger --------------------------------------------------------------------


def test_the_default_logger_renders_sorted_key_values_redacted(
        caplog: pytest.LogCaptureFixture) -> None:
    from kimi_actors.observe import emit, register_secret, set_logger

    set_logger(None)
    caplog.set_level(logging.DEBUG, logger="kimi_actors")
    secret = "sk-foundation-logger-0123456789"
    register_secret(secret)
    emit("info", "example_event", zeta=1, alpha=f"key {secret} here",
         nested={"b": ["Bearer xyz123456789"]}, pair=("a", secret))
    record = caplog.records[-1]
    assert record.name == "kimi_actors"
    assert record.levelno == logging.INFO
    assert record.getMessage() == (
        "event='example_event' alpha='key [redacted] here' level='info' "
        "nested={'b': ['Bearer [redacted]']} pair=('a', '[redacted]') zeta=1")


def test_the_default_logger_renders_tracebacks_and_honours_the_stdlib_level(
        caplog: pytest.LogCaptureFixture) -> None:
    from kimi_actors.observe import emit, set_logger

    set_logger(None)
    caplog.set_level(logging.WARNING, logger="kimi_actors")
    emit("info", "below_the_level")
    try:
        raise ValueError("boom")
    except ValueError:
        emit("error", "with_traceback", exc_info=True)
    emit("warning", "failed_over", error=KeyError("k"))
    messages = [record.getMessage() for record in caplog.records]
    assert len(messages) == 2  # the info event was filtered before rendering
    assert messages[0].startswith("event='with_traceback' exception='Traceback (most recent")
    assert "ValueError: boom" in messages[0]
    assert messages[0].endswith("level='error'")
    assert messages[1] == "event='failed_over' error=\"KeyError: 'k'\" level='warning'"


def test_stdlib_records_carry_the_fields_as_attributes_redacted(
        caplog: pytest.LogCaptureFixture) -> None:
    from kimi_actors.observe import emit, register_secret, set_logger

    set_logger(None)
    caplog.set_level(logging.INFO, logger="kimi_actors")
    secret = "sk-foundation-extra-0123456789"
    register_secret(secret)
    emit("warning", "rate_limited", request_id="r-1", delay=1.5, message=f"echo {secret}",
         dimension="rpm")
    record = caplog.records[-1]
    fields = record.__dict__
    assert (fields["event"], fields["request_id"], fields["delay"], fields["dimension"]) == (
        "rate_limited", "r-1", 1.5, "rpm")
    assert fields["kimi_message"] == "echo [redacted]"  # "message" is the record's own
    assert fields["level"] == "warning"
    assert record.msg == "%s"  # rendered only when formatted, never stored as text
    assert secret not in record.getMessage()
    # The record points at the code that emitted the event, not at the logging helper.
    assert record.funcName == "test_stdlib_records_carry_the_fields_as_attributes_redacted"


def test_a_structlog_configuration_of_the_application_receives_the_events() -> None:
    from kimi_actors.observe import emit, register_secret, set_logger

    set_logger(None)
    secret = "sk-foundation-structlog-0123456789"
    register_secret(secret)
    capture = structlog.testing.LogCapture()
    structlog.configure(processors=[capture])
    try:
        emit("info", "stream_resumed", request_id="r-2", reason=f"key {secret}")
    finally:
        structlog.reset_defaults()
    assert capture.entries == [{"event": "stream_resumed", "request_id": "r-2",
                                "reason": "key [redacted]", "log_level": "info"}]


# -- the redactor, exactly ----------------------------------------------------------------


@pytest.mark.parametrize(("url", "shown"), [
    ("http://user:pa:ss@host:8/v1?key=abc&x=1&flag&a=b=c",
     "http://user:[redacted]@host:8/v1?key=[redacted]&x=[redacted]&flag&a=[redacted]"),
    ("https://us@er:p@ss@api.example/v1", "https://us@er:[redacted]@api.example/v1"),
    ("https://token@api.example/v1", "https://[redacted]@api.example/v1"),
    ("https://api.example/v1/sk-abcdefghijklmnopqrstu", "https://api.example/v1/[redacted]"),
    ("http://[bad/sk-abcdefghijklmnopqrstu", "http://[bad/[redacted]"),  # not a URL at all
    ("https://api.moonshot.ai/v1", "https://api.moonshot.ai/v1"),
])
def test_redact_url_masks_passwords_and_query_values_exactly(url: str, shown: str) -> None:
    from kimi_actors.redaction import redact_url

    assert redact_url(url) == shown


def test_redact_bytes_keeps_bytes_that_are_not_utf8_and_returns_clean_data_as_is() -> None:
    from kimi_actors.redaction import redact_bytes

    dirty = b"\xff key sk-abcdefghijklmnopqrst \xfe \xc3\xa9"
    assert redact_bytes(dirty) == b"\xff key [redacted] \xfe \xc3\xa9"
    clean = b"\xff nothing secret here \xc3\xa9"
    assert redact_bytes(clean) is clean


def test_a_secret_of_the_minimum_length_is_registered() -> None:
    from kimi_actors.redaction import _MIN_SECRET, redact_text, register_secret

    secret = "q" * (_MIN_SECRET - 4) + "7Zx9"
    register_secret(secret)
    assert secret not in redact_text(f"echo {secret}")


def test_a_secret_inside_a_longer_one_does_not_leave_the_longer_ones_ends() -> None:
    from kimi_actors.redaction import redact_text, register_secret

    short = "zzzz-inner-secret-0451"
    long = "leakprefix-" + short + "-leaksuffix"
    register_secret(short)
    register_secret(long)
    shown = redact_text(f"server said {long}")
    assert "leakprefix" not in shown
    assert "leaksuffix" not in shown
