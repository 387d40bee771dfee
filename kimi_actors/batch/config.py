"""``kimi-actors run`` options: the argparse definitions and the frozen config they produce.

The config holds the *name* of the environment variable with the key, never the key: it can be
printed, logged and turned back into a command line (:meth:`RunConfig.to_argv`) safely.
"""

from __future__ import annotations

import argparse
import math
import os
import re
import shlex
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..actors.supervisor import DEFAULT_BASE_URL
from ..governance.shared import RedisConfig, Unreachable
from ..limits import DAY, MINUTE, TIERS, Limits
from ..policy import RetryPolicy
from ..redaction import redact_url

if TYPE_CHECKING:
    from ..testing.faults import Faults

__all__ = [
    "BASE_URL_ENV",
    "DEFAULT_API_KEY_ENV",
    "DEFAULT_BASE_URL",
    "DEFAULT_TIER",
    "RunConfig",
    "add_run_arguments",
    "config_from_args",
]

DEFAULT_API_KEY_ENV = "MOONSHOT_API_KEY"
#: Where the base URL comes from when --base-url is not given (the library reads it too).
BASE_URL_ENV = "MOONSHOT_BASE_URL"
#: The tier whose limits apply to every limit not given: the first paid tier, so a run is never
#: unlimited by accident and a tier-1 account (the common case) runs at full speed.
DEFAULT_TIER = 1
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_LIMIT_NAMES = ("concurrency", "rpm", "tpm", "tpd")


def _check_optional_positive_int(name: str, value: int | None) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"RunConfig.{name} must be an int >= 1, got {value!r}")


