"""Mutation testing of the layers that apply the decisions: one command, one score.

    python scripts/mutation.py            # a fresh run of mutmut, then the report
    python scripts/mutation.py --resume   # go on with a stopped run, then the report
    python scripts/mutation.py --report   # only report what the last run found

What is mutated and which tests run is [tool.mutmut] in pyproject.toml; docs/testing.md
says why mutmut and lists the survivors judged equivalent (``kimi_actors...__mutmut_N``
names in backticks), which the score leaves out. A timeout counts as killed: the tests
noticed the change by not finishing. A run starts fresh (``mutants/`` removed) unless told to
resume: mutmut 3.8 keeps earlier verdicts when tests change, and its incremental stats run
after new tests maps each function to the new tests only, so survivors would be judged
against too few tests. Needs ``pip install mutmut`` (not a dev dependency:
the run takes hours on two cores, so CI does not run it).
"""

from __future__ import annotations

import argparse
import collections
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DETECTED = ("killed", "timeout")
EQUIVALENT = re.compile(r"`(kimi_actors\.[^`]+__mutmut_\d+)`")


def results() -> dict[str, str]:
    done = subprocess.run(["mutmut", "results", "--all", "true"], cwd=ROOT, check=True,
                          capture_output=True, text=True)
    status = {}
    for line in done.stdout.splitlines():
        name, sep, verdict = line.strip().rpartition(": ")
        if sep:
            status[name] = verdict
    return status


def module(mutant: str) -> str:
    """The module a mutant lives in: ``kimi_actors.actors.runtime.xǁRuntimeǁattempt__mutmut_3``
    is in ``kimi_actors.actors.runtime``."""
    parts = mutant.split(".")
    for end in range(len(parts), 0, -1):
        if (ROOT / Path(*parts[:end])).with_suffix(".py").exists():
            return ".".join(parts[:end])
    return parts[0]


def report(status: dict[str, str]) -> float:
    equivalent = set(EQUIVALENT.findall((ROOT / "docs" / "testing.md").read_text("utf-8")))
    rows: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    for name, verdict in status.items():
        if verdict == "survived" and name in equivalent:
            verdict = "equivalent"
        rows[module(name)][verdict] += 1
    total: collections.Counter[str] = collections.Counter()
    print(f"{'module':38} {'mutants':>7} {'killed':>7} {'equiv':>6} {'alive':>6} "
          f"{'unrun':>6} {'score':>7}")
    for name in sorted(rows):
        counts = rows[name]
        total.update(counts)
        print(_row(name, counts))
    print(_row("all", total))
    survivors = sorted(name for name, verdict in status.items()
                       if verdict in ("survived", "no tests") and name not in equivalent)
    if survivors:
        print(f"\n{len(survivors)} survivors not yet killed nor judged equivalent "
              f"(mutmut show NAME):")
        for name in survivors:
            print(f"  {name}")
    return _score(total)


def _score(counts: collections.Counter[str]) -> float:
    detected = sum(counts[verdict] for verdict in DETECTED)
    judged = detected + counts["survived"] + counts["no tests"]
    return 100.0 * detected / judged if judged else 0.0


def _row(name: str, counts: collections.Counter[str]) -> str:
    mutants = sum(counts.values())
    detected = sum(counts[verdict] for verdict in DETECTED)
    alive = counts["survived"] + counts["no tests"]
    return (f"{name:38} {mutants:7} {detected:7} {counts['equivalent']:6} {alive:6} "
            f"{counts['not checked']:6} {_score(counts):6.1f}%")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--report", action="store_true", help="only report the last run")
    parser.add_argument("--resume", action="store_true", help="go on with a stopped run")
    args = parser.parse_args()
    if not args.report:
        if not args.resume:
            shutil.rmtree(ROOT / "mutants", ignore_errors=True)
        env = {**os.environ, "HYPOTHESIS_PROFILE": "mutation"}
        subprocess.run(["mutmut", "run"], cwd=ROOT, env=env, check=False)
    score = report(results())
    print(f"\nmutation score: {score:.1f}% of the mutants judged (equivalents left out)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
