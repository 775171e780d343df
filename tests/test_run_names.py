"""What TensorBoard lists and shows of a sweep, read back from its event files: runs named by the
swept values alone (no "." run for the sweep directory), the HParams experiment's columns and
numeric domains, and the URL `make tensorboard` prints (every run selected, unsmoothed)."""

from __future__ import annotations

import base64
import json
import re
import subprocess
import sys
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

import pytest
import yaml
from tensorboard.backend.event_processing.plugin_event_multiplexer import EventMultiplexer
from tensorboard.plugins.hparams import api_pb2
from torch.utils.tensorboard.writer import FileWriter

from tests.conftest import assert_ok, hparams_data, run_cli
from xray_loss.config import job_dirname
from xray_loss.dashboard import EXPERIMENT_SUFFIX, sweep_axes, write_experiment, write_session
from xray_loss.runtime.rundirs import tensorboard_runs, tensorboard_url
from xray_loss.runtime.sweep import held_keys

FLOAT = api_pb2.DataType.DATA_TYPE_FLOAT64
STRING = api_pb2.DataType.DATA_TYPE_STRING


def tensorboard_run_names(logdir: Path) -> set[str]:
    """The runs TensorBoard's own loader finds under ``logdir``."""
    multiplexer = EventMultiplexer()
    multiplexer.AddRunsFromDirectory(str(logdir))
    return set(multiplexer.Runs())


def domain(info: api_pb2.HParamInfo) -> list:
    return [
        v.number_value if info.type == FLOAT else v.string_value
        for v in info.domain_discrete.values
    ]


# --- names -----------------------------------------------------------------------------------
KERMANY = [  # the small real sweep of issue 22: constant overrides around three swept axes
    "data=kermany",
    "data.root=../shared/data/kermany224",
    "loss=bce,ce",
    "lr=1e-4,1e-3",
    "seed=0,1",
    "epochs=8",
    "batch_size=32",
    "data.image_size=64",
    "data.test_fraction=0.15",
]


def test_a_job_is_named_by_the_axes_its_sweep_varies():
    axes = sweep_axes({}, KERMANY)
    held = held_keys({}, KERMANY, axes)
    assert held == [
        "batch_size",
        "data",
        "data.image_size",
        "data.root",
        "data.test_fraction",
        "epochs",
    ]
    job = [o if "," not in o else o.split(",")[0] for o in KERMANY]  # one job's overrides
    job = [o.replace("lr=1e-4", "lr=0.0001") for o in job]  # as Hydra writes the value
    assert job_dirname(job, held, "job0") == "loss=bce,lr=0.0001,seed=0"
    # the experiment's axes and the sweeper's params: seed held at one value is held
    params = {"loss": "bce,ce", "lr": "1e-5,1e-4,1e-3", "epochs": "10,30,100", "seed": "range(0,1)"}
    axes = sweep_axes(params, ["experiment=full_grid", "debug=sweep"])
    assert axes["lr"] == [1e-05, 0.0001, 0.001] and axes["epochs"] == [10, 30, 100]
    assert held_keys(params, ["experiment=full_grid", "debug=sweep"], axes) == [
        "debug",
        "experiment",
        "seed",
    ]
    # a continuous search varies; a sweep of one job keeps every override in its name
    optuna = {"lr": "tag(log, interval(1e-5, 1e-2))", "batch_size": "choice(32, 64)"}
    assert held_keys(optuna, ["loss=ce"], sweep_axes(optuna, ["loss=ce"])) == ["loss"]
    assert held_keys({}, ["epochs=1", "loss=ce"], sweep_axes({}, ["epochs=1", "loss=ce"])) == []
    assert job_dirname(["epochs=1", "loss=ce"], [], "job0") == "epochs=1,loss=ce"
    assert job_dirname(["+extra=1", "loss=ce"], ["extra"], "job0") == "loss=ce"
    assert job_dirname(["epochs=1"], ["epochs"], "job3") == "job3"