@dataclass(frozen=True, slots=True, kw_only=True)
class RunConfig:
    """One ``kimi-actors run``.

    Limits: a limit given explicitly (``concurrency``, ``rpm``, ``tpm``, ``tpd``) wins; every
    other one comes from ``tier``, or from tier :data:`DEFAULT_TIER` when no tier is given.
    ``window_seconds`` (only with ``fake``) shortens the "minute" of RPM/TPM, and the day of TPD
    in proportion, so demos and tests run a window in a second or two. ``fake_faults`` (only
    with ``fake``) is a FakeKimi fault spec, checked here so a typo fails before the run.
    """

    input: Path
    output: Path | None = None
    tier: int | None = None
    concurrency: int | None = None
    rpm: int | None = None
    tpm: int | None = None
    tpd: int | None = None
    base_url: str = DEFAULT_BASE_URL
    api_key_env: str = DEFAULT_API_KEY_ENV
    model: str | None = None
    max_attempts: int = 6
    stream: bool = False
    fake: bool = False
    dry_run: bool = False
    skip_bad: bool = False
    window_seconds: float | None = None
    fake_faults: str | None = None
    redis: str | None = None
    redis_unreachable: Unreachable = "wait"
    #: The body field (dotted for a nested one) that names each request's tenant.
    tenant_field: str | None = None
    #: Where to write the run's HTML report (charts of rates, 429s, latency, errors).
    report: Path | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "input", Path(self.input))
        if self.output is None:
            if not self.dry_run:
                raise ValueError("an output file is needed (--output OUT.jsonl), except for a "
                                 "dry run")
        else:
            object.__setattr__(self, "output", Path(self.output))
            if os.path.abspath(self.input) == os.path.abspath(self.output):
                raise ValueError(f"the output must be another file than the input "
                                 f"({self.input})")
        if self.tier is not None and (isinstance(self.tier, bool) or self.tier not in TIERS):
            raise ValueError(f"RunConfig.tier must be one of 0-5, got {self.tier!r}")
        for name in _LIMIT_NAMES:
            _check_optional_positive_int(name, getattr(self, name))
        if isinstance(self.max_attempts, bool) or not isinstance(self.max_attempts, int) \
                or self.max_attempts < 1:
            raise ValueError(f"RunConfig.max_attempts must be an int >= 1, "
                             f"got {self.max_attempts!r}")
        if not isinstance(self.base_url, str) \
                or not self.base_url.startswith(("http://", "https://")):
            raise ValueError(f"RunConfig.base_url must start with http:// or https://, "
                             f"got {self.base_url!r}")
        if not isinstance(self.api_key_env, str) or not _ENV_NAME.fullmatch(self.api_key_env):
            raise ValueError(f"RunConfig.api_key_env must be an environment variable name, "
                             f"got {self.api_key_env!r}")
        if self.model is not None and (not isinstance(self.model, str) or not self.model):
            raise ValueError(f"RunConfig.model must be a non-empty string or None, "
                             f"got {self.model!r}")
        if self.window_seconds is not None:
            if (isinstance(self.window_seconds, bool)
                    or not isinstance(self.window_seconds, int | float)
                    or not math.isfinite(self.window_seconds) or self.window_seconds <= 0):
                raise ValueError(f"RunConfig.window_seconds must be a positive number, "
                                 f"got {self.window_seconds!r}")
            if not self.fake:
                raise ValueError("window_seconds needs fake: against a real server a minute "
                                 "lasts 60 s, and a shorter one would overrun its limits")
        if self.fake_faults is not None:
            if not self.fake:
                raise ValueError("fake_faults needs fake: faults are injected by the embedded "
                                 "FakeKimi")
            self.faults()
        if self.redis is not None and (not isinstance(self.redis, str) or not self.redis
                                       .startswith(("redis://", "rediss://", "unix://"))):
            raise ValueError(f"RunConfig.redis must be a redis://, rediss:// or unix:// URL, "
                             f"got {redact_url(str(self.redis))!r}")
        if self.redis_unreachable not in ("wait", "fallback"):
            raise ValueError(f"RunConfig.redis_unreachable must be 'wait' or 'fallback', "
                             f"got {self.redis_unreachable!r}")
        if self.report is not None:
            object.__setattr__(self, "report", Path(self.report))
            taken = {os.path.abspath(self.input)} | (
                {os.path.abspath(self.output)} if self.output is not None else set())
            if os.path.abspath(self.report) in taken:
                raise ValueError(f"the report must be another file than the input and the "
                                 f"output ({self.report})")
        if self.redis_unreachable != "wait" and self.redis is None:
            raise ValueError("redis_unreachable needs redis: it says what to do when the "
                             "shared governor's Redis does not answer")
        if self.tenant_field is not None and (
                not isinstance(self.tenant_field, str)
                or not all(part.strip() for part in self.tenant_field.split("."))):
            raise ValueError(f"RunConfig.tenant_field must name a body field (dotted for a "
                             f"nested one, e.g. metadata.tenant), got {self.tenant_field!r}")

    def tenant_of(self, body: Mapping[str, Any]) -> str | None:
        """The tenant ``tenant_field`` names in ``body`` (a string or a number; ``None`` when
        it is absent, and for any other value: those share the default tenant)."""
        if self.tenant_field is None:
            return None
        value: Any = body
        for part in self.tenant_field.split("."):
            if not isinstance(value, Mapping):
                return None
            value = value.get(part)
        if isinstance(value, bool) or not isinstance(value, str | int):
            return None
        return str(value)

    def redis_config(self) -> RedisConfig | None:
        """How the run shares its account's limits through Redis (None: it does not)."""
        if self.redis is None:
            return None
        return RedisConfig(url=self.redis, unreachable=self.redis_unreachable)

    @property
    def output_path(self) -> Path:
        """The output file (every run but a dry run has one)."""
        if self.output is None:
            raise ValueError("this config has no output file (a dry run)")
        return self.output

    def limits(self) -> Limits:
        """The limits to run at: the tier's preset (default :data:`DEFAULT_TIER`) with the
        explicit values put over it, counted over the (possibly shortened) windows."""
        minute = self.window_seconds if self.window_seconds is not None else MINUTE
        day = DAY * minute / MINUTE
        tier = self.tier if self.tier is not None else DEFAULT_TIER
        return Limits.tier(tier, minute=minute, day=day).with_overrides(
            concurrency=self.concurrency, rpm=self.rpm, tpm=self.tpm, tpd=self.tpd)

    def faults(self) -> Faults:
        """The faults FakeKimi injects (none unless ``fake_faults`` names some); raises
        ``ValueError`` for a spec FakeKimi does not understand."""
        from ..testing.faults import Faults

        return Faults.parse(self.fake_faults) if self.fake_faults else Faults()

    def retry_policy(self) -> RetryPolicy:
        """The retry policy for this run (``max_attempts`` over the library's defaults)."""
        return RetryPolicy(max_attempts=self.max_attempts)

    def __repr__(self) -> str:
        def shown(name: str) -> str:
            value = getattr(self, name)
            if name in ("base_url", "redis") and isinstance(value, str):
                return repr(redact_url(value))
            return repr(value)

        values = ", ".join(f"{field.name}={shown(field.name)}" for field in fields(self))
        return f"RunConfig({values})"

    def to_argv(self) -> list[str]:
        """The arguments (after ``run``) that :func:`config_from_args` turns back into this
        config; used to print the command that resumes a run. A credential pasted into
        ``base_url`` is masked: the printed command never carries a key."""
        argv = [str(self.input)]
        if self.output is not None:
            argv += ["--output", str(self.output)]
        for name in ("tier", *_LIMIT_NAMES):
            value = getattr(self, name)
            if value is not None:
                argv += [f"--{name}", str(value)]
        if self.base_url != DEFAULT_BASE_URL:
            argv += ["--base-url", redact_url(self.base_url)]
        if self.api_key_env != DEFAULT_API_KEY_ENV:
            argv += ["--api-key-env", self.api_key_env]
        if self.model is not None:
            argv += ["--model", self.model]
        if self.max_attempts != 6:
            argv += ["--max-attempts", str(self.max_attempts)]
        for flag in ("stream", "fake", "dry_run", "skip_bad"):
            if getattr(self, flag):
                argv.append("--" + flag.replace("_", "-"))
        if self.window_seconds is not None:
            argv += ["--window-seconds", repr(float(self.window_seconds))]
        if self.fake_faults is not None:
            argv += ["--fake-faults", self.fake_faults]
        if self.redis is not None:
            argv += ["--redis", redact_url(self.redis)]
        if self.redis_unreachable != "wait":
            argv += ["--redis-unreachable", self.redis_unreachable]
        if self.tenant_field is not None:
            argv += ["--tenant-field", self.tenant_field]
        if self.report is not None:
            argv += ["--report", str(self.report)]
        return argv

    def command_line(self, program: str = "kimi-actors run") -> str:
        """A shell-quoted command that runs this config again."""
        return shlex.join([*program.split(), *self.to_argv()])


