"""The batch package's public surface: every submodule's names, re-exported, nothing else."""

from __future__ import annotations

import importlib

import kimi_actors.batch as batch

SUBMODULES = ("cli", "config", "io", "output", "plan", "progress", "report", "runner")


def test_every_public_name_of_the_submodules_is_re_exported() -> None:
    expected: set[str] = set()
    for name in SUBMODULES:
        module = importlib.import_module(f"kimi_actors.batch.{name}")
        assert len(module.__all__) == len(set(module.__all__))
        for public in module.__all__:
            assert hasattr(module, public), f"{name}.{public}"
        expected.update(module.__all__)
    assert set(batch.__all__) == expected
    assert all(getattr(batch, name) is not None for name in batch.__all__)
