"""The study's results page, from its committed records alone:

    python -m studies.bce_vs_ce.page [--records docs/results/2026-12-07-bce-vs-ce]

writes ``<records>.md`` beside the records folder and its figures into ``<records>/figures/``:
the package report's figures and tables (``xray_loss.report.make_report`` on the records,
their predictions expanded into the files the report reads). Byte for byte reproducible:
nothing on the page comes from the machine, the clock or the folder that writes it. Numbers
come from :mod:`.measures`, every judging sentence from a rule of :mod:`.rules`.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import math
import shutil
import tempfile
from collections import Counter
from pathlib import Path

import numpy as np
from scipy.stats import chi2

from studies.bce_vs_ce import rules
from studies.bce_vs_ce.collect import OUT, tested_files
from studies.bce_vs_ce.measures import (
    ACC_LEVEL,
    BUDGETS,
    EPOCHS,
    KINDS,
    LOSSES,
    LRS,
    POWER_DIFFERENCE,
    PRIMARY_LR,
    RESULT_METRICS,
    SEEDS,
    Comparison,
    Measure,
    StudyRun,
    cell,
    compare,
    curve_measures,
    detectable,
    epochs_to,
    family,
    load,
    pilot_sd,
    result_measures,
    seeds_needed,
    within,
)
from xray_loss.data.kermany_layout import patient_id
from xray_loss.identity import format_value
from xray_loss.report.records import CURVES_CSV

PILOT = Path("docs/results/2026-11-28-full-grid/runs")
TITLE = "BCE vs CE, second edition: the homework's setting on Kermany's official test split"
H = rules.HEADS


def lr_name(lr: float) -> str:
    return format_value(lr)


def mean_sd(values: list[float], digits: int = 4) -> str:
    values = [v for v in values if not math.isnan(v)]
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{np.mean(values):.{digits}f} ± {np.std(values, ddof=1):.{digits}f}"


# --- sections ------------------------------------------------------------------------------
def status(runs: list[StudyRun]) -> list[str]:
    lines = ["## Status", ""]
    for loss in LOSSES:
        for lr in LRS:
            done = len(cell(runs, loss, lr))
            lines.append("- " + rules.seeds_done(done, SEEDS, f"{H[loss]} at lr {lr_name(lr)}"))
    return [*lines, ""]


def design() -> list[str]:
    margins = [f"{m.name} ±{m.margin:g}" for m in curve_measures()]
    margins += [f"{label} ±{margin:g}" for label, margin in RESULT_METRICS.values()]
    return [
        "## Design (written before the runs)",
        "",
        f"Small CNN at 32 px, Adam at a constant learning rate, batch 32, {EPOCHS} epochs, "
        "training augmentation on (`conf/experiment/bce_vs_ce.yaml`, run by "
        "`studies/bce_vs_ce/run.sh`); loss {BCE, CE} x lr "
        f"{{{', '.join(map(lr_name, LRS))}}} x {SEEDS} seeds (seeds pair BCE and CE: same "
        "initialisation, data order and augmentation).",
        "",
        f"- **Q1 (primary)**: the homework's BCE vs CE at lr {lr_name(PRIMARY_LR)}, batch 32, "
        f"{EPOCHS} epochs, and its learning curves.",
        f"- **Q2**: CE at {', '.join(map(str, BUDGETS))} epochs (the epoch budgets of the "
        f"{EPOCHS}-epoch runs), at lr {lr_name(PRIMARY_LR)}.",
        f"- **Q3**: BCE at lr {', '.join(map(lr_name, LRS))}, {EPOCHS} epochs.",
        "- **Exploratory**: the full loss x lr x budget grid; intervals unadjusted, no verdicts.",
        "",
        f"Primary measures. Curves: epochs to val accuracy ≥ {ACC_LEVEL:g}; train NLL at "
        f"epochs {', '.join(map(str, BUDGETS))}; area under the val NLL curve (trapezoid, "
        f"epochs 1-{EPOCHS}). Results: test NLL, test AUROC and test accuracy at the threshold "
        "chosen on the carve-out (Youden's J), each for the best checkpoint within the budget "
        "(val AUROC, exact, ties keep the earlier epoch) and for the weights of the budget's "
        "own epoch (fixed epoch).",
        "",
        "Test: Kermany's official test/ folder (624 images), read once per run, at the end. "
        "The checkpoint and the threshold are chosen on the patient-grouped 10% carve-out of "
        "train/ before the test split is read (`tests/test_study_selection.py` fails if "
        "anything before the end of fit iterates the test split).",
        "",
        "Statistics: CE minus BCE (or the later budget minus the earlier, the higher lr minus "
        "the lower) paired by seed; mean, 95% t-interval, paired t-test; p-values "
        "Holm-adjusted across each question's comparisons. A difference is called one only "
        'when its Holm-adjusted p < 0.05; "no difference" only when two one-sided t-tests '
        "(TOST) show equivalence within the margin stated here: "
        + "; ".join(margins)
        + '. Anything else is "not resolved" with the seeds at hand.',
        "",
    ]


def power_section(pilot: Path, runs: list[StudyRun]) -> list[str]:
    sd, pairs = pilot_sd(pilot) if pilot.exists() else (math.nan, 0)
    have = len(set(cell(runs, "bce", PRIMARY_LR)) & set(cell(runs, "ce", PRIMARY_LR)))
    needed = seeds_needed(POWER_DIFFERENCE, sd) if sd > 0 and pairs >= 2 else 0
    smallest = detectable(have, sd) if sd > 0 and pairs >= 2 else math.nan
    pilot_link = f"{pilot.parent.name}/{pilot.name}"
    lines = [
        "## Power",
        "",
        f"Pilot: the records of [{pilot_link}]({pilot_link}/), CE minus BCE test objective at lr "
        f"{lr_name(PRIMARY_LR)}, {EPOCHS} epochs, paired by seed (plain BCE and CE: the "
        "objective is the NLL). Power of the two-sided paired t-test from the noncentral t "
        "distribution (scipy.stats.nct), alpha 0.05 for one comparison (Holm's adjustment "
        "across a question asks for more).",
        "",
        rules.power_sentence(sd, pairs, POWER_DIFFERENCE, needed, have, smallest),
    ]
    if pairs >= 2 and sd > 0:
        upper = sd * math.sqrt((pairs - 1) / chi2.ppf(0.025, pairs - 1))
        lines.append(
            f"An SD from {pairs} pairs is itself uncertain: its 95% upper confidence limit is "
            f"{upper:.4f} (chi-square, {pairs - 1} df), for which "
            f"{seeds_needed(POWER_DIFFERENCE, upper)} seeds would be needed. The pilot's test "
            "split was a carve-out of train/, not the official test/ folder."
        )
    return [*lines, ""]


def manifest_rows(folder: Path) -> list[dict[str, str]]:
    """A collected manifest's rows (file, sha1, split), with each file's label and patient."""
    rows = []
    for path in sorted(folder.glob("*.csv")):
        with open(path, newline="") as f:
            for row in csv.DictReader(f):
                top, label, name = row["file"].split("/")[-3:]
                patient = f"{top}/{patient_id(name) or 'file:' + Path(name).stem}"
                rows.append({**row, "split": path.stem, "label": label, "patient": patient})
    return rows


def split_digest(rows: list[dict[str, str]]) -> str:
    """The digest metrics.json records for a split (``xray_loss.data.base.manifest``)."""
    items = sorted((r["file"], int(r["label"] == "PNEUMONIA"), r["sha1"]) for r in rows)
    return hashlib.sha256(json.dumps(items).encode()).hexdigest()[:16]


def data_section(folder: Path, runs: list[StudyRun]) -> list[str]:
    lines = [
        "## Data",
        "",
        "From the split manifests beside this page (`manifests/<digests>/<split>.csv`: every "
        "file and its sha1; the label is its class folder, the patient is in its name); the "
        "digest is the one each run's metrics.json records.",
        "",
    ]
    manifests = sorted(p for p in (folder / "manifests").glob("*") if p.is_dir())
    if not manifests:
        return [*lines, "No manifest collected yet.", ""]
    for path in manifests:
        rows = manifest_rows(path)
        users = [r for r in runs if _manifest_of(r) == path.name]
        lines += [f"`manifests/{path.name}` ({len(users)} run(s)):", ""]
        lines += ["| split | from folder | images | NORMAL | PNEUMONIA | patients | digest |"]
        lines += ["|---|---|---|---|---|---|---|"]
        found = {}
        for split in ("train", "val", "test"):
            part = [r for r in rows if r["split"] == split]
            found[split] = split_digest(part)
            folders = ", ".join(sorted({r["file"].split("/", 1)[0] + "/" for r in part}))
            labels = Counter(r["label"] for r in part)
            lines.append(
                f"| {split} | {folders} | {len(part)} | {labels['NORMAL']} | "
                f"{labels['PNEUMONIA']} | {len({r['patient'] for r in part})} | {found[split]} |"
            )
        bad = [
            r.job for r in users if any(r.record["splits"][s]["digest"] != found[s] for s in found)
        ]
        lines += ["", _digests_agree(bad, len(users)), ""]
    return lines


def _digests_agree(bad: list[str], total: int) -> str:
    if bad:
        return f"The manifest's digests differ from the records of {', '.join(bad)}."
    return f"The digests recomputed from the manifest equal those of all {total} run record(s)."


def _manifest_of(run: StudyRun) -> str:
    splits = run.record.get("splits") or {}
    return "-".join(splits[s]["digest"] for s in ("train", "val", "test") if s in splits)


def provenance(runs: list[StudyRun]) -> list[str]:
    lines = ["## Provenance", "", "From the runs' records (never the machine writing this page):"]
    lines.append("")
    if not runs:
        return [*lines, "No runs collected yet.", ""]
    commits = Counter(str(r.record.get("commit") or "not recorded") for r in runs)
    machines = Counter(_machine(r.record.get("machine")) for r in runs)
    lines += [f"- Code: {', '.join(f'commit {c} ({n} runs)' for c, n in sorted(commits.items()))}."]
    lines += [f"- Trained on: {'; '.join(f'{m} ({n} runs)' for m, n in sorted(machines.items()))}."]
    started = min(str(r.record.get("started", "")) for r in runs)
    finished = max(str(r.record.get("finished", "")) for r in runs)
    hours = sum(float(r.record.get("wall_time_s", 0)) for r in runs) / 3600
    lines += [
        f"- {len(runs)} runs, {hours:.1f} h of training, from {started} to {finished}.",
        "- Records: `runs/<sweep>/<job>/` (metrics.json as written; curves.csv, the per-epoch "
        "values; predictions.csv, P(pneumonia) of every tested epoch) and `manifests/`, "
        "collected by `python -m studies.bce_vs_ce.collect`; checkpoints and events stayed "
        "on the training machine.",
        "",
    ]
    return lines


def _machine(m: dict | None) -> str:
    if not m:
        return "not recorded"
    gpu = m.get("gpu") or "no GPU"
    return (
        f"{m.get('host')}: {m.get('cpu')}, {m.get('cores')} cores, {gpu}, Python "
        f"{m.get('python')}, torch {m.get('torch')}"
    )


def homework(runs: list[StudyRun]) -> list[str]:
    bce, ce = cell(runs, "bce", PRIMARY_LR), cell(runs, "ce", PRIMARY_LR)
    lines = [
        "## The homework, point by point",
        "",
        f"It claimed: at lr {lr_name(PRIMARY_LR)}, batch 32, {EPOCHS} epochs, BCE reached 99% "
        "accuracy and 0.05 loss early, while CE needed more epochs. The records at that "
        "setting:",
        "",
    ]
    levels = [
        ("train accuracy ≥ 0.99", "train/acc", 0.99, 1),
        ("val accuracy ≥ 0.99", "val/acc", 0.99, 1),
        ("train loss ≤ 0.05", "train/objective", 0.05, -1),
        ("val loss ≤ 0.05", "val/objective", 0.05, -1),
    ]
    for what, tag, level, sign in levels:
        hits = {
            head: [
                epochs_to({e: sign * v for e, v in r.curve(tag).items()}, sign * level)
                for r in runs_.values()
            ]
            for head, runs_ in (("bce", bce), ("ce", ce))
        }
        found = sum(not math.isnan(e) for e in hits["bce"])
        supports = rules.reach_claim(found, len(hits["bce"]))
        lines.append(
            f"- {rules.claim(f'BCE reached {what}', supports)} "
            + " ".join(rules.reached(h, what, hits[h], len(hits[h])) for h in hits)
        )
    speed = q1_tests(runs)[1][0]  # Q1's test of epochs to the level, Holm-adjusted with Q1's
    lines.append(
        f"- {rules.claim('CE needed more epochs', rules.later_claim(speed))} CE minus BCE "
        f"{speed.measure.name}: {rules.interval(speed)}, "
        + rules.verdict(speed, "CE later", "CE earlier")
        + "."
    )
    return [*lines, ""]


def comparison_table(rows: list[tuple[str, str, str, Comparison, str, str]]) -> list[str]:
    lines = ["| measure | first | second | second minus first [95% CI] | verdict |"]
    lines += ["|---|---|---|---|---|"]
    for name, first, second, c, higher, lower in rows:
        lines.append(
            f"| {name} | {first} | {second} | {rules.interval(c)} | "
            f"{rules.verdict(c, higher, lower)} |"
        )
    return lines


def values(runs: dict[int, StudyRun], m: Measure) -> str:
    return mean_sd([m.of(r) for r in runs.values()], m.digits)


def q1_tests(runs: list[StudyRun]) -> tuple[list[Measure], list[Comparison]]:
    """Q1's comparisons, CE minus BCE, one Holm family (the first: epochs to the level)."""
    bce, ce = cell(runs, "bce", PRIMARY_LR), cell(runs, "ce", PRIMARY_LR)
    measures = [*curve_measures(), *result_measures(EPOCHS)]
    return measures, family([compare(bce, ce, m, "Q1") for m in measures])