def positive_int(text: str) -> int:
    try:
        value = int(text.replace("_", "").replace(",", ""))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}") from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds, got {text!r}")
    return value


def _fault_spec(text: str) -> str:
    from ..testing.faults import Faults

    try:
        Faults.parse(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def _tier(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value not in TIERS:
        raise argparse.ArgumentTypeError(f"expected a Kimi tier 0-5, got {text!r}")
    return value


def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    """Add every ``kimi-actors run`` option to ``parser`` (its subcommand parser)."""
    parser.add_argument("input", metavar="INPUT.jsonl",
                        help="requests, one a line: OpenAI Batch lines "
                             "({custom_id, method, url, body}) or bare chat bodies (then the "
                             "custom_id is the line number)")
    parser.add_argument("-o", "--output", metavar="OUT.jsonl",
                        help="results in the OpenAI Batch output format, appended as they "
                             "finish; run the same command again to resume (needed unless "
                             "--dry-run)")
    limits = parser.add_argument_group(
        "limits", f"explicit values override the tier; without --tier, tier {DEFAULT_TIER} "
                  f"fills in what is not given")
    limits.add_argument("--tier", type=_tier, metavar="0-5",
                        help="your Kimi account tier (see `kimi-actors tiers`)")
    limits.add_argument("--concurrency", type=positive_int, metavar="N",
                        help="requests in flight at once")
    limits.add_argument("--rpm", type=positive_int, metavar="N", help="requests per minute")
    limits.add_argument("--tpm", type=positive_int, metavar="N",
                        help="tokens per minute (prompt + max_tokens, as Kimi counts them)")
    limits.add_argument("--tpd", type=positive_int, metavar="N", help="tokens per day")
    api = parser.add_argument_group("API")
    api.add_argument("--base-url", metavar="URL",
                     help=f"OpenAI-compatible base URL (default ${BASE_URL_ENV}, else "
                          f"{DEFAULT_BASE_URL}; https://api.moonshot.ai/v1 for the global "
                          f"platform)")
    api.add_argument("--api-key-env", default=DEFAULT_API_KEY_ENV, metavar="NAME",
                     help=f"environment variable holding the API key (default "
                          f"{DEFAULT_API_KEY_ENV}); the key is never printed")
    api.add_argument("--model", metavar="MODEL",
                     help="model for request bodies that name none")
    api.add_argument("--max-attempts", type=positive_int, default=6, metavar="N",
                     help="attempts per request, the first included (default 6)")
    api.add_argument("--stream", action="store_true",
                     help="send as streams, so long answers survive dropped connections by "
                          "resuming where they stopped")
    run = parser.add_argument_group("run")
    run.add_argument("--dry-run", action="store_true",
                     help="count requests and estimated tokens and say how long the file takes "
                          "at the limits; send nothing")
    run.add_argument("--skip-bad", action="store_true",
                     help="send the valid lines even when some lines are bad or repeat a "
                          "custom_id (they are reported and skipped)")
    fake = parser.add_argument_group("fake server (no account needed)")
    fake.add_argument("--fake", action="store_true",
                      help="start the embedded FakeKimi with the chosen limits and run "
                           "against it")
    fake.add_argument("--fake-faults", type=_fault_spec, metavar="SPEC",
                      help="faults for FakeKimi to inject (needs --fake), e.g. "
                           "'overload=0.05,drop=0.1,split_writes'")
    fake.add_argument("--window-seconds", type=positive_float, metavar="SECONDS",
                      help="length of a rate-limit 'minute' (needs --fake; default 60)")
    shared = parser.add_argument_group("shared limits (several processes, one account)")
    shared.add_argument("--redis", metavar="URL",
                        help="share the account's limits with every other process given the "
                             "same Redis, e.g. redis://host:6379/0 (docs/deployment.md)")
    shared.add_argument("--redis-unreachable", choices=("wait", "fallback"), default="wait",
                        help="when Redis does not answer: wait for it (default), or admit "
                             "through a local governor at a quarter of the limits")
    run.add_argument("--tenant-field", metavar="FIELD",
                     help="share the limits fairly between tenants: FIELD of each request's "
                          "body names its tenant (dotted for a nested field, e.g. user or "
                          "metadata.tenant); a tenant with many requests queued cannot hold "
                          "back another's few")
    run.add_argument("--report", metavar="FILE.html",
                     help="write a self-contained HTML report of the run: achieved rates "
                          "against the limits, 429s, retries and resumes over time, latency "
                          "percentiles, errors by type")


def config_from_args(args: argparse.Namespace,
                     environ: Mapping[str, str] | None = None) -> RunConfig:
    """The config for parsed ``run`` arguments; ``--base-url`` falls back to
    ``$MOONSHOT_BASE_URL`` in ``environ`` (default ``os.environ``), as the library does.
    Raises ``ValueError`` for combinations the parser cannot check alone (e.g.
    --window-seconds without --fake): report it with ``parser.error(str(exc))``."""
    env = os.environ if environ is None else environ
    base_url = args.base_url or env.get(BASE_URL_ENV) or DEFAULT_BASE_URL
    return RunConfig(
        input=Path(args.input), output=None if args.output is None else Path(args.output),
        tier=args.tier, concurrency=args.concurrency, rpm=args.rpm, tpm=args.tpm,
        tpd=args.tpd, base_url=base_url, api_key_env=args.api_key_env, model=args.model,
        max_attempts=args.max_attempts, stream=args.stream, fake=args.fake,
        dry_run=args.dry_run, skip_bad=args.skip_bad, window_seconds=args.window_seconds,
        fake_faults=args.fake_faults, redis=args.redis,
        redis_unreachable=args.redis_unreachable, tenant_field=args.tenant_field,
        report=None if args.report is None else Path(args.report))
