"""Start-up time of the command line: ``sabr --help``, ``sabr run --help`` and ``import sabr``, each in a
fresh interpreter (wall time, median of ``--runs``); the bar is ``sabr --help`` under 1 second.

    python benchmarks/cli_startup.py --runs 5 --json benchmarks/results/cli_startup.json

sabr must be importable (``pip install -e .``, or ``PYTHONPATH=src``). ``import sabr.regularizer`` (which
loads torch) is timed too, as the cost the lazy imports keep out of ``--help``.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

COMMANDS = {
    "sabr --help": ["-m", "sabr", "--help"],
    "sabr run --help": ["-m", "sabr", "run", "--help"],
    "import sabr": ["-c", "import sabr"],
    "import sabr.regularizer (torch)": ["-c", "import sabr.regularizer"],
}


def time_command(args: list[str], runs: int) -> list[float]:
    """Wall seconds of ``python <args>`` in a fresh interpreter, ``runs`` times (after one untimed warm-up)."""
    times = []
    for i in range(runs + 1):
        start = time.perf_counter()
        subprocess.run([sys.executable, *args], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        if i:
            times.append(time.perf_counter() - start)
    return times


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=5, help="timed runs per command (default: 5)")
    ap.add_argument("--json", help="also write the figures to this JSON file")
    args = ap.parse_args()
    rows = []
    for name, cmd in COMMANDS.items():
        t = time_command(cmd, args.runs)
        rows.append({"command": name, "median_s": statistics.median(t), "min_s": min(t), "max_s": max(t)})
    print(f"{'command':<34} {'median s':>9} {'min s':>7} {'max s':>7}")
    for r in rows:
        print(f"{r['command']:<34} {r['median_s']:>9.3f} {r['min_s']:>7.3f} {r['max_s']:>7.3f}")
    if args.json:
        result = {"runs": args.runs, "python": platform.python_version(), "machine": platform.machine(),
                  "rows": rows}
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
