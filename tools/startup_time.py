"""Start-up time of ``import kpipe`` and ``kpipe --help``, for one or two source trees side by side.

Usage: ``python tools/startup_time.py [OTHER_TREE] [--rounds 7]``. Each round runs every command once per
tree, interleaved (so load on a shared machine hits both alike); the median wall time per command and tree is
printed, with the ratio OTHER / this tree when OTHER_TREE (e.g. a checkout of main) is given.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
COMMANDS = {
    "import kpipe": ["-c", "import kpipe"],
    "kpipe --help": ["-c", "import sys; from kpipe.cli import main; sys.argv = ['kpipe', '--help']; main()"],
}


def run_once(tree: Path, args: list[str]) -> float:
    env = os.environ | {"PYTHONPATH": str(tree)}
    started = time.perf_counter()
    subprocess.run([sys.executable, *args], env=env, check=True, capture_output=True, cwd=tree)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("other", nargs="?", type=Path, help="Another source tree (e.g. a checkout of main).")
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    trees = {"this": ROOT} | ({"other": args.other.resolve()} if args.other else {})
    times: dict[tuple[str, str], list[float]] = {(c, t): [] for c in COMMANDS for t in trees}
    for _ in range(args.rounds):
        for command, argv in COMMANDS.items():
            for tree_name, tree in trees.items():
                times[command, tree_name].append(run_once(tree, argv))
    for command in COMMANDS:
        line = f"{command:14s}" + "".join(f"  {t}: {statistics.median(times[command, t]):.3f} s" for t in trees)
        if args.other:
            ratio = statistics.median(times[command, "other"]) / statistics.median(times[command, "this"])
            line += f"  (other / this: {ratio:.1f}x)"
        print(line)


if __name__ == "__main__":
    main()