@pytest.mark.slow
def test_a_sweep_lists_its_jobs_by_their_swept_values_and_prints_its_command(workdir):
    proc = run_cli(
        "-m", "debug=tiny", "loss=bce,ce", "epochs=1", "batch_size=32", "data.n_train=128",
        cwd=workdir,
    )  # fmt: skip
    assert_ok(proc)
    (sweep,) = [p for p in (workdir / "logs" / "train" / "multirun").iterdir() if p.is_dir()]
    assert sorted(p.name for p in sweep.iterdir() if p.is_dir()) == ["loss=bce", "loss=ce"]
    assert tensorboard_run_names(sweep) == {"loss=bce", "loss=ce"}  # and no "."
    assert tensorboard_runs(sweep) == ["loss=bce", "loss=ce"]
    # the command that shows the sweep is its last line; each job names its own
    lines = proc.stdout.strip().splitlines()
    assert lines[-1] == f"TensorBoard: make tensorboard SWEEP={sweep.relative_to(workdir)}"
    for job in ("loss=bce", "loss=ce"):
        assert re.search(rf"make tensorboard SWEEP=\S*{re.escape(job)}$", proc.stdout, re.M)
        hydra = yaml.safe_load((sweep / job / ".hydra" / "hydra.yaml").read_text())["hydra"]
        assert hydra["job"]["override_dirname"] == job  # MLflow's and W&B's run names too
    # one HParams experiment, in a run TensorBoard lists: the one axis, nothing held
    (found,) = sweep.glob(f"*/*tfevents*{EXPERIMENT_SUFFIX}")
    experiment = hparams_data(found.parent, "_hparams_/experiment").experiment
    assert [(h.name, domain(h), h.differs) for h in experiment.hparam_infos] == [
        ("loss", ["bce", "ce"], True)
    ]


# --- the HParams experiment of a sweep, from its runs' records --------------------------------
def _record(loss: str, lr: float, epochs: int, trained: int, seed: int = 0, **extra) -> dict:
    config = {"loss": loss, "lr": lr, "epochs": epochs, "max_epochs": trained, "batch_size": 32}
    config.update(seed=seed, threshold="0.5", model="small_cnn")
    return {
        "status": "completed",
        "stopped_by": "max_epochs",
        "epochs_trained": trained,
        "config": config,
        "configuration": {
            "data.image_size": 32,
            "threshold": {"rule": 0.5},
            "trainer.precision": None,
        },
        **extra,
    }


def _sweep(root: Path, records: dict[str, dict]) -> Path:
    for name, record in records.items():
        (root / name).mkdir(parents=True)
        (root / name / "metrics.json").write_text(json.dumps(record))
    return root


DRY = {"epochs": [10, 30, 100], "loss": ["bce", "ce"], "lr": [1e-05, 0.0001, 0.001]}


def test_a_dry_run_shows_nominal_and_trained_epochs_as_ordered_numbers(tmp_path):
    scale = {10: 1, 30: 2, 100: 5}  # debug=sweep: epochs_scale 0.05
    records = {
        f"epochs={e},loss={lo},lr={lr:g}": _record(lo, lr, e, scale[e])
        for e in DRY["epochs"]
        for lo in DRY["loss"]
        for lr in DRY["lr"]
    }
    sweep = _sweep(tmp_path / "sweep", records)
    first = write_experiment(sweep, DRY)
    again = write_experiment(sweep, DRY)  # a resumed sweep writes it again: it replaces the first
    assert first == again == sweep / sorted(records)[0]
    assert len(list(sweep.glob(f"**/*tfevents*{EXPERIMENT_SUFFIX}"))) == 1
    assert tensorboard_run_names(sweep) == set(records)  # each job's ranked row; no "." run
    infos = {h.name: h for h in hparams_data(first, "_hparams_/experiment").experiment.hparam_infos}
    # what varies, numbers as numbers in numeric order; status and stopped_by are one value
    assert list(infos) == ["epochs", "loss", "lr", "epochs_trained"]
    assert all(h.differs for h in infos.values())
    assert (infos["lr"].type, domain(infos["lr"])) == (FLOAT, [1e-05, 0.0001, 0.001])
    assert (infos["epochs"].type, domain(infos["epochs"])) == (FLOAT, [10, 30, 100])
    assert (infos["epochs_trained"].type, domain(infos["epochs_trained"])) == (FLOAT, [1, 2, 5])
    assert (infos["loss"].type, domain(infos["loss"])) == (STRING, ["bce", "ce"])


def test_a_full_length_sweep_has_no_epochs_trained_column_and_marks_what_ended_otherwise(tmp_path):
    records = {f"lr={lr:g}": _record("bce", lr, 10, 10) for lr in DRY["lr"]}
    records["lr=0.001"].update(status="diverged", stopped_by="diverged", epochs_trained=None)
    sweep = _sweep(tmp_path / "sweep", records)
    host = write_experiment(sweep, {"lr": DRY["lr"], "epochs": [10]})
    infos = hparams_data(host, "_hparams_/experiment").experiment.hparam_infos
    assert [h.name for h in infos] == ["lr", "status", "stopped_by"]
    assert domain(infos[1]) == ["completed", "diverged"]


