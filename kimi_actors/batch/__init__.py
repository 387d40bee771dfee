"""The JSONL batch runner's parts that do not need the runtime: input and output files
(:mod:`.io`), the dry-run plan (:mod:`.plan`), progress display (:mod:`.progress`) and the
``kimi-actors run`` options (:mod:`.config`)."""

from __future__ import annotations

from .config import (
    DEFAULT_API_KEY_ENV,
    DEFAULT_BASE_URL,
    DEFAULT_TIER,
    RunConfig,
    add_run_arguments,
    config_from_args,
)
from .io import (
    CHAT_COMPLETIONS_URL,
    BatchRequest,
    DoneSet,
    InputScan,
    OutputScan,
    OutputWriter,
    hash_custom_id,
    is_final_error,
    iter_requests,
    parse_line,
    repair_output,
    scan_input,
    scan_output,
)
from .plan import RunPlan, plan_run, render_plan, rolling_window_seconds
from .progress import (
    ProgressReporter,
    ProgressSnapshot,
    RunSummary,
    eta_seconds,
    format_count,
    format_duration,
    render_bar,
    render_log_line,
    render_problems,
    render_summary,
)

__all__ = [
    "CHAT_COMPLETIONS_URL",
    "DEFAULT_API_KEY_ENV",
    "DEFAULT_BASE_URL",
    "DEFAULT_TIER",
    "BatchRequest",
    "DoneSet",
    "InputScan",
    "OutputScan",
    "OutputWriter",
    "ProgressReporter",
    "ProgressSnapshot",
    "RunConfig",
    "RunPlan",
    "RunSummary",
    "add_run_arguments",
    "config_from_args",
    "eta_seconds",
    "format_count",
    "format_duration",
    "hash_custom_id",
    "is_final_error",
    "iter_requests",
    "parse_line",
    "plan_run",
    "render_bar",
    "render_log_line",
    "render_plan",
    "render_problems",
    "render_summary",
    "repair_output",
    "rolling_window_seconds",
    "scan_input",
    "scan_output",
]
