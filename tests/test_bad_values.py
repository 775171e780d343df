"""Values that would give a wrong result with exit status 0 are refused where they are read,
in one sentence naming the key or the file: loss weights that train the model against a class,
and test predictions the report cannot trust."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest

from tests.conftest import assert_ok, metrics, run_cli, run_dirs
from tests.test_config import _compose
from tests.test_report_pooling import budget, training_record, write
from xray_loss.checks import check_config
from xray_loss.config import ConfigError
from xray_loss.report.records import PredictionsError
from xray_loss.report.runs import load_runs


@pytest.mark.parametrize(
    ("overrides", "key", "allowed"),
    [
        (["loss.pos_weight=-1"], "loss.pos_weight", "> 0"),  # a negative loss: trains away
        (["loss.pos_weight=0"], "loss.pos_weight", "> 0"),  # pneumonia weighs nothing
        (["loss.pos_weight=many"], "loss.pos_weight", "> 0"),
        (["loss.pos_weight=.nan"], "loss.pos_weight", "> 0"),
        (["loss=ce", "loss.class_weights=[-1,1]"], "loss.class_weights", "two numbers > 0"),
        (["loss=ce", "loss.class_weights=[1,0]"], "loss.class_weights", "two numbers > 0"),
        (["loss=ce", "loss.class_weights=[1,2,3]"], "loss.class_weights", "two numbers > 0"),
        (["loss=ce", "loss.class_weights=2"], "loss.class_weights", "two numbers > 0"),
        (["loss=ce", "loss.label_smoothing=1"], "loss.label_smoothing", "[0, 1)"),
        (["loss=ce", "loss.label_smoothing=-0.1"], "loss.label_smoothing", "[0, 1)"),
        (["loss=focal", "loss.gamma=-1"], "loss.gamma", ">= 0"),
        (["loss=focal", "loss.alpha=1.5"], "loss.alpha", "between 0 and 1"),
        (["loss=focal", "loss.alpha=0"], "loss.alpha", "between 0 and 1"),
        (["loss=focal", "loss.alpha=-0.25"], "loss.alpha", "between 0 and 1"),
    ],
)
def test_loss_weights_outside_their_range_are_refused_at_config_time(overrides, key, allowed):
    with pytest.raises(ConfigError) as err:
        check_config(_compose(*overrides))
    message = str(err.value)
    assert message.startswith(f"Invalid value {key}=") and allowed in message
    assert "\n" not in message


@pytest.mark.parametrize(
    "overrides",
    [
        ["loss.pos_weight=2.5"],
        ["loss.pos_weight=auto"],
        ["loss.pos_weight=null"],
        ["loss=ce", "loss.class_weights=[1,3]"],
        ["loss=ce", "loss.class_weights=auto"],
        ["loss=ce", "loss.label_smoothing=0.1"],
        ["loss=focal", "loss.gamma=0", "loss.alpha=0.25"],
        ["loss=focal", "loss.alpha=auto"],
    ],
)
def test_loss_weights_in_their_range_pass(overrides):
    check_config(_compose(*overrides))


@pytest.mark.slow
def test_a_negative_pos_weight_is_refused_before_training(workdir):
    proc = run_cli("debug=tiny", "epochs=1", "loss.pos_weight=-1", cwd=workdir)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert "Invalid value loss.pos_weight=-1" in proc.stderr
    assert not list(workdir.glob("logs/train/runs/*/checkpoints/*.ckpt"))
    assert_ok(run_cli("debug=tiny", "epochs=1", "loss.pos_weight=2", cwd=workdir))
    # the run records how many images it tested: the report checks its predictions against it
    (run,) = [r for r in run_dirs(workdir / "logs") if (r / "test_predictions.csv").exists()]
    assert metrics(run)["test_images"] == 96  # debug=tiny's data.n_test
    (read,) = load_runs([run])[0]
    assert len(read.labels) == 96


# --- test_predictions.csv as the report reads it ---------------------------------------------
N_TESTED = 40


def predictions_text(n: int = N_TESTED) -> list[list[str]]:
    """The rows of test_predictions.csv as the test report writes them (header first):
    index, label, prob, file, patient; two images per patient."""
    rows = [["index", "label", "prob", "file", "patient"]]
    for i in range(n):
        label = i % 2
        prob = 0.5 + (0.3 if label else -0.3) + 0.01 * (i % 7)
        rows.append([str(i), str(label), f"{prob:.8f}", f"img{i}.jpeg", f"p{i // 2}"])
    return rows


def write_run(tmp_path: Path, rows: list[list[str]], cut: int = 0, **fields) -> Path:
    """A completed run recording ``N_TESTED`` test images, with ``rows`` as its predictions
    (written by the csv module as xray_loss.callbacks does; ``cut`` bytes cut off the end)."""
    run = write(tmp_path / "logs" / "seed=0", training_record(0, **fields))
    buffer = io.StringIO()
    csv.writer(buffer).writerows(rows)
    text = buffer.getvalue()
    (run / "test_predictions.csv").write_text(text[: len(text) - cut], newline="")
    return run


def _set(row: int, column: str, value: str):
    def damage(rows: list[list[str]]) -> list[list[str]]:
        rows[row + 1][rows[0].index(column)] = value
        return rows

    return damage


@pytest.mark.parametrize(
    ("damage", "cut", "said"),
    [
        (_set(5, "label", "2"), 0, "line 7: label '2' is not 0 (normal) or 1 (pneumonia)"),
        (_set(0, "label", "-1"), 0, "line 2: label '-1' is not 0"),
        (_set(3, "prob", "nan"), 0, "line 5: prob 'nan' is not a number in [0, 1]"),
        (_set(3, "prob", "1.5"), 0, "line 5: prob '1.5' is not a number in [0, 1]"),
        (_set(39, "prob", ""), 0, "line 41: prob '' is not a number in [0, 1]"),
        (lambda rows: [["index", "label", "p", "file", "patient"], *rows[1:]], 0, "no prob column"),
        (lambda rows: [[r[0], r[2], r[3]] for r in rows], 0, "no label column"),
        (lambda rows: rows, 7, "ends inside line 41: the file is cut short"),  # mid-row
        (
            lambda rows: rows[:6],
            0,
            "holds 5 prediction(s), but metrics.json says the run tested 40",
        ),
    ],
)
def test_damaged_test_predictions_are_refused_naming_the_file_and_line(tmp_path, damage, cut, said):
    run = write_run(tmp_path, damage(predictions_text()), cut, test_images=N_TESTED)
    with pytest.raises(PredictionsError) as err:
        load_runs([tmp_path / "logs"])
    message = str(err.value)
    assert message.startswith(str(run / "test_predictions.csv")) and said in message
    assert "delete it" in message and "\n" not in message


def test_intact_test_predictions_are_read_and_older_records_skip_the_count(tmp_path):
    write_run(tmp_path, predictions_text(), test_images=N_TESTED)
    (run,) = load_runs([tmp_path / "logs"])[0]
    assert len(run.labels) == N_TESTED and set(run.labels) == {0, 1}
    assert run.probs.min() > 0 and len(set(run.patients)) == N_TESTED // 2
    # a record of an older xray_loss does not say how many it tested: the rows are still checked
    older = write_run(tmp_path, predictions_text(30))
    assert "test_images" not in json.loads((older / "metrics.json").read_text())
    (run,) = load_runs([tmp_path / "logs"])[0]
    assert len(run.labels) == 30


def test_a_budget_s_predictions_are_checked_too(tmp_path):
    run = write_run(
        tmp_path, predictions_text(), test_images=N_TESTED, budgets={"10": budget(10, 0.7)}
    )
    rows = _set(2, "label", "2")(predictions_text())
    buffer = io.StringIO()
    csv.writer(buffer).writerows(rows)
    (run / "test_predictions_epoch010.csv").write_text(buffer.getvalue(), newline="")
    with pytest.raises(PredictionsError) as err:
        load_runs([tmp_path / "logs"])
    assert str(err.value).startswith(f"{run / 'test_predictions_epoch010.csv'}, line 4:")


def test_the_report_command_refuses_in_one_sentence(tmp_path):
    write_run(tmp_path, _set(5, "label", "2")(predictions_text()), test_images=N_TESTED)
    proc = run_cli(str(tmp_path / "logs"), module="xray_loss.report", cwd=tmp_path)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    (said,) = [line for line in proc.stderr.splitlines() if "test_predictions.csv" in line]
    assert said.startswith("python -m xray_loss.report: ") and ", line 7: label '2'" in said
    assert not (tmp_path / "logs" / "report" / "summary.md").exists()
