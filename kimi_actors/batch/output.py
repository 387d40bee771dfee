"""Batch output files: results that survive a kill, and what a resumed run may skip.

Output
    One JSON line per finished request, in the OpenAI Batch output format, in completion order.
    Why a run killed at any moment, even by SIGKILL, leaves a file that a resumed run can trust:

    * each line is encoded first and handed to the kernel with a single ``write()`` on a file
      opened unbuffered with ``O_APPEND``, so nothing sits in a user-space buffer that a kill
      could lose; once ``write()`` returns the line is in the page cache and belongs to the
      kernel (an ``fsync`` every ``sync_every`` lines and on close bounds what a power cut, not a
      kill, can take);
    * a kill can interrupt at most the one ``write()`` in progress, so at most the last line is
      torn; the next :class:`OutputWriter` (and :func:`repair_output`) cuts a last line that has
      no newline or is not valid JSON before appending anything;
    * a resumed run skips every custom_id already in the output (:func:`scan_output`), answered
      or failed with an error that cannot succeed; errors that may succeed later (retries
      exhausted, run stopped, run-fatal) are never written, so no custom_id is written twice;
    * an advisory lock (``flock``, where the platform has it) keeps two runs from appending to
      the same output at once, which would break the previous point.

    A run therefore opens its :class:`OutputWriter` first (lock, then repair) and only then
    calls :func:`scan_output` for the ids to skip; a dry run only scans.
"""

from __future__ import annotations

import errno
import io
import json
import os
import random
import secrets
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

from ..errors import APIError, BatchInputError, KimiError
from ..redaction import redact_text
from .io import BatchRequest, DoneSet, SortedHashes, hash_custom_id, json_kind

if sys.platform != "win32":
    import fcntl

__all__ = ["OutputScan", "OutputWriter", "is_final_error", "repair_output", "scan_output"]

_TAIL_BLOCK = 1 << 16


@dataclass(frozen=True, slots=True, kw_only=True)
class OutputScan:
    """What an existing output file holds: the ids a resumed run skips, and a torn tail."""

    done: DoneSet
    answered: int
    failed_final: int
    #: Bytes of a torn last line (no newline, or not valid JSON) that a repair will cut.
    torn_tail_bytes: int

    def __post_init__(self) -> None:
        for name in ("answered", "failed_final", "torn_tail_bytes"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"OutputScan.{name} must be an int >= 0, got {value!r}")


def _is_json(raw: bytes) -> bool:
    try:
        json.loads(raw)
    except ValueError:
        return False
    return True


def _output_record(obj: object) -> tuple[str, bool] | str:
    """``(custom_id, answered)`` for a valid output record, else the reason it is not one."""
    if not isinstance(obj, dict):
        return f"expected a JSON object, got {json_kind(obj)}"
    custom_id = obj.get("custom_id")
    if not isinstance(custom_id, str) or not custom_id:
        return "no custom_id"
    error = obj.get("error")
    if error is not None:
        if not isinstance(error, dict):
            return f"error must be an object or null, got {json_kind(error)}"
        return custom_id, False
    if not isinstance(obj.get("response"), dict):
        return "neither a response nor an error"
    return custom_id, True


