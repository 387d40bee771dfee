"""The JSONL batch runner's parts that do not need the runtime: input and output files,
the dry-run plan, progress display and run configuration."""

from __future__ import annotations

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

__all__ = [
    "CHAT_COMPLETIONS_URL",
    "BatchRequest",
    "DoneSet",
    "InputScan",
    "OutputScan",
    "OutputWriter",
    "hash_custom_id",
    "is_final_error",
    "iter_requests",
    "parse_line",
    "repair_output",
    "scan_input",
    "scan_output",
]
