"""``make demo``'s wall time once set up: ``python -m sama.demo`` (what the target runs) into a
fresh temporary output folder, timed end to end (process start, both training stages,
benchmark, edits, report). Target: at most 5 minutes on this machine. One run by default (the
demo is minutes long; ``--repeats`` for a median).

    python benchmarks/bench_demo.py [--repeats 1]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.common import machine  # noqa: E402

TARGET_S = 300.0


def demo_seconds(out: Path) -> float:
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "sama.demo", "--out", str(out)],
        cwd=ROOT,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
        capture_output=True,
        text=True,
    )
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(
            f"bench_demo: the demo failed (exit {done.returncode}):\n{done.stderr[-3000:]}"
        )
    return seconds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args(argv)
    times = []
    with tempfile.TemporaryDirectory(prefix="sama-bench-demo-") as tmp:
        for i in range(args.repeats):
            times.append(demo_seconds(Path(tmp) / f"demo{i}"))
    median = statistics.median(times)
    print(f"machine: {machine()}; {args.repeats} run(s)")
    print()
    print("| command | wall time (median) | budget | ratio |")
    print("|---|---|---|---|")
    print(f"| python -m sama.demo | {median:.0f} s | {TARGET_S:.0f} s | {median / TARGET_S:.2f} |")
    ok = median <= TARGET_S
    print()
    print(f"target: make demo <= {TARGET_S:.0f} s: {'met' if ok else 'MISSED'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
