"""python -m xray_loss.report DIR... [--out DIR] [--compare AXIS] [--bootstrap N]

Reads every run under the given multirun or run directories (metrics.json, TensorBoard events,
test_predictions.csv), skips runs that have not completed (naming them), and writes the study's
figures (PNG + PDF), summary.csv and summary.md into --out (default <first dir>/report).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from xray_loss.metrics import AXES
from xray_loss.report.build import make_report


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m xray_loss.report", description="Figures and tables from runs."
    )
    parser.add_argument("dirs", nargs="+", type=Path, help="multirun or run directories")
    parser.add_argument("--out", type=Path, help="output folder (default: <first dir>/report)")
    parser.add_argument(
        "--compare",
        action="append",
        default=[],
        help=f"another axis to compare, e.g. --compare lr ({', '.join(AXES)})",
    )
    parser.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples")
    args = parser.parse_args(argv)
    for d in args.dirs:
        if not d.exists():
            parser.error(f"{d} does not exist")
    bad = [a for a in args.compare if a not in AXES]
    if bad:
        parser.error(f"unknown --compare axis {bad}; valid: {', '.join(AXES)}")
    make_report(args.dirs, args.out or args.dirs[0] / "report", args.compare, args.bootstrap)


if __name__ == "__main__":
    main()