def q1(runs: list[StudyRun]) -> list[str]:
    bce, ce = cell(runs, "bce", PRIMARY_LR), cell(runs, "ce", PRIMARY_LR)
    measures, tests = q1_tests(runs)
    rows = [
        (m.name, values(bce, m), values(ce, m), c, "CE higher", "CE lower")
        for m, c in zip(measures, tests, strict=True)
    ]
    return [
        f"## Q1 (primary): BCE vs CE at lr {lr_name(PRIMARY_LR)}, {EPOCHS} epochs",
        "",
        rules.seeds_done(len(set(bce) & set(ce)), SEEDS, "Paired seeds"),
        f"First: BCE, second: CE (mean ± SD over seeds); Holm across these {len(tests)} "
        "comparisons.",
        "",
        *comparison_table(rows),
        "",
    ]


def q2(runs: list[StudyRun]) -> list[str]:
    ce = cell(runs, "ce", PRIMARY_LR)
    rows, tests = [], []
    for early, late in zip(BUDGETS, BUDGETS[1:], strict=False):
        for a, b in zip(result_measures(early), result_measures(late), strict=True):
            name = b.name.rsplit(" (", 1)[0]
            m = Measure(name, b.of, b.margin, b.digits)
            c = within(ce, a, b, m, "Q2")
            tests.append(c)
            rows.append(
                (
                    f"{name}: {late} vs {early} epochs",
                    values(ce, a),
                    values(ce, b),
                    c,
                    f"higher at {late}",
                    f"lower at {late}",
                )
            )
    family(tests)
    return [
        f"## Q2: CE at {', '.join(map(str, BUDGETS))} epochs (lr {lr_name(PRIMARY_LR)})",
        "",
        rules.seeds_done(len(ce), SEEDS, "CE seeds"),
        f"First: the shorter budget, second: the longer, same runs; Holm across these "
        f"{len(tests)} comparisons.",
        "",
        *comparison_table(rows),
        "",
    ]


