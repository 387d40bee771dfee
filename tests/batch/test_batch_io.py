"""Batch input files: parsing both formats, the scan (bad lines, duplicates, estimates) and
the streaming iterator."""

from __future__ import annotations

import json
import re
import tracemalloc
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kimi_actors.batch.io import (
    CHAT_COMPLETIONS_URL,
    BatchRequest,
    DoneSet,
    InputScan,
    hash_custom_id,
    iter_requests,
    parse_line,
    scan_input,
)
from kimi_actors.errors import BatchInputError
from kimi_actors.protocol.tokens import admission_tokens, estimate_prompt_tokens

MODEL = "kimi-k2-turbo-preview"


def chat_body(text: str = "hello", **extra: Any) -> dict[str, Any]:
    return {"model": MODEL, "messages": [{"role": "user", "content": text}], **extra}


def batch_line(custom_id: str, text: str = "hello", **extra: Any) -> str:
    return json.dumps({"custom_id": custom_id, "method": "POST", "url": CHAT_COMPLETIONS_URL,
                       "body": chat_body(text, **extra)}, ensure_ascii=False)


def write_file(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


# parse_line ---------------------------------------------------------------------------------

def test_parse_batch_format() -> None:
    request = parse_line(batch_line("req-1", "你好", max_tokens=5), 3, default_model=None)
    assert request.custom_id == "req-1"
    assert request.line == 3
    assert request.url == CHAT_COMPLETIONS_URL
    assert request.body["messages"] == [{"role": "user", "content": "你好"}]
    assert request.body["max_tokens"] == 5
    assert request.body["model"] == MODEL


def test_parse_bare_body_takes_line_number_as_id() -> None:
    request = parse_line(json.dumps(chat_body()), 17, default_model=None)
    assert request.custom_id == "17"
    assert request.url == CHAT_COMPLETIONS_URL
    assert request.body == chat_body()


def test_parse_fills_default_model_and_keeps_explicit_one() -> None:
    bare = {"messages": [{"role": "user", "content": "x"}]}
    assert parse_line(json.dumps(bare), 1, default_model="m2").body["model"] == "m2"
    assert parse_line(json.dumps(chat_body()), 1, default_model="m2").body["model"] == MODEL
    explicit_null = {**bare, "model": None}
    assert parse_line(json.dumps(explicit_null), 1, default_model="m2").body["model"] == "m2"


def test_parse_removes_stream_and_does_not_touch_other_fields() -> None:
    text = batch_line("a", stream=True, stream_options={"include_usage": True}, temperature=0.3)
    body = parse_line(text, 1, default_model=None).body
    assert "stream" not in body
    assert "stream_options" not in body
    assert body["temperature"] == 0.3


def test_parse_method_and_url_may_be_left_out() -> None:
    text = json.dumps({"custom_id": "a", "body": chat_body()})
    request = parse_line(text, 1, default_model=None)
    assert request.url == CHAT_COMPLETIONS_URL
    full_url = json.dumps({"custom_id": "b", "url": "https://x.example/v1/chat/completions",
                           "body": chat_body()})
    assert parse_line(full_url, 1, default_model=None).url.startswith("https://")


@pytest.mark.parametrize(("text", "reason"), [
    ("{not json", "not valid JSON"),
    ('{"a": 1', "not valid JSON"),
    ("[1, 2]", "expected a JSON object, got an array"),
    ('"text"', "expected a JSON object, got a string"),
    ("42", "expected a JSON object, got a number"),
    ("null", "expected a JSON object, got null"),
    ('{"custom_id": 5, "body": {}}', "custom_id must be a non-empty string, got a number"),
    ('{"custom_id": "", "body": {}}', "custom_id must not be empty"),
    ('{"custom_id": "\\ud800", "body": {}}', "lone surrogate"),
    ('{"custom_id": "a", "method": "GET", "body": {}}', "method must be POST"),
    ('{"custom_id": "a", "url": "/v1/embeddings", "body": {}}', "url must end with"),
    ('{"custom_id": "a", "url": 3, "body": {}}', "url must end with"),
    ('{"custom_id": "a"}', "body must be a JSON object, got null"),
    ('{"custom_id": "a", "body": []}', "body must be a JSON object, got an array"),
    ('{"custom_id": "a", "body": {"model": "m"}}', "has no messages"),
    ('{"model": "m"}', "has no messages"),
    ('{"model": "m", "messages": []}', "messages must be a non-empty array"),
    ('{"model": "m", "messages": "hi"}', "messages must be a non-empty array"),
    ('{"model": "m", "messages": ["hi"]}', "messages[0] must be an object, got a string"),
    ('{"model": "m", "messages": [{"role": "user"}, {"content": "x"}]}', "messages[1] has no role"),
    ('{"model": "m", "messages": [{"role": true}]}', "messages[0] has no role"),
    ('{"messages": [{"role": "user", "content": "x"}]}', "no model"),
    ('{"model": "", "messages": [{"role": "user"}]}', "model must be a non-empty string"),
    ('{"model": 7, "messages": [{"role": "user"}]}', "model must be a non-empty string, got a"),
    ('{"model": false, "messages": [{"role": "user"}]}', "got a boolean"),
])
def test_parse_rejects_bad_shapes_with_a_reason(text: str, reason: str) -> None:
    with pytest.raises(ValueError, match=re.escape(reason)):
        parse_line(text, 1, default_model=None)


def test_batch_request_validates() -> None:
    with pytest.raises(ValueError, match="custom_id"):
        BatchRequest(custom_id="", line=1, body={})
    with pytest.raises(ValueError, match="line"):
        BatchRequest(custom_id="a", line=0, body={})
    with pytest.raises(ValueError, match="line"):
        BatchRequest(custom_id="a", line=True, body={})
    with pytest.raises(ValueError, match="mapping"):
        BatchRequest(custom_id="a", line=1, body=[])  # type: ignore[arg-type]


@given(st.text(min_size=1, max_size=30), st.text(max_size=60))
def test_parse_round_trips_any_id_and_content(custom_id: str, content: str) -> None:
    try:
        custom_id.encode("utf-8")
        content.encode("utf-8")
    except UnicodeEncodeError:
        return
    request = parse_line(batch_line(custom_id, content), 9, default_model=None)
    assert request.custom_id == custom_id
    assert request.body["messages"][0]["content"] == content


# scan_input ---------------------------------------------------------------------------------

def test_scan_clean_file_counts_and_estimates(tmp_path: Path) -> None:
    bodies = [chat_body("short"), chat_body("长一点的中文问题，请回答。", max_tokens=10),
              chat_body("mixed 混合 text " * 20, max_tokens=300)]
    lines = [json.dumps({"custom_id": f"id-{i}", "body": body}, ensure_ascii=False)
             for i, body in enumerate(bodies)]
    path = write_file(tmp_path / "in.jsonl", [*lines[:1], "", "   ", *lines[1:]])
    scan = scan_input(path, default_model=None)
    assert scan.ok
    assert scan.requests == 3
    assert scan.bad == ()
    assert scan.duplicates == ()
    assert scan.estimated_prompt_tokens == sum(estimate_prompt_tokens(b) for b in bodies)
    assert scan.estimated_admission_tokens == sum(admission_tokens(b) for b in bodies)
    assert scan.max_admission_tokens == max(admission_tokens(b) for b in bodies)


def test_scan_reports_bad_lines_with_numbers(tmp_path: Path) -> None:
    path = write_file(tmp_path / "in.jsonl", [
        batch_line("a"), "{oops", "", batch_line("b"), '{"custom_id": "c", "body": {}}',
        json.dumps({"messages": [{"role": "user", "content": "x"}]}),
    ])
    scan = scan_input(path, default_model=None)
    assert not scan.ok
    assert [line for line, _ in scan.bad] == [2, 5, 6]
    assert "not valid JSON" in scan.bad[0][1]
    assert "no messages" in scan.bad[1][1]
    assert "no model" in scan.bad[2][1]
    assert scan.requests == 2
    assert scan.bad_total == 3


def test_scan_reports_invalid_utf8_and_ignores_a_bom(tmp_path: Path) -> None:
    path = tmp_path / "in.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + batch_line("a").encode() + b"\n"
                     + b'{"custom_id": "\xff"}\n' + batch_line("b").encode())
    scan = scan_input(path, default_model=None)
    assert scan.requests == 2
    assert scan.bad == ((2, "not valid UTF-8 (byte 16)"),)


