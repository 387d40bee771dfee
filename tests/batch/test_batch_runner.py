"""The batch runner in this process: outcomes and exit codes, output bodies, logging, and the
rate bookkeeping behind the progress line. The command as a subprocess is in
test_batch_e2e.py."""

from __future__ import annotations

import io
import json
import logging
from pathlib import Path
from typing import Any

import pytest

from kimi_actors.batch import (
    EXIT_CODES,
    EXIT_INCOMPLETE,
    EXIT_OK,
    EXIT_USAGE,
    OutputWriter,
    RunConfig,
    RunResult,
    cli_logging,
    completion_body,
    demo_requests,
    run_batch,
    verify_answers,
    write_demo_input,
)
from kimi_actors.batch.rates import RateWindow as _RateWindow
from kimi_actors.batch.rates import TimeAverage as _TimeAverage
from kimi_actors.protocol.chunks import ChatResult, Choice, ToolCall, Usage
from kimi_actors.testing import expected_reply

MODEL = "kimi-k2-turbo-preview"


def write_lines(path: Path, lines: list[dict[str, Any]]) -> None:
    path.write_text("".join(json.dumps(line, ensure_ascii=False) + "\n" for line in lines),
                    encoding="utf-8")


def batch_line(custom_id: str, content: str, **body: Any) -> dict[str, Any]:
    return {"custom_id": custom_id, "body": {
        "model": MODEL, "max_tokens": 12, "messages": [{"role": "user", "content": content}],
        **body}}


def run(config: RunConfig, **kwargs: Any) -> tuple[RunResult, str]:
    stderr = io.StringIO()
    result = run_batch(config, stdout=stderr, stderr=stderr, is_tty=False, **kwargs)
    return result, stderr.getvalue()


def output_records(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


# -- output bodies ------------------------------------------------------------------------------

def test_a_non_stream_answer_keeps_the_servers_body() -> None:
    raw = {"id": "c1", "object": "chat.completion", "created": 1, "model": MODEL,
           "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"},
                        "finish_reason": "stop"}], "usage": {"prompt_tokens": 3}, "extra": 1}
    body = completion_body(ChatResult(id="c1", choices=(Choice(index=0, content="hi"),),
                                      raw=raw))
    assert body == raw
    assert body is not raw


def test_a_stream_answer_is_built_into_a_chat_completion() -> None:
    call = ToolCall(index=0, id="call_1", type="function", name="lookup", arguments='{"q":1}')
    result = ChatResult(
        id="c2", model=MODEL, created=7, request_id="r",
        choices=(Choice(index=0, content="text", reasoning_content="thought",
                        finish_reason="stop"),
                 Choice(index=1, tool_calls=(call,), finish_reason="tool_calls")),
        usage=Usage(prompt_tokens=5, completion_tokens=9, total_tokens=14, cached_tokens=2),
        raw={"object": "chat.completion.chunk", "choices": []})
    assert completion_body(result) == {
        "id": "c2", "object": "chat.completion", "created": 7, "model": MODEL,
        "choices": [
            {"index": 0, "finish_reason": "stop",
             "message": {"role": "assistant", "content": "text", "reasoning_content": "thought"}},
            {"index": 1, "finish_reason": "tool_calls",
             "message": {"role": "assistant", "content": "", "tool_calls": [
                 {"index": 0, "id": "call_1", "type": "function",
                  "function": {"name": "lookup", "arguments": '{"q":1}'}}]}}],
        "usage": {"prompt_tokens": 5, "completion_tokens": 9, "total_tokens": 14,
                  "cached_tokens": 2}}


def test_a_stream_answer_without_usage_has_no_usage_field() -> None:
    body = completion_body(ChatResult(choices=(Choice(index=0, content="x"),)))
    assert "usage" not in body
    assert body["choices"][0]["message"] == {"role": "assistant", "content": "x"}


# -- rates --------------------------------------------------------------------------------------

def test_rate_window_counts_only_the_last_window() -> None:
    window = _RateWindow(60.0)
    window.add(0.0, 5)
    window.add(0.5, 2)
    window.add(30.0, 1)
    assert window.total(30.0) == 8
    assert window.total(60.5) == 1
    assert window.total(200.0) == 0