def q3(runs: list[StudyRun]) -> list[str]:
    base = cell(runs, "bce", PRIMARY_LR)
    rows, tests = [], []
    for lr in (x for x in LRS if x != PRIMARY_LR):
        other = cell(runs, "bce", lr)
        for m in result_measures(EPOCHS):
            c = compare(base, other, m, "Q3")
            tests.append(c)
            rows.append(
                (
                    f"{m.name}: lr {lr_name(lr)} vs {lr_name(PRIMARY_LR)}",
                    values(base, m),
                    values(other, m),
                    c,
                    f"higher at lr {lr_name(lr)}",
                    f"lower at lr {lr_name(lr)}",
                )
            )
    family(tests)
    done = ", ".join(f"lr {lr_name(lr)}: {len(cell(runs, 'bce', lr))}" for lr in LRS)
    return [
        f"## Q3: BCE at lr {', '.join(map(lr_name, LRS))} ({EPOCHS} epochs)",
        "",
        f"BCE seeds done of {SEEDS}: {done}. First: lr {lr_name(PRIMARY_LR)}, second: the "
        f"higher lr, paired by seed; Holm across these {len(tests)} comparisons.",
        "",
        *comparison_table(rows),
        "",
    ]


def exploratory(runs: list[StudyRun]) -> list[str]:
    lines = [
        "## Exploratory: the full grid",
        "",
        "Mean ± SD over seeds; CE minus BCE of test NLL paired by seed with its unadjusted 95% "
        "t-interval. Exploratory: no verdicts.",
        "",
        "| lr | epochs | tested | BCE n | CE n | BCE test NLL | CE test NLL | BCE AUROC | "
        "CE AUROC | BCE accuracy | CE accuracy | Δ test NLL (CE − BCE) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for lr in LRS:
        bce, ce = cell(runs, "bce", lr), cell(runs, "ce", lr)
        for budget in BUDGETS:
            for kind in KINDS:

                def m(metric, b=budget, k=kind):
                    return Measure(metric, lambda r: r.result(b, k, metric), 0.01)

                d = compare(bce, ce, m("nll"), "exploratory")
                cells = [values(x, m(metric)) for metric in RESULT_METRICS for x in (bce, ce)]
                lines.append(
                    f"| {lr_name(lr)} | {budget} | {KINDS[kind]} | {len(bce)} | "
                    f"{len(ce)} | {' | '.join(cells)} | {rules.interval(d)} |"
                )
    return [*lines, ""]


def figures_section(folder: Path) -> list[str]:
    lines = ["## Figures", ""]
    for png in sorted((folder / "figures").glob("*.png")):
        what = FIGURE_TEXT.get(png.stem, png.stem)
        lines += [f"![{what}]({folder.name}/figures/{png.name})", "", f"*{what}.*", ""]
    return lines


FIGURE_TEXT = {
    "fig1_difference": "CE minus BCE per epoch, paired by seed, mean with its 95% t-band: train "
    "and val NLL and accuracy, one column per learning rate (the package report)",
    "fig3_forest": "CE minus BCE per cell on the test split, every seed a dot, the mean with its "
    "95% t-interval (the package report)",
    "fig1_loss_compare": "learning curves, BCE vs CE (the package report)",
    "fig2_lr": "learning curves across learning rates (the package report)",
    "fig2_epochs": "test metrics against the epoch budget, best checkpoint (the package report)",
    "calibration": "reliability of P(pneumonia) on the test split (the package report)",
}


# --- figures -------------------------------------------------------------------------------
def staged(folder: Path, runs: list[StudyRun], into: Path) -> Path:
    """The records as the package report reads them: metrics.json and curves.csv, and each
    tested epoch's predictions as ``test_predictions<suffix>.csv``."""
    for run in runs:
        source, target = folder / "runs" / run.sweep / run.job, into / run.sweep / run.job
        target.mkdir(parents=True)
        for name in ("metrics.json", CURVES_CSV):
            shutil.copyfile(source / name, target / name)
        if not run.predictions:
            continue
        for name, epoch in tested_files(run.record).items():
            probs = run.predictions[f"epoch{epoch:03d}"]
            with open(target / name, "w", newline="") as f:
                writer = csv.writer(f, lineterminator="\n")
                writer.writerow(["index", "label", "prob", "patient"])
                for i, (y, p, patient) in enumerate(
                    zip(run.predictions["labels"], probs, run.predictions["patients"], strict=True)
                ):
                    writer.writerow([i, y, p, patient])
    return into


def draw(folder: Path, runs: list[StudyRun], n_boot: int) -> None:
    """``figures/``: the package report's figures and tables of the records."""
    from xray_loss.report.build import make_report

    out = folder / "figures"
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    if not runs:
        return
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "report"
        make_report([staged(folder, runs, Path(tmp) / "runs")], report, n_boot=n_boot)
        for path in sorted(report.glob("*.png")) + [report / "summary.md"]:
            shutil.copyfile(path, out / path.name)


def write_page(
    folder: Path = OUT, pilot: Path = PILOT, n_boot: int = 1000, figures: bool = True
) -> Path:
    """Write ``<folder>.md`` and ``<folder>/figures/`` from ``folder``'s records (``figures``
    False: the text alone, over the figures already there)."""
    runs = load(folder)
    if figures:
        draw(folder, runs, n_boot)
    text = [
        f"# {TITLE} ({folder.name[:10]})",
        "",
        "Built by `python -m studies.bce_vs_ce.page` from the records beside it "
        f"([{folder.name}/]({folder.name}/)) and nothing else; it supersedes "
        "[2026-11-28-full-grid.md](2026-11-28-full-grid.md), which is kept as it was.",
        "",
        *status(runs),
        *design(),
        *power_section(pilot, runs),
        *data_section(folder, runs),
        *provenance(runs),
        *homework(runs),
        *q1(runs),
        *q2(runs),
        *q3(runs),
        *exploratory(runs),
        *figures_section(folder),
    ]
    page = folder.with_suffix(".md")
    page.write_text("\n".join(text).rstrip("\n") + "\n")
    return page


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m studies.bce_vs_ce.page", description=__doc__)
    parser.add_argument("--records", type=Path, default=OUT, help="the collected records")
    parser.add_argument("--pilot", type=Path, default=PILOT, help="the pilot's records")
    parser.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples")
    args = parser.parse_args(argv)
    if not args.records.parent.is_dir():
        parser.error(f"{args.records.parent} does not exist: name the folder of the records")
    if not (args.records / "runs").is_dir():
        print(f"{args.records}/runs holds no runs yet: the page says so")
    print(f"Results page: {write_page(args.records, args.pilot, args.bootstrap)}")


if __name__ == "__main__":
    main()