def test_scan_reports_duplicates_far_apart(tmp_path: Path) -> None:
    lines = [batch_line(f"id-{i}") for i in range(1, 3001)]
    lines[2499] = batch_line("id-7")      # line 2500 repeats line 7
    lines[2999] = batch_line("id-7")      # and line 3000 too
    lines[10] = json.dumps(chat_body())   # bare body at line 11: custom_id "11"
    lines[11] = batch_line("11")          # line 12 names "11" explicitly
    path = write_file(tmp_path / "in.jsonl", lines)
    scan = scan_input(path, default_model=None)
    assert scan.duplicates == (
        (12, "duplicate custom_id '11' (first on line 11)"),
        (2500, "duplicate custom_id 'id-7' (first on line 7)"),
        (3000, "duplicate custom_id 'id-7' (first on line 7)"),
    )
    assert scan.duplicate_ids == frozenset({"11", "id-7"})
    assert scan.duplicates_total == 3
    assert scan.requests == 3000 - 3
    assert scan.problems == scan.duplicates


def test_duplicates_are_exact_when_every_hash_collides(tmp_path: Path) -> None:
    lines = [batch_line(f"id-{i}") for i in range(200)] + [batch_line("id-5")]
    path = write_file(tmp_path / "in.jsonl", lines)
    scan = scan_input(path, default_model=None, hash_id=lambda _: 42)
    assert scan.duplicates == ((201, "duplicate custom_id 'id-5' (first on line 6)"),)
    assert scan.requests == 200


