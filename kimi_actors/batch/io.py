"""Batch input files: reading requests, checking every line, and the set of what is done.

Input
    One chat request per line, in the OpenAI Batch format
    (``{"custom_id", "method", "url", "body"}``) or as a bare chat body, whose custom_id is then
    its line number. Files are read one line at a time, never whole: a file of a million lines
    costs a few megabytes. :func:`scan_input` checks every line before anything is sent and
    finds duplicate custom_ids with 8 bytes of memory per line (blake2b hashes, sorted); only
    the ids whose hashes repeat are compared in full, in a second pass that runs only when a
    hash repeats, so a hash collision can never be reported as a duplicate.

The output side is in :mod:`kimi_actors.batch.output`.
"""

from __future__ import annotations

import hashlib
import heapq
import itertools
import json
import sys
from array import array
from bisect import bisect_left
from collections.abc import Callable, Collection, Generator, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from ..errors import BatchInputError
from ..protocol.tokens import estimate_prompt_tokens, requested_max_tokens

if sys.platform != "win32":
    pass

__all__ = [
    "CHAT_COMPLETIONS_URL",
    "BatchRequest",
    "DoneSet",
    "InputScan",
    "hash_custom_id",
    "iter_requests",
    "parse_line",
    "scan_input",
]

#: The url of a request given as a bare chat body.
CHAT_COMPLETIONS_URL = "/v1/chat/completions"
_BATCH_KEYS = ("custom_id", "method", "url", "body")
_RUN_LENGTH = 1 << 16
_BOM = b"\xef\xbb\xbf"


def hash_custom_id(custom_id: str) -> int:
    """The 8-byte blake2b hash of a custom_id, as an unsigned int (what the sorted arrays hold)."""
    digest = hashlib.blake2b(custom_id.encode("utf-8", "surrogatepass"), digest_size=8).digest()
    return int.from_bytes(digest, "little")


@dataclass(frozen=True, slots=True, kw_only=True)
class BatchRequest:
    """One request of a batch: its custom_id, the line it came from, and the chat body to send
    (``model`` filled in, ``stream`` removed: the runner decides streaming)."""

    custom_id: str
    line: int
    body: Mapping[str, Any]
    url: str = CHAT_COMPLETIONS_URL

    def __post_init__(self) -> None:
        if not isinstance(self.custom_id, str) or not self.custom_id:
            raise ValueError(f"BatchRequest.custom_id must be a non-empty string, "
                             f"got {self.custom_id!r}")
        if isinstance(self.line, bool) or not isinstance(self.line, int) or self.line < 1:
            raise ValueError(f"BatchRequest.line must be a line number >= 1, got {self.line!r}")
        if not isinstance(self.body, Mapping):
            raise ValueError("BatchRequest.body must be a mapping")


def json_kind(value: object) -> str:
    """What a JSON value is, for messages about a value that is not an object."""
    if isinstance(value, list):
        return "an array"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, bool):
        return "a boolean"
    if value is None:
        return "null"
    return "a number"


def parse_line(text: str, line: int, *, default_model: str | None) -> BatchRequest:
    """Parse one non-blank input line into a :class:`BatchRequest`.

    A line with any of ``custom_id``, ``method``, ``url`` or ``body`` is an OpenAI Batch line:
    ``custom_id`` must be a non-empty string, ``method`` POST and ``url`` end with
    ``/chat/completions`` (both may be left out and then take those values). Any other object is
    a bare chat body whose custom_id is ``str(line)``. The body needs a non-empty ``messages``
    list of objects with a ``role``, and a ``model`` (else ``default_model``).

    Raises ``ValueError`` whose message is the reason, fit to print after the line number.
    """
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"not valid JSON ({exc.msg} at column {exc.colno})") from exc
    if not isinstance(obj, dict):
        raise ValueError(f"expected a JSON object, got {json_kind(obj)}")
    if any(key in obj for key in _BATCH_KEYS):
        custom_id = obj.get("custom_id")
        if not isinstance(custom_id, str) or not custom_id:
            raise ValueError(f"custom_id must be a non-empty string, got {json_kind(custom_id)}"
                             if custom_id != "" else "custom_id must not be empty")
        try:
            custom_id.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise ValueError("custom_id contains a lone surrogate escape") from exc
        method = obj.get("method", "POST")
        if method != "POST":
            raise ValueError(f"method must be POST, got {method!r}")
        url = obj.get("url", CHAT_COMPLETIONS_URL)
        if not isinstance(url, str) or not url.endswith("/chat/completions"):
            raise ValueError(f"url must end with /chat/completions, got {url!r}")
        body = obj.get("body")
        if not isinstance(body, dict):
            raise ValueError(f"body must be a JSON object, got {json_kind(body)}")
    else:
        custom_id, url, body = str(line), CHAT_COMPLETIONS_URL, obj
    return BatchRequest(custom_id=custom_id, line=line, url=url,
                        body=_checked_body(body, default_model))


