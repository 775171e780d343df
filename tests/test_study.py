"""studies/bce_vs_ce: collect copies each completed run's small records, the page is rebuilt
from them alone byte for byte, says plainly what is missing, and the 2026-11-28 page stays."""

from __future__ import annotations

import csv
import filecmp
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from studies.bce_vs_ce import measures
from studies.bce_vs_ce.collect import CURVE_TAGS, MAX_RUN_BYTES, collect
from studies.bce_vs_ce.page import PILOT, write_page
from tests.conftest import ROOT
from tests.study_records import make_logs, make_run
from xray_loss.report.records import read_curves

NEW = "2026-12-07-bce-vs-ce"


def test_collect_adds_only_new_runs_and_keeps_each_small_and_complete(tmp_path: Path):
    logs = make_logs(tmp_path / "logs", seeds=1, lrs=(1e-5,))
    out = tmp_path / "results" / NEW
    assert len(collect(logs, out)) == 2
    assert collect(logs, out) == []  # idempotent
    make_run(logs / "primary" / "loss=bce,seed=1", "bce", 1e-5, 1)
    (logs / "primary" / "loss=ce,seed=1").mkdir()
    (logs / "primary" / "loss=ce,seed=1" / "metrics.json").write_text('{"status": "running"}')
    (added,) = collect(logs, out)  # the new completed run only, not the running one
    assert added == out / "runs" / "primary" / "loss=bce,seed=1"
    (manifest,) = (out / "manifests").iterdir()  # one split, one manifest
    assert sorted(p.name for p in manifest.iterdir()) == ["test.csv", "train.csv", "val.csv"]
    for run in (out / "runs" / "primary").iterdir():
        assert sum(p.stat().st_size for p in run.iterdir()) < MAX_RUN_BYTES
        curves = read_curves(run)  # the package report reads them back
        assert set(curves) == set(CURVE_TAGS) and len(curves["val/nll"]) == 100
        record = json.loads((run / "metrics.json").read_text())
        with open(run / "predictions.csv", newline="") as f:
            header = next(csv.reader(f))
        tested = {b["best_epoch"] for b in record["budgets"].values()} | {10, 30, 100}
        assert header == ["index", "label", "patient", *(f"epoch{e:03d}" for e in sorted(tested))]
    # each column is the predictions file of its epoch, to 6 significant digits
    source = logs / "primary" / "loss=bce,seed=0"
    run = next(r for r in measures.load(out) if r.job == "loss=bce,seed=0")
    with open(source / "test_predictions_epoch030_last.csv", newline="") as f:
        probs = [float(r["prob"]) for r in csv.DictReader(f)]
    assert run.predictions["epoch030"] == pytest.approx(probs, rel=5e-6)


def test_a_partial_study_says_how_many_seeds_are_done_and_what_has_no_runs(tmp_path: Path):
    out = tmp_path / "results" / NEW
    collect(make_logs(tmp_path / "logs", seeds=2, lrs=(1e-5,)), out)
    text = write_page(out, ROOT / PILOT, figures=False).read_text()
    assert "BCE at lr 1e-05: 2 of 10 seeds done; the numbers below are provisional." in text
    assert "CE at lr 0.001: no runs yet (0 of 10 seeds)." in text
    assert "Paired seeds: 2 of 10 seeds done" in text
    assert "not resolved: 0 seed pair(s)" in text  # Q3 has no lr 1e-4 runs to pair with
    assert "The records hold 2 primary pairs (fewer than that)" in text
    # provenance from the records, never the writing machine
    assert "commit abc1234 (4 runs)" in text and "trainer: Some CPU, 2 cores" in text


@pytest.mark.slow
def test_the_page_rebuilds_byte_for_byte_from_its_committed_records_alone(tmp_path: Path):
    out = tmp_path / "a" / NEW
    collect(make_logs(tmp_path / "logs", seeds=3), out)
    shutil.rmtree(tmp_path / "logs")  # the records alone
    page = write_page(out, ROOT / PILOT, n_boot=20)
    first = page.read_bytes()
    figures = sorted(p.name for p in (out / "figures").iterdir())
    assert {"fig1_difference.png", "fig3_forest.png", "calibration.png"} <= set(figures)
    for link in re.findall(r"!\[[^]]*\]\(([^)]+)\)", first.decode()):
        assert (page.parent / link).is_file(), link
    copy = tmp_path / "b" / NEW
    shutil.copytree(out, copy)
    shutil.rmtree(copy / "figures")
    again = write_page(out, ROOT / PILOT, n_boot=20)
    elsewhere = write_page(copy, ROOT / PILOT, n_boot=20)
    assert again.read_bytes() == first and elsewhere.read_bytes() == first
    match, mismatch, errors = filecmp.cmpfiles(out / "figures", copy / "figures", figures,
                                               shallow=False)  # fmt: skip
    assert (mismatch, errors) == ([], []) and sorted(match) == figures


def test_the_design_on_the_page_is_the_experiment_that_runs():
    experiment = yaml.safe_load((ROOT / "conf/experiment/bce_vs_ce.yaml").read_text())
    swept = experiment["hydra"]["sweeper"]["params"]
    assert swept["seed"] == f"range(0,{measures.SEEDS})"
    assert swept["loss"] == ",".join(measures.LOSSES)
    assert tuple(experiment["budgets"]) == measures.BUDGETS
    assert experiment["epochs"] == measures.EPOCHS and experiment["batch_size"] == 32
    run = (ROOT / "studies/bce_vs_ce/run.sh").read_text()
    lrs = [float(x) for lr in re.findall(r" lr=([0-9e.,-]+)", run) for x in lr.split(",")]
    assert lrs[0] == measures.PRIMARY_LR and tuple(sorted(lrs)) == measures.LRS


def test_make_study_runs_the_study_then_collects_then_writes_the_page():
    done = subprocess.run(["make", "-n", "study", "DATA=/data", "STAMP=/dev/null"], cwd=ROOT,
                          capture_output=True, text=True, check=True)  # fmt: skip
    steps = [line for line in done.stdout.splitlines() if "studies" in line]
    assert 'studies/bce_vs_ce/run.sh "/data" logs/bce_vs_ce' in steps[0]
    assert "studies.bce_vs_ce.collect" in steps[1] and "studies.bce_vs_ce.page" in steps[2]


def in_short(page: Path) -> str:
    """The page's two-sentence summary (its "**In short.**" paragraph), on one line."""
    text = page.read_text().split("**In short.** ", 1)[1].split("\n\n", 1)[0]
    return " ".join(text.split())


def test_the_superseded_page_is_kept_with_its_summary_and_links_the_new_one():
    old = ROOT / "docs/results/2026-11-28-full-grid.md"
    lines = old.read_text().splitlines()
    assert "superseded" in lines[0].lower() and f"({NEW}.md)" in lines[0]
    assert in_short(old).startswith("At equal nominal learning rate, CE's test loss differs")
    assert (old.with_suffix("") / "summary.csv").is_file()


def test_the_committed_page_is_what_its_committed_records_rebuild(tmp_path: Path):
    records = ROOT / "docs/results" / NEW
    copy = tmp_path / NEW
    if records.exists():
        shutil.copytree(records, copy)
    else:  # no run collected yet: the page of an empty study
        copy.mkdir()
    rebuilt = write_page(copy, ROOT / PILOT, figures=False)
    assert rebuilt.read_bytes() == records.with_suffix(".md").read_bytes()