def test_scan_caps_listed_problems_but_counts_all(tmp_path: Path) -> None:
    lines = ["{bad"] * 30 + [batch_line("x")] * 30
    path = write_file(tmp_path / "in.jsonl", lines)
    scan = scan_input(path, default_model=None, max_problems=5)
    assert [line for line, _ in scan.bad] == [1, 2, 3, 4, 5]
    assert scan.bad_total == 30
    assert [line for line, _ in scan.duplicates] == [32, 33, 34, 35, 36]
    assert scan.duplicates_total == 29
    assert scan.requests == 1
    error = scan.error("in.jsonl")
    assert isinstance(error, BatchInputError)
    assert "30 bad lines" in str(error)
    assert "29 duplicate custom_ids" in str(error)
    assert error.problems == scan.problems
    assert [line for line, _ in error.problems] == [1, 2, 3, 4, 5, 32, 33, 34, 35, 36]
    with pytest.raises(ValueError, match="max_problems"):
        scan_input(path, default_model=None, max_problems=-1)


def test_scan_skips_done_ids_from_counts(tmp_path: Path) -> None:
    bodies = {f"id-{i}": chat_body("x" * (i * 10), max_tokens=i + 1) for i in range(10)}
    path = write_file(tmp_path / "in.jsonl", [
        json.dumps({"custom_id": cid, "body": body}) for cid, body in bodies.items()])
    done = DoneSet(["id-0", "id-3", "id-9", "not-in-input"])
    scan = scan_input(path, default_model=None, skip=done)
    remaining = [body for cid, body in bodies.items() if cid not in done]
    assert scan.requests == 7
    assert scan.skipped_done == 3
    assert scan.estimated_prompt_tokens == sum(estimate_prompt_tokens(b) for b in remaining)
    assert scan.estimated_admission_tokens == sum(admission_tokens(b) for b in remaining)


def test_scan_counts_match_what_iter_requests_yields(tmp_path: Path) -> None:
    lines = [batch_line(f"id-{i % 40}", "q" * i, max_tokens=i + 1) for i in range(60)]
    lines[3] = "{bad"
    path = write_file(tmp_path / "in.jsonl", lines)
    skip = DoneSet(["id-1", "id-2", "id-25"])
    scan = scan_input(path, default_model=None, skip=skip)
    yielded = list(iter_requests(path, default_model=None, skip=skip, skip_bad=True,
                                 duplicate_ids=scan.duplicate_ids))
    assert scan.requests == len(yielded)
    assert len({r.custom_id for r in yielded}) == len(yielded)
    assert scan.estimated_admission_tokens == sum(admission_tokens(r.body) for r in yielded)
    assert scan.estimated_prompt_tokens == sum(estimate_prompt_tokens(r.body) for r in yielded)


def test_scan_of_missing_file_is_a_batch_input_error(tmp_path: Path) -> None:
    with pytest.raises(BatchInputError, match="cannot read"):
        scan_input(tmp_path / "missing.jsonl", default_model=None)


def test_input_scan_validates_and_normalises_totals() -> None:
    with pytest.raises(ValueError, match="requests"):
        InputScan(requests=-1)
    scan = InputScan(requests=0, bad=((1, "x"),))
    assert scan.bad_total == 1
    assert not scan.ok
    assert InputScan(requests=0, duplicates=((2, "d"), (3, "d"))).duplicates_total == 2
    assert str(InputScan(requests=1).error("f")) == "f: no problems"
    assert "1 bad line" in str(scan.error("f"))
    assert "lines" not in str(scan.error("f"))


# iter_requests ------------------------------------------------------------------------------

def test_iter_requests_is_lazy_and_in_file_order(tmp_path: Path) -> None:
    path = write_file(tmp_path / "in.jsonl", [batch_line("a"), "{bad", batch_line("b")])
    requests = iter_requests(path, default_model=None)
    assert isinstance(requests, Iterator)
    first = next(requests)
    assert (first.custom_id, first.line) == ("a", 1)
    with pytest.raises(BatchInputError) as info:
        next(requests)
    assert info.value.problems[0][0] == 2
    assert "line 2" in str(info.value)