def _checked_body(body: dict[str, Any], default_model: str | None) -> dict[str, Any]:
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        if "messages" not in body:
            raise ValueError("the chat body has no messages (an OpenAI Batch line needs "
                             "custom_id, method, url and body; a bare body needs messages)")
        raise ValueError("messages must be a non-empty array")
    for index, message in enumerate(messages):
        if not isinstance(message, dict):
            raise ValueError(f"messages[{index}] must be an object, got {json_kind(message)}")
        role = message.get("role")
        if not isinstance(role, str) or not role:
            raise ValueError(f"messages[{index}] has no role")
    model = body.get("model")
    if model is None:
        if not default_model:
            raise ValueError("no model: the body names none and no default model was given "
                             "(--model)")
        model = default_model
    elif not isinstance(model, str) or not model:
        raise ValueError(f"model must be a non-empty string, got {json_kind(model)}")
    checked = {key: value for key, value in body.items()
               if key not in ("stream", "stream_options")}
    checked["model"] = model
    return checked


class SortedHashes:
    """Collects 64-bit hashes and returns them sorted, in ``array('Q')`` (8 bytes each).

    Hashes are sorted in runs of 65,536 (the only moment they are Python ints) and the runs are
    merged lazily, so finding repeats costs 8 bytes a hash plus one run, and a distinct sorted
    array 16 bytes a hash while it is built.
    """

    def __init__(self) -> None:
        self._runs: list[array[int]] = []
        self._pending: list[int] = []

    def add(self, value: int) -> None:
        self._pending.append(value)
        if len(self._pending) >= _RUN_LENGTH:
            self._spill()

    def _spill(self) -> None:
        if self._pending:
            self._pending.sort()
            self._runs.append(array("Q", self._pending))
            self._pending = []

    def iter_sorted(self) -> Iterator[int]:
        """Every hash in ascending order, merged lazily from the sorted runs."""
        self._spill()
        runs, self._runs = self._runs, []
        return iter(runs[0]) if len(runs) == 1 else heapq.merge(*runs)

    def distinct(self) -> array[int]:
        """The distinct hashes, sorted."""
        return array("Q", (value for value, _ in itertools.groupby(self.iter_sorted())))


class DoneSet:
    """The custom_ids already final in an output file, in bounded memory.

    Holds the sorted, distinct 8-byte hashes of the ids (8 bytes an id); ``in`` is a binary
    search. Two different ids share a hash with probability about 2**-64 per pair, so for
    ``n`` done ids and ``m`` input ids a request is wrongly taken for done with probability
    below ``n * m / 2**64`` (under 1e-7 for a million of each). ``exact=True`` keeps the ids
    themselves instead, for when memory does not matter and a guarantee does.
    """

    __slots__ = ("_exact", "_hash_id", "_hashes")

    def __init__(self, ids: Iterable[str] = (), *, exact: bool = False,
                 hash_id: Callable[[str], int] = hash_custom_id) -> None:
        self._hash_id = hash_id
        self._exact: frozenset[str] | None = None
        self._hashes = array("Q")
        if exact:
            self._exact = frozenset(ids)
            return
        collector = SortedHashes()
        for custom_id in ids:
            collector.add(hash_id(custom_id))
        self._hashes = collector.distinct()

    @classmethod
    def _from_collector(cls, collector: SortedHashes, hash_id: Callable[[str], int]) -> DoneSet:
        done = cls(hash_id=hash_id)
        done._hashes = collector.distinct()
        return done

    @property
    def exact(self) -> bool:
        return self._exact is not None

    def __contains__(self, custom_id: object) -> bool:
        if not isinstance(custom_id, str):
            return False
        if self._exact is not None:
            return custom_id in self._exact
        value = self._hash_id(custom_id)
        index = bisect_left(self._hashes, value)
        return index < len(self._hashes) and self._hashes[index] == value

    def __len__(self) -> int:
        return len(self._exact) if self._exact is not None else len(self._hashes)

    def __repr__(self) -> str:
        return f"DoneSet({len(self)} ids, exact={self.exact})"


