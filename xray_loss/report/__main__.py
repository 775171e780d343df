"""python -m xray_loss.report DIR... [--out DIR] [--compare AXIS] [--bootstrap N]

Reads every run under the given multirun or run directories (metrics.json, TensorBoard events,
test_predictions.csv), skips runs that have not completed (naming them), and writes the study's
figures (PNG + PDF), summary.csv and summary.md into --out (default <first dir>/report).
"""

from __future__ import annotations

import argparse
import errno
from pathlib import Path

from xray_loss.identity import axis_names
from xray_loss.report.build import make_report
from xray_loss.report.records import PredictionsError
from xray_loss.report.stats import StatsError

# a 95% interval's 2.5% tail is one resample of 40 at the fewest: fewer leave it undefined
MIN_BOOTSTRAP = 40


def resamples(text: str) -> int:
    """``--bootstrap N``: a count that gives the CI column a value (0 or -5 emptied it)."""
    try:
        n = int(text)
    except ValueError:
        n = None
    if n is None or n < MIN_BOOTSTRAP:
        raise argparse.ArgumentTypeError(
            f"--bootstrap {text}: give an integer >= {MIN_BOOTSTRAP} resamples (default 1000), "
            f"enough for the 95% interval's tails"
        )
    return n


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
        help=f"another axis to compare, e.g. --compare lr ({', '.join(axis_names())})",
    )
    parser.add_argument(
        "--bootstrap", type=resamples, default=1000, help="bootstrap resamples (>= 40)"
    )
    args = parser.parse_args(argv)
    for d in args.dirs:
        if not d.exists():
            parser.error(f"{d} does not exist")
    bad = [a for a in args.compare if a not in axis_names()]
    if bad:
        parser.error(f"unknown --compare axis {bad}; valid: {', '.join(axis_names())}")
    out = args.out or args.dirs[0] / "report"
    there = next(p for p in (out, *out.parents) if p.exists())  # what mkdir would meet
    if not there.is_dir():
        parser.error(f"--out {out}: {there} is a file; give a folder for the figures and tables")
    try:
        make_report(args.dirs, out, args.compare, args.bootstrap)
    except (StatsError, PredictionsError) as err:  # one sentence naming the cell or the file
        parser.exit(1, f"python -m xray_loss.report: {err}\n")
    except OSError as err:
        if err.errno not in (errno.EROFS, errno.EACCES, errno.EPERM, errno.ENOSPC, errno.EDQUOT):
            raise
        parser.exit(
            1,
            f"python -m xray_loss.report: cannot write {err.filename or out} "
            f"({err.strerror}): give a writable folder with --out DIR.\n",
        )


if __name__ == "__main__":
    main()