def test_iter_requests_skip_bad_and_done(tmp_path: Path) -> None:
    path = write_file(tmp_path / "in.jsonl",
                      [batch_line("a"), "{bad", batch_line("b"), batch_line("c")])
    ids = [r.custom_id for r in iter_requests(path, default_model=None, skip=DoneSet(["b"]),
                                              skip_bad=True)]
    assert ids == ["a", "c"]


def test_iter_requests_drops_later_duplicates_only(tmp_path: Path) -> None:
    path = write_file(tmp_path / "in.jsonl",
                      [batch_line("a", "first"), batch_line("b"), batch_line("a", "second")])
    kept = list(iter_requests(path, default_model=None, skip_bad=True, duplicate_ids={"a"}))
    assert [(r.custom_id, r.line) for r in kept] == [("a", 1), ("b", 2)]
    strict = iter_requests(path, default_model=None, duplicate_ids={"a"})
    assert [r.custom_id for r in itertools_take(strict, 2)] == ["a", "b"]
    with pytest.raises(BatchInputError, match="line 3: duplicate custom_id 'a'"):
        next(strict)


def itertools_take(iterator: Iterator[BatchRequest], count: int) -> list[BatchRequest]:
    return [next(iterator) for _ in range(count)]


def write_big_file(path: Path, line_count: int, filler: str) -> int:
    with path.open("w", encoding="utf-8") as fh:
        for i in range(line_count):
            fh.write(f'{{"custom_id":"r{i}","body":{{"model":"m","messages":'
                     f'[{{"role":"user","content":"{i} {filler}"}}]}}}}\n')
    return path.stat().st_size


def traced_peak(run: Callable[[], int]) -> tuple[int, int]:
    """``run()``'s result and the peak of memory allocated while it ran."""
    tracemalloc.start()
    try:
        result = run()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return result, peak


def test_iter_requests_streams_a_big_file_in_bounded_memory(tmp_path: Path) -> None:
    path = tmp_path / "big.jsonl"
    size = write_big_file(path, 40_000, "问题 question " * 50)
    count, peak = traced_peak(lambda: sum(1 for _ in iter_requests(path, default_model=None)))
    assert count == 40_000
    assert size > 25_000_000
    assert peak < 1_000_000, f"peak {peak:,} bytes for a {size:,}-byte file"


def test_scan_memory_grows_by_bytes_per_line_not_by_file(tmp_path: Path) -> None:
    path = tmp_path / "big.jsonl"
    size = write_big_file(path, 40_000, "plain ascii question " * 30)
    requests, peak = traced_peak(lambda: scan_input(path, default_model=None).requests)
    assert requests == 40_000
    # 8 bytes a hash plus one sorting run of Python ints, against a 25 MB file.
    assert peak < 8 * 40_000 + 5_000_000 < size, f"peak {peak:,}"


def test_done_set_membership_and_length() -> None:
    done = DoneSet(["a", "b", "a", "c"])
    assert len(done) == 3
    assert "a" in done
    assert "c" in done
    assert "d" not in done
    assert 5 not in done
    assert repr(done) == "DoneSet(3 ids, exact=False)"
    assert len(DoneSet()) == 0
    assert "a" not in DoneSet()


def test_done_set_many_ids_spans_several_sort_runs() -> None:
    ids = [f"id-{i}" for i in range(150_000)]
    done = DoneSet(ids)
    assert len(done) == len(ids)
    assert all(f"id-{i}" in done for i in range(0, 150_000, 997))
    assert "id-150000" not in done


def test_done_set_exact_mode_survives_colliding_hashes() -> None:
    hashed = DoneSet(["a"], hash_id=lambda _: 1)
    assert "b" in hashed  # the injected hash is used: a collision is a false "done"
    assert "b" not in DoneSet(["a"])  # with the real hash it is not
    exact = DoneSet(["a"], exact=True, hash_id=lambda _: 1)
    assert "a" in exact
    assert "b" not in exact
    assert exact.exact
    assert len(exact) == 1
    assert 3 not in exact


def test_hash_custom_id_is_stable_and_64_bit() -> None:
    # Known answers (8-byte blake2b, little-endian), so the value cannot drift between runs
    # or versions; a lone surrogate from a JSON escape hashes instead of raising.
    assert hash_custom_id("abc") == 6455300059550759896
    assert hash_custom_id("") == 13020603013274838756
    assert hash_custom_id("\ud800 lone") == 17838494855613182503
    assert hash_custom_id("abc") != hash_custom_id("abd")
