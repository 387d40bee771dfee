"""The account limiter: exact rolling windows, Kimi's order and messages (pure, no loop)."""

from __future__ import annotations

import pytest

from kimi_actors.limits import Limits
from kimi_actors.testing.limiter import FAKE_AK_ID, FAKE_UID, AccountLimiter

ACCOUNT = f"Your account {FAKE_UID}<{FAKE_AK_ID}> request reached organization"


def test_concurrency_admits_up_to_the_limit_and_frees_on_release() -> None:
    limiter = AccountLimiter(Limits(concurrency=2))
    assert limiter.admit(10, 0.0) is None
    assert limiter.admit(10, 0.0) is None
    rejection = limiter.admit(10, 0.0)
    assert rejection is not None
    assert rejection.reason == "concurrency"
    assert rejection.retry_after == 1
    assert rejection.message == f"{ACCOUNT} max concurrency: 2, please try again after 1 seconds"
    limiter.release()
    assert limiter.admit(10, 0.0) is None
    assert limiter.in_flight == 2
    assert limiter.peak_concurrency == 2


def test_rpm_window_is_rolling_and_exact() -> None:
    limiter = AccountLimiter(Limits(rpm=3, minute=10.0))
    for now in (0.0, 2.0, 4.0):
        assert limiter.admit(1, now) is None
        limiter.release()
    rejection = limiter.admit(1, 5.0)
    assert rejection is not None
    assert rejection.reason == "rpm"
    assert rejection.retry_after == 5
    assert rejection.message == f"{ACCOUNT} max RPM: 3, please try again after 5 seconds"
    late = limiter.admit(1, 9.999)
    assert late is not None
    assert late.retry_after == 1
    assert limiter.admit(1, 10.0) is None
    again = limiter.admit(1, 10.5)
    assert again is not None
    assert again.retry_after == 2
    assert limiter.peak_rpm == 3


def test_rpm_wait_accounts_for_every_request_that_must_expire() -> None:
    limiter = AccountLimiter(Limits(rpm=2, minute=10.0))
    assert limiter.admit(1, 0.0) is None
    assert limiter.admit(1, 3.0) is None
    limiter.set_limits(Limits(rpm=1, minute=10.0))
    rejection = limiter.admit(1, 4.0)
    assert rejection is not None
    assert rejection.retry_after == 9


def test_tpm_counts_admitted_tokens_and_reports_current_and_limit() -> None:
    limiter = AccountLimiter(Limits(tpm=100, minute=10.0))
    assert limiter.admit(40, 0.0) is None
    assert limiter.admit(60, 1.0) is None
    rejection = limiter.admit(1, 2.0)
    assert rejection is not None
    assert rejection.reason == "tpm"
    assert rejection.message == f"{ACCOUNT} TPM rate limit, current:101, limit:100"
    assert rejection.retry_after == 8
    big = limiter.admit(50, 2.0)
    assert big is not None
    assert big.retry_after == 9
    assert limiter.admit(40, 10.0) is None
    assert limiter.peak_tpm == 100


def test_a_request_larger_than_the_limit_waits_a_whole_window() -> None:
    limiter = AccountLimiter(Limits(tpm=100, minute=10.0))
    rejection = limiter.admit(101, 0.0)
    assert rejection is not None
    assert rejection.reason == "tpm"
    assert rejection.retry_after == 10


def test_tpd_uses_the_day_window() -> None:
    limiter = AccountLimiter(Limits(tpd=100, minute=1.0, day=50.0))
    assert limiter.admit(100, 0.0) is None
    limiter.release()
    rejection = limiter.admit(1, 30.0)
    assert rejection is not None
    assert rejection.reason == "tpd"
    assert rejection.message == f"{ACCOUNT} TPD rate limit, current:101, limit:100"
    assert rejection.retry_after == 20
    assert limiter.admit(1, 50.0) is None


def test_checks_run_in_kimis_order() -> None:
    limiter = AccountLimiter(Limits(concurrency=1, rpm=1, tpm=10, tpd=10))
    assert limiter.admit(10, 0.0) is None
    first = limiter.admit(10, 0.0)
    assert first is not None
    assert first.reason == "concurrency"
    limiter.release()
    second = limiter.admit(10, 0.0)
    assert second is not None
    assert second.reason == "rpm"
    limiter.set_limits(Limits(tpm=10, tpd=10))
    third = limiter.admit(10, 0.0)
    assert third is not None
    assert third.reason == "tpm"
    limiter.set_limits(Limits(tpd=10))
    fourth = limiter.admit(10, 0.0)
    assert fourth is not None
    assert fourth.reason == "tpd"


def test_rejected_requests_count_nowhere() -> None:
    limiter = AccountLimiter(Limits(rpm=1, tpm=1000, minute=10.0))
    assert limiter.admit(10, 0.0) is None
    limiter.release()
    for _ in range(5):
        assert limiter.admit(10, 1.0) is not None
    assert limiter.in_flight == 0
    assert limiter.admit(10, 10.0) is None
    assert limiter.peak_rpm == 1
    assert limiter.peak_tpm == 10


def test_measuring_without_enforcing_still_tracks_peaks() -> None:
    limiter = AccountLimiter(Limits(concurrency=1, rpm=1, tpm=5, minute=10.0), enforce=False)
    for now in (0.0, 1.0, 2.0):
        assert limiter.admit(5, now) is None
    assert limiter.peak_concurrency == 3
    assert limiter.peak_rpm == 3
    assert limiter.peak_tpm == 15
    assert limiter.admit(5, 11.5) is None
    assert limiter.peak_rpm == 3


def test_unlimited_limits_still_measure_the_minute() -> None:
    limiter = AccountLimiter(Limits(minute=1.0))
    for step in range(10):
        assert limiter.admit(1, step * 0.25) is None
        limiter.release()
    assert limiter.peak_rpm == 4
    assert limiter.peak_tpm == 4
    assert limiter.peak_concurrency == 1


def test_reset_peaks_starts_from_the_current_state_and_release_never_goes_negative() -> None:
    limiter = AccountLimiter(Limits(minute=10.0))
    for _ in range(3):
        assert limiter.admit(2, 0.0) is None
    limiter.release()
    limiter.reset_peaks()
    assert limiter.peak_concurrency == 2
    assert limiter.peak_rpm == 3
    assert limiter.peak_tpm == 6
    for _ in range(4):
        limiter.release()
    assert limiter.in_flight == 0


def test_dropping_the_tpd_limit_forgets_the_day() -> None:
    limiter = AccountLimiter(Limits(tpd=10, day=100.0))
    assert limiter.admit(10, 0.0) is None
    limiter.set_limits(Limits())
    limiter.set_limits(Limits(tpd=10, day=100.0))
    assert limiter.admit(10, 1.0) is None
    assert limiter.limits == Limits(tpd=10, day=100.0)


@pytest.mark.parametrize("start", [0.0, 1e6, 123456.789])
def test_retry_after_is_exact_despite_float_time(start: float) -> None:
    limiter = AccountLimiter(Limits(rpm=1, minute=0.3))
    assert limiter.admit(1, start) is None
    rejection = limiter.admit(1, start + 0.1)
    assert rejection is not None
    assert rejection.retry_after == 1
    limiter.release()
    assert limiter.admit(1, start + 0.3) is None
