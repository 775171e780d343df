"""Operating points: rules, sources, bootstrap intervals, and their round trip through the
checkpoint, metrics.json, eval, recalibrate and predict."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest
import torch

from tests.conftest import assert_ok, metrics, run_cli, run_dirs
from tests.fixtures import make_kermany, make_labeled_folder
from xray_loss.metrics import binary_metrics
from xray_loss.threshold import RuleError, choose, operating_point, parse_rule, sidecar_path


def _sample(n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    labels = (torch.arange(n) % 2).long()
    probs = torch.sigmoid(torch.randn(n, generator=g) + 1.5 * (2 * labels - 1))
    return probs, labels


def test_rules_parse_and_refuse_clearly():
    assert parse_rule("youden") == ("youden", None)
    assert parse_rule("sens@0.95") == ("sens", 0.95)
    assert parse_rule("spec@0.9") == ("spec", 0.9)
    assert parse_rule(0.3) == ("fixed", 0.3)
    for bad in ("sens@95", "spec@", "1.5", "median"):
        with pytest.raises(RuleError, match="sens@0.95"):
            parse_rule(bad)


@pytest.mark.parametrize("target", [0.8, 0.95, 1.0])
def test_target_rules_reach_their_target_with_the_most_specific_threshold(target):
    probs, labels = _sample(400)
    t = choose(probs, labels, f"sens@{target}")
    assert float(binary_metrics(probs, labels, t)["sensitivity"]) >= target - 1e-6  # float32
    higher = probs[probs > t].min()  # the next observed score: it would miss the target
    assert float(binary_metrics(probs, labels, float(higher))["sensitivity"]) < target
    t = choose(probs, labels, f"spec@{target}")
    assert float(binary_metrics(probs, labels, t)["specificity"]) >= target - 1e-6
    lower = probs[probs < t]
    if len(lower):  # the next lower score would break the specificity
        assert float(binary_metrics(probs, labels, float(lower.max()))["specificity"]) < target


@pytest.mark.parametrize("rule", ["youden", "sens@0.9"])
def test_the_bootstrap_interval_narrows_as_the_sample_grows(rule):
    """Mean widths over 4 samples of each size (one bootstrap interval is itself noisy)."""
    widths = []
    for n in (16, 160, 1600):
        threshold_width = specificity_width = 0.0
        for seed in range(4):
            probs, labels = _sample(n, seed=100 * n + seed)
            point = operating_point(probs, labels, rule, "test", n_boot=200)
            low, high = point["threshold_ci"]
            assert low <= point["value"] <= high
            assert ("warning" in point) == (n < 40)  # fewer than 20 of a class: a guess
            threshold_width += high - low
            specificity_width += point["specificity"][2] - point["specificity"][1]
        widths.append((threshold_width / 4, specificity_width / 4))
    assert widths[0][0] > widths[1][0] > widths[2][0]
    assert widths[1][1] > widths[2][1]


def test_one_class_samples_are_refused():
    with pytest.raises(RuleError, match="both classes"):
        operating_point(torch.rand(10), torch.ones(10, dtype=torch.long), "youden", "x")
    fixed = operating_point(torch.rand(10), torch.ones(10, dtype=torch.long), 0.5, "x")
    assert fixed["value"] == 0.5  # a fixed threshold needs no labels to exist


def _probs(path: Path, key: str) -> dict[str, float]:
    with open(path) as f:
        return {r["file"]: float(r[key]) for r in csv.DictReader(f) if r.get(key)}


@pytest.mark.slow
def test_source_and_rule_round_trip_through_checkpoint_metrics_eval_and_predict(workdir):
    root = make_kermany(workdir / "chest_xray", test=False)
    make_labeled_folder(root / "val", n_normal=8, n_pneumonia=8)
    site = make_labeled_folder(workdir / "site", n_normal=12, n_pneumonia=12, seed=9)
    assert_ok(
        run_cli(
            "data=kermany",
            f"data.root={root}",
            "data.test_fraction=0.25",
            "data.image_size=32",
            "data.num_workers=0",
            "model.backbone.widths=[8,16]",
            "batch_size=16",
            "epochs=3",
            "lr=3e-3",
            "threshold.rule=youden",
            "threshold.source=folder",
            "callbacks.progress_bar.refresh_rate=0",
            cwd=workdir,
        )
    )
    (run,) = run_dirs(workdir / "logs")
    record = metrics(run)
    point = record["operating_point"]
    assert (point["rule"], point["source"], point["n"]) == ("youden", "folder", 16)
    assert point["value"] == pytest.approx(record["threshold"]) and "threshold_ci" in point
    assert {"test/acc", "test/acc@0.5", "test/auroc"} <= set(record["test"])
    with open(run / "split.csv") as f:
        assert "calibration" in {r["split"] for r in csv.DictReader(f)}
    best = next((run / "checkpoints").glob("best-*.ckpt"))
    stored = torch.load(best, weights_only=True)
    assert stored["operating_point"]["source"] == "folder"
    assert stored["operating_point"]["value"] == pytest.approx(record["threshold"])

    def evaluate(*args: str) -> dict:
        out = workdir / f"eval{len(list(workdir.glob('eval*')))}"
        out.mkdir()
        assert_ok(run_cli(f"ckpt_path={best}", *args, module="xray_loss.eval", cwd=out))
        return metrics(run_dirs(out / "logs")[0])

    def predict(tag: str) -> Path:
        out = workdir / f"predict_{tag}"
        out.mkdir()
        assert_ok(
            run_cli(f"ckpt_path={best}", f"inputs={site}", module="xray_loss.predict", cwd=out)
        )
        return next((out / "logs").rglob("predictions.csv"))

    before = evaluate()
    assert before["threshold"] == pytest.approx(record["threshold"])
    assert before["test"]["test/auroc"] == pytest.approx(record["test"]["test/auroc"], abs=1e-6)
    predicted_before = predict("before")

    recal = evaluate(f"recalibrate={site}", "threshold=sens@0.9")
    new = recal["operating_point"]
    assert (new["rule"], new["n"], new["source"]) == ("sens@0.9", 24, str(site))
    assert recal["sample"]["after"]["sensitivity"] >= 0.9 - 1e-6
    assert recal["sample"]["after"]["auroc"] == recal["sample"]["before"]["auroc"]
    assert json.loads(sidecar_path(best).read_text())["value"] == new["value"]

    after = evaluate()  # eval now uses the recalibrated threshold; the model is unchanged
    assert after["threshold"] == pytest.approx(new["value"])
    assert after["test"]["test/auroc"] == pytest.approx(before["test"]["test/auroc"], abs=1e-7)
    predicted_after = predict("after")
    assert _probs(predicted_after, "prob_pneumonia") == _probs(predicted_before, "prob_pneumonia")
    thresholds = list(_probs(predicted_after, "threshold").values())
    assert len(thresholds) == 24 and all(
        t == pytest.approx(new["value"], abs=1e-6) for t in thresholds
    )
    sidecar_path(best).unlink()
    shutil.rmtree(site)