def scan_output(path: Path, *, exact: bool = False,
                hash_id: Callable[[str], int] = hash_custom_id) -> OutputScan:
    """Read an output file (streamed) for resuming; a missing file is an empty output.

    A torn last line is not counted as done (the request is sent again) and is reported in
    ``torn_tail_bytes``. Any other line that is not an output record means the file is not
    (only) ours: that raises :class:`BatchInputError` rather than guess.
    """
    answered = failed = torn = 0
    ids: list[str] = []
    collector = SortedHashes()
    try:
        fh = open(path, "rb")  # noqa: SIM115 - closed below
    except FileNotFoundError:
        return OutputScan(done=DoneSet(exact=exact, hash_id=hash_id), answered=0,
                          failed_final=0, torn_tail_bytes=0)
    except OSError as exc:
        raise BatchInputError(f"cannot read {path}: {exc.strerror or exc}") from exc
    with fh:
        lines = enumerate(fh, start=1)
        pending = next(lines, None)
        while pending is not None:
            number, raw = pending
            pending = next(lines, None)
            is_last = pending is None
            if not raw.endswith(b"\n"):
                torn = len(raw)
                break
            if not raw.strip():
                continue
            try:
                obj = json.loads(raw)
            except ValueError as exc:
                if is_last:
                    torn = len(raw)
                    break
                raise BatchInputError(
                    f"{path}: line {number} is not valid JSON; it is not a torn last line, so "
                    f"the file was not written by kimi-actors alone: fix or move it",
                    problems=((number, "not valid JSON"),)) from exc
            record = _output_record(obj)
            if isinstance(record, str):
                raise BatchInputError(
                    f"{path}: line {number} is not a batch output line ({record}): fix the line "
                    f"or choose another output file", problems=((number, record),))
            custom_id, ok = record
            if ok:
                answered += 1
            else:
                failed += 1
            if exact:
                ids.append(custom_id)
            else:
                collector.add(hash_id(custom_id))
    done = (DoneSet(ids, exact=True, hash_id=hash_id) if exact
            else DoneSet._from_collector(collector, hash_id))
    return OutputScan(done=done, answered=answered, failed_final=failed, torn_tail_bytes=torn)


def _pread_all(fd: int, size: int, offset: int) -> bytes:
    chunks = []
    while size > 0:
        chunk = os.pread(fd, size, offset)
        if not chunk:
            break
        chunks.append(chunk)
        size -= len(chunk)
        offset += len(chunk)
    return b"".join(chunks)


def _line_start(fd: int, end: int) -> int:
    """Offset just after the last newline before ``end`` (0 when there is none)."""
    position = end
    while position > 0:
        start = max(0, position - _TAIL_BLOCK)
        index = _pread_all(fd, position - start, start).rfind(b"\n")
        if index >= 0:
            return start + index + 1
        position = start
    return 0


def _torn_tail(fd: int) -> int:
    """Bytes of a torn last line: no trailing newline, or not valid JSON."""
    size = os.fstat(fd).st_size
    if size == 0:
        return 0
    if _pread_all(fd, 1, size - 1) != b"\n":
        return size - _line_start(fd, size)
    start = _line_start(fd, size - 1)
    last = _pread_all(fd, size - start, start)
    if not last.strip() or _is_json(last):
        return 0
    return size - start


def _repair_fd(fd: int) -> int:
    torn = _torn_tail(fd)
    if torn:
        os.ftruncate(fd, os.fstat(fd).st_size - torn)
        os.fsync(fd)
    return torn


def repair_output(path: Path) -> int:
    """Cut a torn last line (see :class:`OutputScan`); returns the bytes removed. A missing
    file needs no repair. :class:`OutputWriter` does this itself, under its lock."""
    try:
        fd = os.open(path, os.O_RDWR)
    except FileNotFoundError:
        return 0
    try:
        return _repair_fd(fd)
    finally:
        os.close(fd)


def is_final_error(error: KimiError) -> bool:
    """True for errors that cannot succeed on a retry or a re-run: the server refused this very
    request (bad request, content filter, permission, not found). Only these go to the output;
    anything else (retries exhausted, run stopped, run-fatal) is left for a re-run."""
    return error.final


def _dumps_line(record: Mapping[str, Any]) -> bytes:
    """One output line, credentials masked: whatever a server echoed into an answer or an
    error body, no key reaches the file (the mask keeps the line valid JSON)."""
    text = redact_text(json.dumps(record, ensure_ascii=False, separators=(",", ":")))
    try:
        return (text + "\n").encode("utf-8")
    except UnicodeEncodeError:
        # A lone surrogate from a \\ud8xx escape: ASCII escapes keep the line valid JSON.
        return (redact_text(json.dumps(record, separators=(",", ":"))) + "\n").encode("ascii")


def _error_body(error: APIError) -> dict[str, Any]:
    if error.body:
        try:
            parsed = json.loads(error.body)
        except ValueError:
            parsed = None
        if isinstance(parsed, dict):
            return parsed
    return {"error": {"type": error.error_type, "message": error.message}}


