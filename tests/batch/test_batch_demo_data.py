"""The bundled demo file: valid, varied, and the same in examples/ and in the package."""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

from kimi_actors.batch import iter_requests, scan_input
from kimi_actors.protocol.tokens import estimate_text_tokens

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "demo_requests.jsonl"


def packaged() -> bytes:
    return resources.files("kimi_actors").joinpath("data/demo_requests.jsonl").read_bytes()


def test_the_package_ships_the_same_file_as_examples() -> None:
    assert packaged() == EXAMPLE.read_bytes()


def test_the_demo_file_is_clean_openai_batch_input() -> None:
    scan = scan_input(EXAMPLE, default_model=None)
    assert scan.ok
    assert 150 <= scan.requests <= 250
    for line in EXAMPLE.read_text(encoding="utf-8").splitlines():
        record = json.loads(line)
        assert set(record) == {"custom_id", "method", "url", "body"}


def test_the_demo_file_is_varied() -> None:
    requests = list(iter_requests(EXAMPLE, default_model=None))
    prompts = [r.body["messages"][-1]["content"] for r in requests]
    ascii_only = [p for p in prompts if p.isascii()]
    with_cjk = [p for p in prompts if not p.isascii()]
    assert len(ascii_only) >= 40
    assert len(with_cjk) >= 40
    mixed = [p for p in with_cjk if estimate_text_tokens(p.encode("ascii", "ignore").decode()) > 3]
    assert len(mixed) >= 10
    assert {r.body["model"] for r in requests} == {"kimi-k2.6"}
    cut_short = [r for r in requests if r.body.get("max_tokens", 1024) <= 16]
    assert 3 <= len(cut_short) <= 20
    assert any(r.body["messages"][0]["role"] == "system" for r in requests)
    assert any(len(r.body["messages"]) >= 3 for r in requests)
    assert len({r.custom_id for r in requests}) == len(requests)