def test_a_run_holds_numbers_as_numbers_and_text_as_text(tmp_path):
    record = _record("ce", 1e-4, 30, 2, seed=2)
    write_session(tmp_path, record, step=2)
    hparams = hparams_data(tmp_path, "_hparams_/session_start_info").session_start_info.hparams
    assert hparams["lr"].number_value == 1e-4 and hparams["batch_size"].number_value == 32
    assert hparams["seed"].string_value == "2"  # a label: the table prints numbers as 2.0000
    assert hparams["epochs_trained"].number_value == 2
    assert hparams["loss"].string_value == "ce" and hparams["status"].string_value == "completed"
    assert hparams["threshold"].string_value == "0.5"  # a rule, text even when it is a number
    assert "trainer.precision" not in hparams  # no value, an empty cell
    # a single run's experiment lists every named axis (nothing differs)
    (tmp_path / "metrics.json").write_text(json.dumps(record))
    assert write_experiment(tmp_path, {}) == tmp_path
    infos = {
        h.name: h for h in hparams_data(tmp_path, "_hparams_/experiment").experiment.hparam_infos
    }
    assert {"loss", "lr", "epochs", "batch_size", "seed", "status"} <= set(infos)
    assert not any(h.differs for h in infos.values()) and infos["lr"].type == FLOAT


# --- the URL `make tensorboard` prints ---------------------------------------------------------
def _runs(root: Path, names: list[str]) -> Path:
    for name in names:
        FileWriter(str(root / name)).close()  # an events file: a run
    return root


@pytest.mark.parametrize("n", [3, 54])
def test_the_url_opens_every_tab_unsmoothed_with_every_run_selected(tmp_path, n):
    names = [f"loss={lo},seed={s}" for lo in ("bce", "ce") for s in range(n // 2)]
    logdir = _runs(tmp_path / "sweep", names)
    url = urlsplit(tensorboard_url(logdir, 6007))
    assert (url.hostname, url.port) == ("127.0.0.1", 6007)
    query = parse_qs(url.query)  # Time Series: unsmoothed, on the curves and images
    assert query["smoothing"] == ["0"]
    shown = re.compile(query["tagFilter"][0])  # JavaScript's regex reads this one alike
    assert all(map(shown.search, ["train/nll", "val/auroc", "val/nll", "viz/roc_curve"]))
    # one point per run: in the HParams table, no Time Series card of a single dot
    assert not any(map(shown.search, ["test/auroc", "val/auroc_best", "epoch"]))
    fragment = dict(part.split("=", 1) for part in url.fragment.split("&")[1:])
    assert url.fragment.startswith("timeseries&") and fragment["_smoothingWeight"] == "0"
    # Scalars, Custom Scalars and Images select every run by themselves up to 40 runs only
    if n <= 40:
        assert "runSelectionState" not in fragment
    else:
        state = json.loads(base64.b64decode(unquote(fragment["runSelectionState"])))
        assert set(state) == tensorboard_run_names(logdir) and all(state.values())


@pytest.mark.parametrize(
    "names",
    [
        ["loss=bce,lr=0.0001,seed=0", "loss=bce,lr=0.001,seed=1", "loss=ce,lr=0.0001,seed=0"],
        ["old/loss=bce_matched,seed=0", "new/loss=focal,seed=0", "new/loss=focal,seed=1"],
        ["lr=0.0001", "lr=0.001"],  # one head (the sweep does not name it)
        ["loss=ce,lr=0.0001", "loss=ce,lr=0.001"],
    ],
)
def test_the_url_colours_runs_by_their_head_where_the_runs_differ_in_it(tmp_path, names):
    url = urlsplit(tensorboard_url(_runs(tmp_path / "sweep", names), 6006))
    group = parse_qs(url.query).get("runColorGroup")  # TensorBoard: colour by regex group
    head = {n: (m[1] if (m := re.search(r"loss=(\w+)", n)) else None) for n in names}
    if len(set(head.values())) < 2:
        assert group is None  # one colour per run
        return
    assert group and group[0].startswith("regex:")
    # a run's colour is its regex group: the same colour for the same head, and only then
    assert {n: re.search(group[0].removeprefix("regex:"), n)[1] for n in names} == head


@pytest.mark.parametrize("where", ["missing", "empty"])
def test_make_tensorboard_refuses_a_sweep_with_no_runs(tmp_path, where):
    sweep = tmp_path / "sweep"
    if where == "empty":
        sweep.mkdir()
    proc = subprocess.run(
        [sys.executable, "-m", "xray_loss.runtime.rundirs", "URL", str(sweep), "6006"],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    said = "does not exist" if where == "missing" else "holds no TensorBoard runs"
    assert f"SWEEP={sweep} {said}" in proc.stderr