class OutputWriter:
    """Appends one JSON line per finished request in the OpenAI Batch output format, each
    written whole and flushed at once, so a run killed at any moment (even SIGKILL) leaves only
    whole lines; fsync every ``sync_every`` lines and on close.

    Opening takes an exclusive advisory lock on the file (a second run on the same output fails
    with :class:`BatchInputError`) and then repairs a torn last line. ``rng`` makes the line
    ids reproducible in tests.
    """

    def __init__(self, path: Path, *, sync_every: int = 100,
                 rng: random.Random | None = None) -> None:
        if isinstance(sync_every, bool) or not isinstance(sync_every, int) or sync_every < 1:
            raise ValueError(f"sync_every must be an int >= 1, got {sync_every!r}")
        self.path = Path(path)
        self.sync_every = sync_every
        self.lines_written = 0
        self._rng = rng
        self._unsynced = 0
        try:
            self._file: io.FileIO | None = open(self.path, "a+b", buffering=0)  # noqa: SIM115
        except OSError as exc:
            raise BatchInputError(f"cannot open {self.path} for appending: "
                                  f"{exc.strerror or exc}") from exc
        try:
            self._lock()
            #: Bytes of a torn last line cut when the file was opened.
            self.repaired_bytes = _repair_fd(self._file.fileno())
        except BaseException:
            self._file.close()
            raise

    def _lock(self) -> None:
        if sys.platform == "win32":  # pragma: no cover - no flock there
            return
        assert self._file is not None
        try:
            fcntl.flock(self._file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            raise BatchInputError(f"{self.path} is being written by another run; wait for it "
                                  f"to finish or choose another output file") from exc

    def _line_id(self) -> str:
        bits = self._rng.getrandbits(96) if self._rng is not None else secrets.randbits(96)
        return f"batch_req_{bits:024x}"

    def write_result(self, request: BatchRequest, *, status_code: int, request_id: str | None,
                     body: Mapping[str, Any]) -> None:
        """Write the answer to ``request``."""
        self._write({"id": self._line_id(), "custom_id": request.custom_id,
                     "response": {"status_code": status_code, "request_id": request_id,
                                  "body": dict(body)},
                     "error": None})

    def write_error(self, request: BatchRequest, *, error: KimiError) -> None:
        """Write a failure that cannot succeed on retry (see :func:`is_final_error`); any other
        error raises ``ValueError``, because writing it would make a resumed run skip a request
        that may still succeed."""
        if not is_final_error(error):
            raise ValueError(f"{type(error).__name__} may succeed on a re-run: count it in the "
                             f"summary instead of writing it to the output")
        assert isinstance(error, APIError)
        self._write({"id": self._line_id(), "custom_id": request.custom_id,
                     "response": {"status_code": error.status, "request_id": error.request_id,
                                  "body": _error_body(error)},
                     "error": {"code": error.error_type or type(error).__name__,
                               "message": str(error)}})

    def _write(self, record: Mapping[str, Any]) -> None:
        if self._file is None:
            raise ValueError(f"OutputWriter for {self.path} is closed")
        data = memoryview(_dumps_line(record))
        while data:
            written = self._file.write(data)
            if not written:
                raise OSError(errno.EIO, f"could not append to {self.path}")
            data = data[written:]
        self.lines_written += 1
        self._unsynced += 1
        if self._unsynced >= self.sync_every:
            self.sync()

    def sync(self) -> None:
        """Force written lines to the disk (protects against power loss, not only kills)."""
        if self._file is not None and self._unsynced:
            os.fsync(self._file.fileno())
            self._unsynced = 0

    @property
    def closed(self) -> bool:
        return self._file is None

    def close(self) -> None:
        if self._file is None:
            return
        try:
            self.sync()
        finally:
            self._file.close()
            self._file = None

    def __enter__(self) -> OutputWriter:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._file is None else "open"
        return f"OutputWriter({str(self.path)!r}, {state}, lines_written={self.lines_written})"
