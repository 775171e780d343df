"""What a sweep tells its user: where it is (job k of N, elapsed, time left), its directory
named by what it varies, and at its end the configuration best on validation and the report
command; a config error every job would hit stops it at the first job."""

from __future__ import annotations

import csv
import re

import pytest

from tests.conftest import TINY, assert_ok, metrics, run_cli, sweep_dirs, sweep_summary
from tests.fixtures import make_kermany

pytestmark = pytest.mark.slow


def test_a_sweep_shows_its_progress_and_ends_naming_its_best_configuration_on_validation(
    workdir,
):
    proc = run_cli("-m", *TINY, "loss=bce,ce", "epochs=2", cwd=workdir)
    assert_ok(proc)
    (sweep,) = sweep_dirs(workdir)
    # named by what varies (and the command's hash), not by the time and a hash alone
    assert re.fullmatch(r"[\d_-]+_loss=bce,ce_[0-9a-f]{8}", sweep.name), sweep.name

    # job k of N, as each starts; the second also estimates the time left from the first
    first = re.search(r"Sweep job 1 of 2 \(loss=bce\): \d+m\d\ds elapsed", proc.stdout)
    second = re.search(
        r"Sweep job 2 of 2 \(loss=ce\): \d+m\d\ds elapsed, about \d+m\d\ds left", proc.stdout
    )
    assert first and second, proc.stdout[-3000:]
    assert first.start() < second.start()

    # the end names the configuration best on validation (never test) and the report command
    with open(sweep / "sweep_aggregate.csv") as f:
        aggregate = list(csv.DictReader(f))
    best = max(aggregate, key=lambda r: float(r["best_val_auroc_mean"]))
    value = float(best["best_val_auroc_mean"])
    line = next(x for x in proc.stdout.splitlines() if x.startswith("Best on validation"))
    assert "val AUROC" in line and f"{best['config']}" in line and f"{value:.4f}" in line
    other = next(r["config"] for r in aggregate if r is not best)
    assert other not in line.split(": ")[1]
    shown = sweep.relative_to(workdir)  # as the command named it: under ./logs
    assert f"python -m xray_loss.report {shown}\n" in proc.stdout
    assert f"make tensorboard SWEEP={shown}\n" in proc.stdout

    # each job's console log keeps what the console showed of it: progress and summary
    for job, k in (("loss=bce", 1), ("loss=ce", 2)):
        log = (sweep / job / "train.log").read_text()
        record = metrics(sweep / job)
        assert f"Sweep job {k} of 2 ({job})" in log
        assert f"Run finished: best epoch {record['best_epoch']}, " in log
        assert f"Run directory: {sweep / job}" in log


def test_a_config_error_every_job_shares_stops_the_sweep_at_its_first_job(workdir):
    # no test/ folder and no data.test_fraction: every job would fail on it
    root = make_kermany(workdir / "chest_xray", test=False)
    overrides = ["data=kermany", f"data.root={root}", "data.image_size=32", "data.num_workers=0"]
    proc = run_cli("-m", *overrides, "loss=bce,ce", "seed=0,1", cwd=workdir)
    assert proc.returncode == 1
    assert "has no test/ folder" in proc.stderr and "data.test_fraction=0.15" in proc.stderr
    assert "The sweep stops at its first failed job, loss=bce,seed=0" in proc.stderr
    assert "Traceback" not in proc.stderr
    (sweep,) = sweep_dirs(workdir)
    assert [(r["job"], r["status"]) for r in sweep_summary(sweep)] == [
        ("loss=bce,seed=0", "failed")
    ]

    # a held invalid value, refused by the checks: the same
    proc = run_cli("-m", *TINY, "loss=bce,ce", "lr=-1", "name=held", cwd=workdir)
    assert proc.returncode == 1 and "Invalid value lr=-1" in proc.stderr
    assert "every job sets lr alike" in proc.stderr
    (sweep,) = (s for s in sweep_dirs(workdir) if s.parts[-3] == "held")
    assert len(sweep_summary(sweep)) == 1


def test_an_error_in_a_setting_the_sweep_varies_fails_that_job_only(workdir):
    proc = run_cli("-m", *TINY, "lr=-1,-2", cwd=workdir)
    assert proc.returncode == 1 and "2 job(s) failed" in proc.stderr
    assert "The sweep stops" not in proc.stderr
    (sweep,) = sweep_dirs(workdir)
    assert {r["status"] for r in sweep_summary(sweep)} == {"failed"}
    assert len(sweep_summary(sweep)) == 2
