"""Batch output files: whole lines, torn-tail repair, resume, and a real SIGKILL."""

from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
import textwrap
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from kimi_actors.batch.io import BatchRequest, DoneSet, iter_requests, scan_input
from kimi_actors.batch.output import (
    OutputScan,
    OutputWriter,
    is_final_error,
    repair_output,
    scan_output,
)
from kimi_actors.errors import (
    APIError,
    AuthenticationError,
    BadRequestError,
    BatchInputError,
    CircuitOpenError,
    ConnectionFailedError,
    ContentFilterError,
    ContextLengthError,
    EngineOverloadedError,
    KimiError,
    ModelNotFoundError,
    PermissionDeniedError,
    QuotaExhaustedError,
    RateLimitError,
    ServerError,
    SupervisorClosedError,
)


def request(custom_id: str, line: int = 1) -> BatchRequest:
    return BatchRequest(custom_id=custom_id, line=line,
                        body={"model": "m", "messages": [{"role": "user", "content": "hi"}]})


def completion(text: str) -> dict[str, Any]:
    return {"id": "chatcmpl-1", "object": "chat.completion", "model": "m",
            "choices": [{"index": 0, "finish_reason": "stop",
                         "message": {"role": "assistant", "content": text}}],
            "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}}


def read_records(path: Path) -> list[dict[str, Any]]:
    data = path.read_bytes()
    assert data == b"" or data.endswith(b"\n")
    return [json.loads(line) for line in data.splitlines()]


def test_writer_writes_openai_batch_output_lines(tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    with OutputWriter(out, rng=random.Random(1)) as writer:
        writer.write_result(request("a"), status_code=200, request_id="req-9",
                            body=completion("你好"))
        assert writer.lines_written == 1
    raw = out.read_bytes()
    assert "你好".encode() in raw  # not escaped
    assert b", " not in raw
    assert b": " not in raw
    [record] = read_records(out)
    assert set(record) == {"id", "custom_id", "response", "error"}
    assert record["id"].startswith("batch_req_")
    assert len(record["id"]) == len("batch_req_") + 24
    assert record["custom_id"] == "a"
    assert record["response"] == {"status_code": 200, "request_id": "req-9",
                                  "body": completion("你好")}
    assert record["error"] is None


def test_writer_ids_are_unique_and_reproducible_with_rng(tmp_path: Path) -> None:
    def ids(path: Path, seed: int | None) -> list[str]:
        rng = random.Random(seed) if seed is not None else None
        with OutputWriter(path, rng=rng) as writer:
            for i in range(50):
                writer.write_result(request(f"r{i}"), status_code=200, request_id=None, body={})
        return [r["id"] for r in read_records(path)]

    seeded = ids(tmp_path / "a.jsonl", 5)
    assert seeded == ids(tmp_path / "b.jsonl", 5)
    assert len(set(seeded)) == 50
    assert len(set(ids(tmp_path / "c.jsonl", None))) == 50


def test_writer_appends_to_existing_output(tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    with OutputWriter(out) as writer:
        writer.write_result(request("a"), status_code=200, request_id=None, body={})
    with OutputWriter(out) as writer:
        writer.write_result(request("b"), status_code=200, request_id=None, body={})
        assert writer.lines_written == 1
    assert [r["custom_id"] for r in read_records(out)] == ["a", "b"]


def test_write_error_with_server_body(tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    server_body = {"error": {"type": "content_filter", "message": "risky content"}}
    error = ContentFilterError("risky content", status=400, error_type="content_filter",
                               request_id="rid", body=json.dumps(server_body).encode())
    with OutputWriter(out) as writer:
        writer.write_error(request("a"), error=error)
    [record] = read_records(out)
    assert record["error"] == {"code": "content_filter", "message": str(error)}
    assert record["response"] == {"status_code": 400, "request_id": "rid", "body": server_body}


def test_write_error_without_a_json_body(tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    errors = [BadRequestError("bad", status=400, body=b"<html>proxy</html>"),
              PermissionDeniedError("nope", status=403, error_type="permission_denied_error")]
    with OutputWriter(out) as writer:
        for i, error in enumerate(errors):
            writer.write_error(request(f"r{i}"), error=error)
    first, second = read_records(out)
    assert first["error"]["code"] == "BadRequestError"
    assert first["response"]["body"] == {"error": {"type": None, "message": "bad"}}
    assert second["error"]["code"] == "permission_denied_error"
    assert second["response"]["status_code"] == 403


@pytest.mark.parametrize("error", [
    RateLimitError("slow down", status=429),
    EngineOverloadedError("busy", status=429),
    ServerError("boom", status=500),
    AuthenticationError("wrong key", status=401),
    QuotaExhaustedError("no money", status=429),
    ConnectionFailedError("reset"),
    SupervisorClosedError("stopped"),
    CircuitOpenError("open", retry_in=3.0),
])
def test_errors_that_may_succeed_later_are_never_written(tmp_path: Path,
                                                         error: KimiError) -> None:
    assert not is_final_error(error)
    out = tmp_path / "out.jsonl"
    with OutputWriter(out) as writer:
        with pytest.raises(ValueError, match="may succeed on a re-run"):
            writer.write_error(request("a"), error=error)
        assert writer.lines_written == 0
    assert out.read_bytes() == b""


@pytest.mark.parametrize("error", [
    BadRequestError("bad", status=400),
    ContextLengthError("too long", status=400),
    ContentFilterError("filtered", status=400),
    PermissionDeniedError("no", status=403),
    ModelNotFoundError("no model", status=404),
])
def test_final_errors(error: APIError) -> None:
    assert is_final_error(error)


def test_writer_validation_and_close(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="sync_every"):
        OutputWriter(tmp_path / "x.jsonl", sync_every=0)
    with pytest.raises(BatchInputError, match="cannot open"):
        OutputWriter(tmp_path / "no-such-dir" / "x.jsonl")
    writer = OutputWriter(tmp_path / "x.jsonl", sync_every=2)
    assert "open" in repr(writer)
    assert not writer.closed
    for i in range(3):
        writer.write_result(request(f"r{i}"), status_code=200, request_id=None, body={})
    writer.close()
    writer.close()
    assert writer.closed
    assert "closed" in repr(writer)
    with pytest.raises(ValueError, match="closed"):
        writer.write_result(request("late"), status_code=200, request_id=None, body={})
    assert len(read_records(tmp_path / "x.jsonl")) == 3


def test_a_second_writer_on_the_same_output_is_refused(tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    with OutputWriter(out), pytest.raises(BatchInputError, match="another run"):
        OutputWriter(out)
    with OutputWriter(out) as writer:  # free again once the first one closed
        assert writer.lines_written == 0


def test_lone_surrogates_in_a_body_still_give_a_valid_line(tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    with OutputWriter(out) as writer:
        writer.write_result(request("a"), status_code=200, request_id=None,
                            body=completion("bad \ud800 text"))
    [record] = read_records(out)
    assert record["response"]["body"]["choices"][0]["message"]["content"] == "bad \ud800 text"


# torn tails ---------------------------------------------------------------------------------

def write_answers(path: Path, ids: list[str]) -> None:
    with OutputWriter(path) as writer:
        for custom_id in ids:
            writer.write_result(request(custom_id), status_code=200, request_id=None,
                                body=completion(custom_id))


@pytest.mark.parametrize("tail", [
    b'{"id":"batch_req_1","custom_id":"c","respon',   # killed mid-line
    b'{"id":"batch_req_1","custom_id":"c","response":{},"error":null}',  # killed before "\n"
    b"\x00\x00\x00\x00\n",                             # a filesystem's zeroed block
    b"{" + b"x" * 200_000,                             # a tail longer than one read block
])
def test_torn_tail_is_detected_repaired_and_not_counted(tmp_path: Path, tail: bytes) -> None:
    out = tmp_path / "out.jsonl"
    write_answers(out, ["a", "b"])
    whole = out.read_bytes()
    with out.open("ab") as fh:
        fh.write(tail)
    scan = scan_output(out)
    assert scan.torn_tail_bytes == len(tail)
    assert scan.answered == 2
    assert "c" not in scan.done
    assert repair_output(out) == len(tail)
    assert out.read_bytes() == whole
    assert repair_output(out) == 0
    assert scan_output(out).torn_tail_bytes == 0


def test_writer_repairs_before_appending(tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    write_answers(out, ["a"])
    with out.open("ab") as fh:
        fh.write(b'{"id":"x","cus')
    with OutputWriter(out) as writer:
        assert writer.repaired_bytes == len(b'{"id":"x","cus')
        writer.write_result(request("b"), status_code=200, request_id=None, body={})
    assert [r["custom_id"] for r in read_records(out)] == ["a", "b"]


def test_torn_only_line(tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    out.write_bytes(b'{"custom_id":"a"')
    assert scan_output(out).torn_tail_bytes == len(b'{"custom_id":"a"')
    assert repair_output(out) == len(b'{"custom_id":"a"')
    assert out.read_bytes() == b""
    assert repair_output(out) == 0


def test_repair_and_scan_of_missing_file(tmp_path: Path) -> None:
    missing = tmp_path / "missing.jsonl"
    assert repair_output(missing) == 0
    assert not missing.exists()
    scan = scan_output(missing)
    assert (len(scan.done), scan.answered, scan.failed_final, scan.torn_tail_bytes) == (0, 0, 0, 0)


def test_blank_lines_in_output_are_harmless(tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    write_answers(out, ["a"])
    with out.open("ab") as fh:
        fh.write(b"\n")
    assert scan_output(out).torn_tail_bytes == 0
    assert repair_output(out) == 0
    assert scan_output(out).answered == 1


@pytest.mark.parametrize(("line", "reason"), [
    (b"not json at all\n", "not valid JSON"),
    (b"[1, 2]\n", "expected a JSON object"),
    (b'{"response": {}}\n', "no custom_id"),
    (b'{"custom_id": "x", "error": "boom"}\n', "error must be an object or null"),
    (b'{"custom_id": "x", "response": null, "error": null}\n', "neither a response nor"),
])
def test_a_foreign_line_inside_the_output_is_an_error(tmp_path: Path, line: bytes,
                                                      reason: str) -> None:
    out = tmp_path / "out.jsonl"
    write_answers(out, ["a"])
    with out.open("ab") as fh:
        fh.write(line)
        fh.write(b'{"custom_id":"b","response":{},"error":null}\n')
    with pytest.raises(BatchInputError, match="line 2") as info:
        scan_output(out)
    assert info.value.problems[0][0] == 2
    assert reason in info.value.problems[0][1]


def test_output_scan_validates() -> None:
    with pytest.raises(ValueError, match="torn_tail_bytes"):
        OutputScan(done=DoneSet(), answered=0, failed_final=0, torn_tail_bytes=-1)


def test_scan_output_of_unreadable_path(tmp_path: Path) -> None:
    with pytest.raises(BatchInputError, match="cannot read"):
        scan_output(tmp_path)


# resume -------------------------------------------------------------------------------------

def test_resume_skips_answered_and_final_failures(tmp_path: Path) -> None:
    source = tmp_path / "in.jsonl"
    source.write_text("".join(
        json.dumps({"custom_id": f"r{i}", "body": {"model": "m", "messages": [
            {"role": "user", "content": f"q{i}"}]}}) + "\n" for i in range(10)))
    out = tmp_path / "out.jsonl"
    with OutputWriter(out) as writer:
        for req in iter_requests(source, default_model=None):
            if req.custom_id == "r5":
                break
            if req.custom_id == "r2":
                writer.write_error(req, error=ContentFilterError("no", status=400))
            else:
                writer.write_result(req, status_code=200, request_id=None, body={})
    scan = scan_output(out)
    assert (scan.answered, scan.failed_final, len(scan.done)) == (4, 1, 5)
    for exact in (False, True):
        done = scan_output(out, exact=exact).done
        remaining = [r.custom_id for r in iter_requests(source, default_model=None, skip=done)]
        assert remaining == [f"r{i}" for i in range(5, 10)]
        assert scan_input(source, default_model=None, skip=done).requests == 5


# SIGKILL ------------------------------------------------------------------------------------

CHILD = textwrap.dedent("""
    import sys
    from pathlib import Path
    from kimi_actors.batch.io import BatchRequest
    from kimi_actors.batch.output import OutputWriter, scan_output

    out, total = Path(sys.argv[1]), int(sys.argv[2])
    done = scan_output(out).done
    text = "answer " * 30
    with OutputWriter(out, sync_every=50) as writer:
        for i in range(total):
            custom_id = f"r{i}"
            if custom_id in done:
                continue
            request = BatchRequest(custom_id=custom_id, line=i + 1, body={})
            writer.write_result(request, status_code=200, request_id=None,
                                body={"choices": [{"message": {"content": f"{i} {text}"}}]})
""")


def count_lines(path: Path) -> int:
    try:
        return path.read_bytes().count(b"\n")
    except FileNotFoundError:
        return 0


def test_sigkill_mid_run_loses_nothing_written_and_resume_writes_each_id_once(
        tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    total = 20_000
    child = subprocess.Popen([sys.executable, str(script), str(out), str(total)])
    try:
        deadline = time.monotonic() + 60
        while count_lines(out) < 2_000:
            assert child.poll() is None, "the writer exited before it was killed"
            assert time.monotonic() < deadline, "the writer never wrote 2,000 lines"
            time.sleep(0.005)
        child.send_signal(signal.SIGKILL)
    finally:
        child.kill()
        child.wait()
    assert child.returncode == -signal.SIGKILL

    scan = scan_output(out)
    size_before = out.stat().st_size
    assert 2_000 <= scan.answered < total
    assert repair_output(out) == scan.torn_tail_bytes
    assert out.stat().st_size == size_before - scan.torn_tail_bytes
    killed_ids = [r["custom_id"] for r in read_records(out)]
    assert len(set(killed_ids)) == len(killed_ids) == scan.answered

    finished = subprocess.run([sys.executable, str(script), str(out), str(total)], check=False)
    assert finished.returncode == 0
    records = read_records(out)
    counts = Counter(r["custom_id"] for r in records)
    assert len(records) == total
    assert set(counts) == {f"r{i}" for i in range(total)}
    assert max(counts.values()) == 1
    for record in records:
        content = record["response"]["body"]["choices"][0]["message"]["content"]
        assert content.split(" ", 1)[0] == record["custom_id"][1:]
    assert scan_output(out).torn_tail_bytes == 0
