"""The real command lines, each in a fresh interpreter: one smoke test per entry point (train,
eval, predict; the report's is tests/test_report.py:test_report_command_line), and the
in-process runs the rest of the suite uses (tests/in_process.py) against them: the same exit
status, the same output, the same numbers."""

from __future__ import annotations

import csv
import re
from pathlib import Path

import pytest

from tests.conftest import TINY, assert_ok, metrics, run_cli, run_dirs
from tests.fixtures import make_labeled_folder

pytestmark = pytest.mark.slow

TRAIN = [*TINY, "epochs=1"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, object]:
    """`python -m xray_loss.train debug=tiny epochs=1` in a fresh interpreter."""
    work = tmp_path_factory.mktemp("cli")
    return work, run_cli(*TRAIN, cwd=work, process=True)


def _best(work: Path) -> Path:
    (run,) = run_dirs(work / "logs" / "train")
    return next((run / "checkpoints").glob("best-*.ckpt"))


def test_python_m_train(trained):
    work, proc = trained
    assert_ok(proc)
    (run,) = run_dirs(work / "logs" / "train")
    assert metrics(run)["status"] == "completed"
    assert f"Run directory: {run}" in proc.stdout
    assert "test split: 96 images" in (run / "train.log").read_text()


def test_python_m_eval(trained):
    work, _ = trained
    proc = run_cli(f"ckpt_path={_best(work)}", module="xray_loss.eval", cwd=work, process=True)
    assert_ok(proc)
    # the results table and nothing about loggers eval does not have
    assert "test/auroc" in proc.stdout and not re.search(r"^\s*step\s", proc.stdout, re.M)
    assert "no logger configured" not in proc.stderr
    (out,) = run_dirs(work / "logs" / "eval")
    assert metrics(out)["status"] == "completed" and (out / "test_predictions.csv").exists()


def test_python_m_predict(trained, tmp_path):
    work, _ = trained
    scans = make_labeled_folder(tmp_path / "scans", n_normal=2, n_pneumonia=2)
    args = [f"ckpt_path={_best(work)}", f"inputs={scans}"]
    proc = run_cli(*args, module="xray_loss.predict", cwd=tmp_path, process=True)
    assert_ok(proc)
    (table,) = (tmp_path / "logs" / "predict").rglob("predictions.csv")
    with open(table) as f:
        assert [r["status"] for r in csv.DictReader(f)] == ["ok"] * 4


def _same(text: str, *dirs: Path) -> str:
    """Output with what differs between two runs of one command left out: working directories,
    times, durations, process ids."""
    for d in dirs:
        text = text.replace(str(d), "<work>")
    text = re.sub(r"\d{4}-\d\d-\d\d[ _]\d\d[:-]\d\d[:-]\d\d([,.-]\d+)?", "<time>", text)
    return re.sub(r"\b(pid \d+|\d+(\.\d+)?\s?s\b)", "<n>", text)


def test_in_process_runs_are_the_command_line(trained, tmp_path):
    """A run in this process prints and computes what `python -m xray_loss.train` does."""
    work, proc = trained
    here = run_cli(*TRAIN, cwd=tmp_path)
    assert here.returncode == proc.returncode == 0
    assert _same(here.stdout, tmp_path) == _same(proc.stdout, work)
    assert _same(here.stderr, tmp_path) == _same(proc.stderr, work)
    (a,), (b,) = run_dirs(tmp_path / "logs" / "train"), run_dirs(work / "logs" / "train")
    assert metrics(a)["test"] == metrics(b)["test"] and metrics(a)["val"] == metrics(b)["val"]
    assert _same((a / "train.log").read_text(), tmp_path) == _same(
        (b / "train.log").read_text(), work
    )


@pytest.mark.parametrize(
    "args",
    [
        [*TINY, "lr=-1"],  # a config error: one sentence, exit 1
        ["-m", *TINY, "loss=bce,ce", "name=../../escaped"],  # refused by SweepBookkeeping
        [*TINY, "loss=foo"],  # Hydra's own error
        ["--cfg", "job", *TINY, "loss=ce"],  # Hydra's flags
    ],
)
def test_in_process_errors_and_flags_are_the_command_line(tmp_path, args):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    here = run_cli(*args, cwd=tmp_path / "a")
    there = run_cli(*args, cwd=tmp_path / "b", process=True)
    assert here.returncode == there.returncode
    assert _same(here.stdout, tmp_path / "a") == _same(there.stdout, tmp_path / "b")
    assert _same(here.stderr, tmp_path / "a") == _same(there.stderr, tmp_path / "b")
