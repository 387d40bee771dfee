"""Every Python example in the README and in docs/ runs as written, and type-checks.

Each ```python block is a whole program. A block with a ``test_`` function is a pytest file
and runs under pytest in its own directory, where pytest-asyncio is in its default strict mode,
as in a user's project. Any other block runs as a script with ``MOONSHOT_API_KEY`` and
``MOONSHOT_BASE_URL`` pointing at a FakeKimi, as a user's environment would point at Kimi.
All blocks are checked together with ``mypy --strict``.
"""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from mypy import api as mypy_api

from kimi_actors.testing import FakeKimi

ROOT = Path(__file__).resolve().parents[1]
DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
BLOCK = re.compile(r"^```python\n(.*?)^```", re.MULTILINE | re.DOTALL)
TIMEOUT = 120


def blocks() -> Iterator[tuple[str, str]]:
    for document in DOCUMENTS:
        text = document.read_text(encoding="utf-8")
        for match in BLOCK.finditer(text):
            line = text.count("\n", 0, match.start()) + 2
            yield f"{document.name}:{line}", match.group(1)


BLOCKS = list(blocks())


def _name(where: str) -> str:
    return re.sub(r"\W", "_", where)


def test_the_documents_have_examples() -> None:
    names = {where.split(":")[0] for where, _ in BLOCKS}
    assert {"README.md", "testing.md", "tuning.md"} <= names


@pytest.mark.parametrize(("where", "code"), [
    pytest.param(where, code, id=where, marks=[pytest.mark.redis] if "REDIS_URL" in code else [])
    for where, code in BLOCKS])
async def test_the_example_runs_as_written(where: str, code: str, tmp_path: Path) -> None:
    name = _name(where)
    environ = {key: value for key, value in os.environ.items()
               if not key.startswith(("MOONSHOT_", "PYTEST_"))}
    redis = None
    if "REDIS_URL" in code:  # the example shares its limits through Redis, as deployed
        from redis_server import RedisServer

        redis = RedisServer(tmp_path)
        redis.start()
        environ["REDIS_URL"] = redis.url
    try:
        process = await _run_against_fake(code, name, environ, tmp_path)
    finally:
        if redis is not None:
            redis.stop()
    assert process.returncode == 0, f"{where} failed:\n{process.stdout}\n{process.stderr}"


async def _run_against_fake(code: str, name: str, environ: dict[str, str],
                            tmp_path: Path) -> subprocess.CompletedProcess[str]:
    async with FakeKimi() as fake:
        environ.update(MOONSHOT_API_KEY=fake.api_key, MOONSHOT_BASE_URL=fake.base_url)
        if re.search(r"^(async )?def test_", code, re.MULTILINE):
            path = tmp_path / f"test_{name}.py"
            path.write_text(code, encoding="utf-8")
            command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                       "--rootdir", str(tmp_path), str(path)]
        else:
            path = tmp_path / f"{name}.py"
            path.write_text(code, encoding="utf-8")
            command = [sys.executable, str(path)]
        return await _run(command, environ, tmp_path)


async def _run(command: list[str], environ: dict[str, str],
               cwd: Path) -> subprocess.CompletedProcess[str]:
    return await asyncio.to_thread(subprocess.run, command, env=environ, cwd=cwd,
                                   capture_output=True, text=True, timeout=TIMEOUT, check=False)


def test_the_examples_type_check_strictly(tmp_path: Path) -> None:
    files = []
    for where, code in BLOCKS:
        path = tmp_path / f"doc_{_name(where)}.py"
        path.write_text(code, encoding="utf-8")
        files.append(str(path))
    stdout, stderr, status = mypy_api.run(
        ["--strict", "--no-incremental", "--cache-dir", str(tmp_path / ".mypy_cache"),
         "--follow-imports", "silent", *files])
    assert status == 0, f"mypy --strict on the documents' examples:\n{stdout}\n{stderr}"