@dataclass(frozen=True, slots=True, kw_only=True)
class InputScan:
    """What :func:`scan_input` found.

    ``requests`` and the token estimates cover exactly what :func:`iter_requests` yields with
    ``skip_bad=True`` and these ``duplicate_ids``: valid lines not already done, first
    occurrences only. ``bad`` and ``duplicates`` list ``(line, reason)`` in file order, at most
    ``max_problems`` each; ``bad_total`` and ``duplicates_total`` count them all.
    """

    requests: int
    bad: tuple[tuple[int, str], ...] = ()
    duplicates: tuple[tuple[int, str], ...] = ()
    estimated_prompt_tokens: int = 0
    estimated_admission_tokens: int = 0
    bad_total: int = 0
    duplicates_total: int = 0
    duplicate_ids: frozenset[str] = field(default_factory=frozenset)
    skipped_done: int = 0
    #: The largest admission reservation of one request (a request over TPM can never go).
    max_admission_tokens: int = 0

    def __post_init__(self) -> None:
        for name in ("requests", "estimated_prompt_tokens", "estimated_admission_tokens",
                     "bad_total", "duplicates_total", "skipped_done", "max_admission_tokens"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"InputScan.{name} must be an int >= 0, got {value!r}")
        if self.bad_total < len(self.bad):
            object.__setattr__(self, "bad_total", len(self.bad))
        if self.duplicates_total < len(self.duplicates):
            object.__setattr__(self, "duplicates_total", len(self.duplicates))

    @property
    def ok(self) -> bool:
        """True when no line is bad and no custom_id repeats."""
        return self.bad_total == 0 and self.duplicates_total == 0

    @property
    def problems(self) -> tuple[tuple[int, str], ...]:
        """The listed bad lines and duplicates together, in file order."""
        return tuple(sorted(self.bad + self.duplicates))

    @property
    def problem_summary(self) -> str:
        """"3 bad lines and 1 duplicate custom_id", or "no problems"."""
        parts = []
        if self.bad_total:
            parts.append(f"{self.bad_total:,} bad line{'s' * (self.bad_total != 1)}")
        if self.duplicates_total:
            parts.append(f"{self.duplicates_total:,} duplicate custom_id"
                         f"{'s' * (self.duplicates_total != 1)}")
        return " and ".join(parts) if parts else "no problems"

    def error(self, source: str) -> BatchInputError:
        """The error a strict run raises for these problems."""
        return BatchInputError(f"{source}: {self.problem_summary}", problems=self.problems)


def _open_input(path: Path) -> IO[bytes]:
    try:
        return open(path, "rb")
    except OSError as exc:
        raise BatchInputError(f"cannot read {path}: {exc.strerror or exc}") from exc


def _iter_lines(path: Path) -> Iterator[tuple[int, bytes]]:
    """Non-blank lines with their 1-based line numbers, streamed; a UTF-8 BOM is ignored."""
    with _open_input(path) as fh:
        for number, raw in enumerate(fh, start=1):
            if number == 1 and raw.startswith(_BOM):
                raw = raw[len(_BOM):]
            if raw.strip():
                yield number, raw


def _parse_raw(raw: bytes, line: int, default_model: str | None) -> BatchRequest:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError(f"not valid UTF-8 (byte {exc.start + 1})") from exc
    return parse_line(text, line, default_model=default_model)