def test_time_average_weights_each_value_by_how_long_it_held() -> None:
    average = _TimeAverage()
    assert average.mean() == 0.0
    average.sample(10.0, 100.0)
    assert average.mean() == 100.0
    average.sample(13.0, 0.0)
    average.sample(14.0, 50.0)
    assert average.mean() == pytest.approx(300.0 / 4.0)


# -- runs ---------------------------------------------------------------------------------------

def test_run_writes_every_answer_and_reports_ok(tmp_path: Path) -> None:
    lines = [batch_line(f"id-{i}", f"question {i}") for i in range(12)]
    write_lines(tmp_path / "in.jsonl", lines)
    config = RunConfig(input=tmp_path / "in.jsonl", output=tmp_path / "out.jsonl", fake=True,
                       window_seconds=1.0)
    result, stderr = run(config)
    assert result.exit_code == EXIT_OK, stderr
    assert result.summary is not None
    assert (result.summary.ok, result.summary.not_finished, result.lines_written) == (12, 0, 12)
    for record in output_records(tmp_path / "out.jsonl"):
        body = lines[int(record["custom_id"].split("-")[1])]["body"]
        reply = expected_reply(MODEL, body["messages"], max_tokens=12)
        assert record["response"]["body"]["choices"][0]["message"]["content"] == reply.content


def test_final_errors_are_written_and_make_the_exit_code_1(tmp_path: Path) -> None:
    write_lines(tmp_path / "in.jsonl", [batch_line("good", "hello"),
                                        batch_line("bad-model", "hello", model="no-such-model")])
    config = RunConfig(input=tmp_path / "in.jsonl", output=tmp_path / "out.jsonl", fake=True,
                       window_seconds=1.0)
    result, stderr = run(config)
    assert result.exit_code == EXIT_INCOMPLETE, stderr
    assert result.summary is not None
    assert result.summary.failed == 1
    records = {record["custom_id"]: record for record in output_records(tmp_path / "out.jsonl")}
    assert records["bad-model"]["response"]["status_code"] == 404
    assert records["bad-model"]["error"]["code"] == "resource_not_found_error"
    assert records["good"]["error"] is None
    again, stderr = run(config)  # a final error is not retried by a re-run
    assert again.exit_code == EXIT_INCOMPLETE
    assert again.lines_written == 0
    assert "1 request failed with a final error in an earlier run" in stderr


def test_a_request_over_the_tpm_limit_is_not_finished_and_not_written(tmp_path: Path) -> None:
    write_lines(tmp_path / "in.jsonl", [batch_line("huge", "hello", max_tokens=5000)])
    config = RunConfig(input=tmp_path / "in.jsonl", output=tmp_path / "out.jsonl", fake=True,
                       window_seconds=1.0, tpm=1000)
    result, stderr = run(config)
    assert result.exit_code == EXIT_INCOMPLETE
    assert "it can never be sent" in stderr
    assert "LimitExceededError 1" in stderr
    assert output_records(tmp_path / "out.jsonl") == []


def test_nothing_to_send_is_ok(tmp_path: Path) -> None:
    (tmp_path / "in.jsonl").write_text("\n\n", encoding="utf-8")
    result, stderr = run(RunConfig(input=tmp_path / "in.jsonl", output=tmp_path / "out.jsonl",
                                   fake=True))
    assert result.exit_code == EXIT_OK
    assert "0 requests to send" in stderr


def test_a_missing_input_or_a_locked_output_is_a_usage_error(tmp_path: Path) -> None:
    missing, stderr = run(RunConfig(input=tmp_path / "nope.jsonl",
                                    output=tmp_path / "out.jsonl", fake=True))
    assert missing.exit_code == EXIT_USAGE
    assert "cannot read" in stderr
    write_lines(tmp_path / "in.jsonl", [batch_line("a", "hi")])
    with OutputWriter(tmp_path / "out.jsonl"):
        locked, stderr = run(RunConfig(input=tmp_path / "in.jsonl",
                                       output=tmp_path / "out.jsonl", fake=True))
    assert locked.exit_code == EXIT_USAGE
    assert "being written by another run" in stderr


