"""The README's "Extending" section, run as it is written: a head, a data source, a metric and
a named sweep axis, each copied out of README.md and trained through the command line."""

from __future__ import annotations

import csv
import re
from pathlib import Path

import pytest
import torch
from PIL import Image
from tensorboard.plugins.custom_scalar import layout_pb2

from tests.conftest import (
    ROOT,
    TINY,
    assert_ok,
    events,
    hparams_data,
    metrics,
    run_cli,
    run_dirs,
    sweep_summary,
)
from xray_loss.data.phantom import generate_phantoms

pytestmark = pytest.mark.slow


def readme_blocks() -> dict[str, str]:
    """The Extending section's code blocks, by the file their first line names."""
    text = (ROOT / "README.md").read_text()
    section = text.split("\n## Extending\n", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```(?:python|yaml)\n# (.+?)\n(.*?)```", section, re.S)
    assert len(blocks) == 6, [name for name, _ in blocks]
    return {name.split(" (with")[0]: body for name, body in blocks}


def write_extension(tmp_path: Path) -> Path:
    """The example files (my_heads.py, my_data.py, my_conf/...) in ``tmp_path``."""
    for name, body in readme_blocks().items():
        if name.startswith(("my_", "my_conf/")):
            path = tmp_path / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(body)
    return tmp_path


def run_extension(work: Path, *args: str):
    env = {"PYTHONPATH": str(work)}
    return run_cli(*args, f"hydra.searchpath=[file://{work / 'my_conf'}]", cwd=work, env=env)


def entry(name: str, namespace: dict):
    """The value of the README's one-line dict entry for ``name`` (SCORES, SCHEMA)."""
    (block,) = [b for n, b in readme_blocks().items() if n.startswith(f"an entry of {name}")]
    key, value = eval("{" + block + "}", namespace).popitem()  # noqa: S307 - our own README
    return key, value


def test_the_head_example_trains_with_two_logits(tmp_path):
    work = write_extension(tmp_path)
    assert_ok(run_extension(work, *TINY, "epochs=1", "loss=two_sigmoid"))
    (run,) = run_dirs(work / "logs")
    record = metrics(run)
    assert record["status"] == "completed" and record["config"]["loss"] == "two_sigmoid"
    state = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    assert state["head.linear.weight"].shape[0] == 2
    assert 0.0 <= record["test"]["test/auroc"] <= 1.0


def test_the_data_source_example_trains_on_its_csv(tmp_path):
    work = write_extension(tmp_path)
    images, labels = generate_phantoms(72, 40, seed=3)
    folder = work / "images"
    folder.mkdir()
    rows = []
    for i, (image, label) in enumerate(zip(images[:, 0].numpy(), labels.tolist(), strict=True)):
        Image.fromarray(image).save(folder / f"{i}.png")
        split = ("train", "train", "train", "train", "val", "test")[i % 6]
        rows.append({"file": f"images/{i}.png", "label": label, "split": split, "patient": i // 2})
    with open(work / "images.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    done = run_extension(
        work,
        "data=csv",
        f"data.listing={work / 'images.csv'}",
        "data.image_size=32",
        "model.backbone.widths=[8,16]",
        "epochs=1",
        "batch_size=16",
    )
    assert_ok(done)
    (run,) = run_dirs(work / "logs")
    record = metrics(run)
    assert record["status"] == "completed" and record["config"]["image_size"] == 32
    with open(run / "test_predictions.csv") as f:
        predicted = list(csv.DictReader(f))
    assert len(predicted) == 12  # every test row of the CSV, by its file name
    assert {p["file"] for p in predicted} == {r["file"] for r in rows if r["split"] == "test"}


def test_the_metric_example_reaches_tensorboard_the_records_and_summary(tmp_path, monkeypatch):
    from torchmetrics.functional.classification import binary_precision

    from xray_loss import metrics as metrics_module
    from xray_loss.report.__main__ import main as report

    name, score = entry("SCORES", {**vars(metrics_module), "binary_precision": binary_precision})
    monkeypatch.setitem(metrics_module.SCORES, name, score)
    assert_ok(run_cli("-m", *TINY, "loss=bce,ce", "epochs=2", cwd=tmp_path))
    (sweep,) = (tmp_path / "logs" / "train" / "multirun").iterdir()
    runs = run_dirs(sweep)
    for run in runs:
        record = metrics(run)
        assert {"test/precision", "test/precision@0.5"} <= set(record["test"])
        assert "val/precision" in record["val"]
        ea = events(run)
        assert {"val/precision", "test/precision"} <= set(ea.Tags()["scalars"])
        (config,) = ea.Tensors("custom_scalars__config__")
        layout = layout_pb2.Layout.FromString(config.tensor_proto.string_val[0])
        titles = {chart.title for category in layout.category for chart in category.chart}
        assert "val precision" in titles
    experiment = [r for r in runs if any(r.glob("*tfevents*.experiment"))]
    (host,) = experiment
    ea = events(next(host.glob("*tfevents*.experiment")))
    columns = {m.name.tag for m in hparams_data(ea, "_hparams_/experiment").experiment.metric_infos}
    assert "test/precision" in columns
    summary = list(sweep_summary(sweep)[0])  # the columns
    assert "test_precision" in summary
    report([str(sweep), "--out", str(tmp_path / "report")])
    table = (tmp_path / "report" / "summary.md").read_text()
    header = next(line for line in table.splitlines() if line.startswith("| loss |"))
    assert "| precision (PPV) |" in header


def test_the_axis_example_names_a_column_everywhere(tmp_path, monkeypatch):
    from xray_loss import identity
    from xray_loss.report.__main__ import main as report

    name, key = entry("SCHEMA", vars(identity))
    monkeypatch.setitem(identity.SCHEMA, name, key)
    assert_ok(run_cli("-m", *TINY, "model.backbone.dropout=0,0.3", "epochs=1", cwd=tmp_path))
    (sweep,) = (tmp_path / "logs" / "train" / "multirun").iterdir()
    runs = run_dirs(sweep)
    assert sorted(metrics(r)["config"]["dropout"] for r in runs) == [0.0, 0.3]
    for run in runs:
        start = hparams_data(run, "_hparams_/session_start_info").session_start_info
        assert start.hparams["dropout"].number_value == metrics(run)["config"]["dropout"]
    report([str(sweep), "--out", str(tmp_path / "report")])
    table = (tmp_path / "report" / "summary.md").read_text()
    header = next(line for line in table.splitlines() if line.startswith("| "))
    assert header.startswith("| dropout | n |"), header  # the named axis, not its config path
    assert "model.backbone.dropout" not in header
    cells = [line.replace("*", "").split(" | ")[0] for line in table.splitlines()]
    rows = [c for c in cells if c in ("| 0", "| 0.3")]
    assert len(rows) == 2  # one row per dropout value