def scan_input(path: Path, *, default_model: str | None, skip: DoneSet | None = None,
               max_problems: int = 50,
               hash_id: Callable[[str], int] = hash_custom_id) -> InputScan:
    """Check a whole input file without sending anything, streamed (a second pass runs only
    when a custom_id hash repeats).

    Every line is parsed as :func:`iter_requests` would. The hashes of all custom_ids are
    sorted to find repeats; when a hash repeats, a second pass compares those ids in full, so
    duplicates are exact whatever ``hash_id`` does. Requests whose custom_id is in ``skip``
    (already done) are validated but neither counted nor estimated.
    """
    if max_problems < 0:
        raise ValueError(f"max_problems must be >= 0, got {max_problems!r}")
    bad: list[tuple[int, str]] = []
    bad_total = requests = prompt_tokens = admission = skipped = largest = 0
    hashes = SortedHashes()
    for number, raw in _iter_lines(path):
        try:
            request = _parse_raw(raw, number, default_model)
        except ValueError as exc:
            bad_total += 1
            if len(bad) < max_problems:
                bad.append((number, str(exc)))
            continue
        hashes.add(hash_id(request.custom_id))
        if skip is not None and request.custom_id in skip:
            skipped += 1
            continue
        prompt = estimate_prompt_tokens(request.body)
        reserved = prompt + requested_max_tokens(request.body)
        requests += 1
        prompt_tokens += prompt
        admission += reserved
        largest = max(largest, reserved)

    repeated = {value for value, next_value in itertools.pairwise(hashes.iter_sorted())
                if value == next_value}
    duplicates: list[tuple[int, str]] = []
    duplicate_ids: set[str] = set()
    duplicates_total = 0
    if repeated:
        first_line: dict[str, int] = {}
        for number, raw in _iter_lines(path):
            try:
                request = _parse_raw(raw, number, default_model)
            except ValueError:
                continue
            if hash_id(request.custom_id) not in repeated:
                continue
            first = first_line.setdefault(request.custom_id, number)
            if first == number:
                continue
            duplicate_ids.add(request.custom_id)
            duplicates_total += 1
            if len(duplicates) < max_problems:
                duplicates.append((number, f"duplicate custom_id {request.custom_id!r} "
                                           f"(first on line {first})"))
            if skip is None or request.custom_id not in skip:
                prompt = estimate_prompt_tokens(request.body)
                requests -= 1
                prompt_tokens -= prompt
                admission -= prompt + requested_max_tokens(request.body)
    return InputScan(requests=requests, bad=tuple(bad), duplicates=tuple(duplicates),
                     estimated_prompt_tokens=prompt_tokens, estimated_admission_tokens=admission,
                     bad_total=bad_total, duplicates_total=duplicates_total,
                     duplicate_ids=frozenset(duplicate_ids), skipped_done=skipped,
                     max_admission_tokens=largest)


def iter_requests(path: Path, *, default_model: str | None, skip: DoneSet | None = None,
                  skip_bad: bool = False,
                  duplicate_ids: Collection[str] = frozenset()
                  ) -> Generator[BatchRequest, None, None]:
    """Yield the requests of an input file one at a time, in file order.

    Requests whose custom_id is in ``skip`` are left out. A bad line, or a repeat of one of
    ``duplicate_ids`` (pass ``InputScan.duplicate_ids``; the first occurrence is kept), raises
    :class:`BatchInputError` unless ``skip_bad``, in which case it is left out: the scan has
    reported it already. A generator, so ``contextlib.closing`` closes the file when the
    caller stops early.
    """
    seen_duplicates: set[str] = set()
    for number, raw in _iter_lines(path):
        try:
            request = _parse_raw(raw, number, default_model)
        except ValueError as exc:
            if skip_bad:
                continue
            raise BatchInputError(f"{path}: line {number}: {exc}",
                                  problems=((number, str(exc)),)) from exc
        if skip is not None and request.custom_id in skip:
            continue
        if request.custom_id in duplicate_ids:
            if request.custom_id in seen_duplicates:
                if skip_bad:
                    continue
                reason = f"duplicate custom_id {request.custom_id!r}"
                raise BatchInputError(f"{path}: line {number}: {reason}",
                                      problems=((number, reason),))
            seen_duplicates.add(request.custom_id)
        yield request
