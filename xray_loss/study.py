"""The README's study, rerun end to end on a Kermany-layout folder: ``make study DATA=...``.

    python -m xray_loss.study DATA [--out logs/study] [--page docs/results] [OVERRIDE ...]

1. The grid, ``experiment=full_grid_budgets``: loss {bce, ce} x lr {1e-5, 1e-4, 1e-3} x epochs
   {10, 30, 100} x 3 seeds, the epochs read as budgets of one 100-epoch run per cell.
2. The matched-head controls (``loss=bce_matched,ce_matched``, same seeds) at the learning rate
   where BCE and CE differ most on *validation* (mean best val loss over the seeds), so that the
   page can tell the loss from the head's effective learning rate without looking at test.
3. The report (``python -m xray_loss.report``) of both sweeps, the shortcut probe
   (``python -m xray_loss.probe``), then the results page (``xray_loss.report.page``).

Every sweep runs with ``resume=true`` into a fixed folder: run the same command again after an
interruption and it skips the completed runs and continues the rest. OVERRIDEs go to every
training run (the scale: ``data.image_size=32 data.num_workers=0`` on a CPU; ``model=resnet18
trainer=gpu`` on a GPU).
"""

from __future__ import annotations

import argparse
import math
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

GRID = ["experiment=full_grid_budgets", "data=kermany"]
MATCHED = "loss=bce_matched,ce_matched"


def sweep(data: Path, out: Path, overrides: list[str]) -> None:
    """One resumable multirun into ``out``; a failed job stops the study (exit status kept)."""
    command = [sys.executable, "-m", "xray_loss.train", "-m", *GRID, f"data.root={data}"]
    command += [*overrides, f"hydra.sweep.dir={out}", "resume=true"]
    print("+", " ".join(command[1:]), flush=True)  # what to rerun by hand
    done = subprocess.run(command)
    if done.returncode:
        raise SystemExit(done.returncode)


def matched_lr(grid: Path) -> tuple[float, dict[float, float]]:
    """The lr where the heads differ most on validation: |mean best val loss of CE - of BCE|
    over the seeds, at the longest budget; with every lr's difference."""
    from xray_loss.report.runs import drop_duplicates, load_runs

    runs = drop_duplicates(load_runs([grid])[0])[0]
    longest = max(int(r.config["epochs"]) for r in runs)
    best: dict[float, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for r in runs:
        losses = [v for _, v in r.curves.get("val/objective", [])]
        if int(r.config["epochs"]) == longest and losses:
            best[float(r.config["lr"])][str(r.config["loss"])].append(min(losses))
    gaps = {
        lr: abs(_mean(heads["ce"]) - _mean(heads["bce"]))
        for lr, heads in best.items()
        if heads["ce"] and heads["bce"]
    }
    if not gaps:
        raise SystemExit(f"no lr with both heads completed under {grid}: rerun the study")
    return max(gaps, key=gaps.get), gaps


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else math.nan


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m xray_loss.study", description=__doc__)
    parser.add_argument("data", type=Path, help="Kermany-layout folder (train/NORMAL, ...)")
    parser.add_argument("--out", type=Path, default=Path("logs/study"), help="runs and report")
    parser.add_argument("--page", type=Path, default=Path("docs/results"), help="results page")
    parser.add_argument("overrides", nargs="*", help="training overrides, e.g. data.image_size=32")
    args = parser.parse_intermixed_args(argv)
    if not (args.data / "train").is_dir():
        parser.error(
            f"{args.data} has no train/ folder: the study needs a Kermany-layout folder, "
            "DATA/train/{NORMAL,PNEUMONIA}/*.jpeg (and test/, or data.test_fraction=0.15)"
        )
    from xray_loss.data.kermany_layout import DataError, check_classes, scan

    try:  # once here, not once per job of the grid (and not as the probe's traceback)
        check_classes(scan(args.data), "train", args.data, required=True)
    except DataError as err:
        parser.exit(2, f"python -m xray_loss.study: {err}\n")
    grid, matched = args.out / "grid", args.out / "matched"
    if not (args.out / "probe.json").exists():  # the shortcut probe, for the page
        probe = [sys.executable, "-m", "xray_loss.probe", str(args.data), "--out"]
        done = subprocess.run([*probe, str(args.out / "probe.json")])
        if done.returncode:  # the probe said why
            raise SystemExit(done.returncode)
    sweep(args.data, grid, args.overrides)
    lr, gaps = matched_lr(grid)
    each = ", ".join(f"lr={k:g}: {v:.4f}" for k, v in sorted(gaps.items()))
    print(f"matched controls at lr={lr:g}, where |CE - BCE| best val loss is largest ({each})")
    sweep(args.data, matched, [*args.overrides, MATCHED, f"lr={lr:g}"])
    from xray_loss.report.build import make_report
    from xray_loss.report.page import write_page

    report = args.out / "report"
    make_report([grid, matched], report)
    page = write_page(args.out, args.page, matched_lr=lr, gaps=gaps)
    print(f"Results page: {page}")


if __name__ == "__main__":
    main()