def test_the_key_comes_from_the_named_variable_and_is_never_printed(tmp_path: Path) -> None:
    write_lines(tmp_path / "in.jsonl", [batch_line("a", "hi")])
    config = RunConfig(input=tmp_path / "in.jsonl", output=tmp_path / "out.jsonl",
                       api_key_env="MY_KEY", base_url="http://127.0.0.1:9/v1")
    result, stderr = run(config, environ={"MOONSHOT_API_KEY": "sk-other-1234567890"})
    assert result.exit_code == EXIT_USAGE
    assert "MY_KEY is not set" in stderr
    assert "sk-other" not in stderr


def test_dry_run_reports_bad_lines_and_a_torn_output_without_touching_it(tmp_path: Path) -> None:
    write_lines(tmp_path / "in.jsonl", [batch_line("a", "hi"), batch_line("a", "again")])
    (tmp_path / "out.jsonl").write_bytes(b'{"custom_id": "x", "respo')
    config = RunConfig(input=tmp_path / "in.jsonl", output=tmp_path / "out.jsonl", dry_run=True)
    result, text = run(config)
    assert result.exit_code == EXIT_USAGE
    assert "line 2: duplicate custom_id 'a'" in text
    assert "torn" in text
    assert "Dry run: nothing was sent." in text
    assert (tmp_path / "out.jsonl").read_bytes() == b'{"custom_id": "x", "respo'


def test_log_file_gets_the_librarys_events_and_the_terminal_does_not(tmp_path: Path) -> None:
    write_lines(tmp_path / "in.jsonl", [batch_line(f"id-{i}", f"q{i}") for i in range(20)])
    config = RunConfig(input=tmp_path / "in.jsonl", output=tmp_path / "out.jsonl", fake=True,
                       window_seconds=1.0, fake_faults="server_error=0.3")
    result, stderr = run(config, log_file=tmp_path / "run.log")
    assert result.exit_code == EXIT_OK, stderr
    assert result.summary is not None
    assert result.summary.retries > 0
    log = (tmp_path / "run.log").read_text(encoding="utf-8")
    assert log.count("event='retry'") == result.summary.retries
    assert "event='retry'" not in stderr
    logger = logging.getLogger("kimi_actors")
    assert logger.handlers == []
    assert logger.propagate


def test_cli_logging_shows_errors_but_not_the_run_stopped_event() -> None:
    stream = io.StringIO()
    cleared: list[bool] = []
    logger = logging.getLogger("kimi_actors")
    with cli_logging(None, stream, lambda: cleared.append(True)):
        logger.warning("event='rate_limited'")
        logger.error("event='run_stopped' error_type='AuthenticationError'")
        logger.error("event='something_else'")
    assert stream.getvalue() == "event='something_else'\n"
    assert cleared == [True]


def test_run_result_exit_code_must_be_documented() -> None:
    with pytest.raises(ValueError, match="exit_code"):
        RunResult(exit_code=7)
    assert set(EXIT_CODES) == {0, 1, 2, 3, 130}


# -- the demo's parts ---------------------------------------------------------------------------

def test_demo_requests_cycle_the_examples_with_unique_ids() -> None:
    requests = list(demo_requests(450))
    ids = [request["custom_id"] for request in requests]
    assert len(set(ids)) == 450
    assert ids[0] == "demo-001"
    assert ids[200] == "demo-001-r2"
    assert ids[400] == "demo-001-r3"
    assert requests[200]["body"] == requests[0]["body"]


def test_verify_answers_catches_a_wrong_answer_and_a_repeat(tmp_path: Path) -> None:
    write_demo_input(tmp_path / "in.jsonl", 3)
    config = RunConfig(input=tmp_path / "in.jsonl", output=tmp_path / "out.jsonl", fake=True,
                       window_seconds=1.0)
    assert run(config)[0].exit_code == EXIT_OK
    check = verify_answers(tmp_path / "in.jsonl", tmp_path / "out.jsonl")
    assert (check.requests, check.matched, check.mismatched, check.ok) == (3, 3, (), True)

    records = output_records(tmp_path / "out.jsonl")
    records[0]["response"]["body"]["choices"][0]["message"]["content"] += "!"
    records.append(records[1])
    write_lines(tmp_path / "out.jsonl", records)
    check = verify_answers(tmp_path / "in.jsonl", tmp_path / "out.jsonl")
    assert check.matched == 2
    assert set(check.mismatched) == {records[0]["custom_id"], records[1]["custom_id"]}
    assert not check.ok
