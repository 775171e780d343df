"""Test a trained checkpoint on any configured data source, or re-choose its operating point.

    python -m xray_loss.eval ckpt_path=logs/train/runs/<run>/checkpoints/best-epoch011.ckpt
    python -m xray_loss.eval ckpt_path=... data=kermany data.root=/data/chest_xray
    python -m xray_loss.eval ckpt_path=... recalibrate=/site/labeled [threshold=sens@0.95]

The model and, unless overridden, the data config come from the checkpoint; then eval scores
exactly the images the run was tested on (the checkpoint records each one's name, label and
content digest) and refuses, naming the difference, when the data on disk no longer holds
them. The decision
threshold is the one stored with it, so the test metrics reproduce those of the training run's
metrics.json, unless a recalibrated operating point lies beside the checkpoint
(``<ckpt>.operating_point.json``, written by ``recalibrate=``), which then applies. Writes
metrics.json, confusion_matrix.png, roc.png and test_predictions.csv into
logs/eval/runs/<time>_<overrides>.

``recalibrate=FOLDER`` (a labeled sample of the site where the model will be used:
``FOLDER/NORMAL``, ``FOLDER/PNEUMONIA``) changes the threshold only, not the model: it chooses
it there by the rule (``threshold=``, default the checkpoint's data-driven rule or youden),
with bootstrap intervals, writes the sidecar and prints the sample's metrics before and after.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

import hydra
import lightning as L
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from xray_loss.atomic import write_json_atomic
from xray_loss.callbacks import TestReport
from xray_loss.checks import check_entry
from xray_loss.config import ConfigError, quote_overrides, setup_process
from xray_loss.data.kermany_layout import read_labeled_folder
from xray_loss.data.splits import split_difference
from xray_loss.inference import bound, load_classifier, run_config
from xray_loss.inference import operating_point as applied_operating_point
from xray_loss.metrics import binary_metrics
from xray_loss.runtime.record import RunRecord, Status
from xray_loss.threshold import SOURCES, describe, operating_point, parse_rule, sidecar_path

log = logging.getLogger("xray_loss.eval")
EXAMPLE = "python -m xray_loss.eval ckpt_path=logs/train/runs/<run>/checkpoints/best-epoch011.ckpt"


def data_config(cfg: DictConfig, trained: dict[str, Any], out: Path) -> dict[str, Any]:
    """The data config to test on: the user's ``data=...`` or the checkpoint's own."""
    overrides = list(HydraConfig.get().overrides.task)
    if cfg.get("data"):
        data = OmegaConf.to_container(cfg.data, resolve=True)
        size_given = any(o.split("=")[0].lstrip("+") == "data.image_size" for o in overrides)
        trained_size = trained.get("data", {}).get("image_size")
        if trained_size and not size_given:
            data["image_size"] = trained_size  # the model's input size, not the group default
    elif trained.get("data"):
        data = dict(trained["data"])
    else:
        raise ConfigError("The checkpoint carries no data config: pass data=... explicitly.")
    data["batch_size"] = data["eval_batch_size"] = int(cfg.batch_size)
    if "split_csv" in data:
        data["split_csv"] = str(out / "split.csv")  # never overwrite the training run's split
    data["augment"] = {**data.get("augment", {}), "enabled": False}
    # the threshold is the checkpoint's: nothing to choose. But the run's own source decides
    # which folders the splits are built from (Kermany's val/ as the threshold's sample drops
    # train/ copies of its images), so it stays unless it is a folder of its own
    if cfg.get("data") or data.get("calibration", "carveout") not in SOURCES:
        data["calibration"] = "carveout"
    return data


def check_split(ckpt_path: str, datamodule, split: str) -> None:
    """Refuse to score anything but the images the training run scored as ``split``."""
    checkpoint = torch.load(ckpt_path, map_location="cpu", weights_only=True, mmap=True)
    recorded = (checkpoint.get(type(datamodule).__qualname__) or {}).get("splits", {}).get(split)
    if recorded is None:
        log.warning(
            "%s records no %s split (written before xray_loss stored it): the images tested now "
            "cannot be checked against the run's",
            ckpt_path,
            split,
        )
        return
    difference = split_difference(recorded, datamodule.identity(split))
    if difference:
        raise ConfigError(
            f"The {split} split found now is not the one {ckpt_path} was tested on: {difference}. "
            f"eval scores exactly the images the training run scored; restore the data it used "
            f"(its run directory's split.csv lists real-data splits), or test on other data on "
            f"purpose with data=... (no check then)."
        )
    log.info("%s split: the %d images the run was tested on", split, len(recorded["files"]))


def evaluate(cfg: DictConfig) -> dict[str, Any]:
    if OmegaConf.is_missing(cfg, "ckpt_path"):  # one sentence, not MissingMandatoryValue's trace
        raise ConfigError(
            f"ckpt_path is not set: give the checkpoint of a training run to test, e.g. {EXAMPLE} "
            f"(add data=... to test on other data)."
        )
    check_entry(cfg, "eval")
    out = Path(cfg.paths.output_dir)
    if cfg.split not in ("test", "val"):
        raise ConfigError(f"Invalid value split={cfg.split!r}: split must be test or val.")
    model = load_classifier(cfg.ckpt_path)
    if cfg.recalibrate:  # before any sidecar applies: it replaces one, even a refused one
        return recalibrate(cfg, model, out)
    point, _ = applied_operating_point(model, cfg.ckpt_path)  # a recalibrated one applies
    trained = run_config(model)
    datamodule = instantiate(data_config(cfg, trained, out))
    if not cfg.get("data"):  # the run's own data: exactly the images it was tested on
        check_split(cfg.ckpt_path, datamodule, cfg.split)
    # the training run's precision on a GPU (bf16-mixed there), so its metrics reproduce
    on_gpu = cfg.accelerator != "cpu" and torch.cuda.is_available()
    precision = trained.get("trainer", {}).get("precision", "32-true") if on_gpu else "32-true"
    trainer = L.Trainer(
        accelerator=cfg.accelerator,
        devices=1,
        precision=precision,
        logger=False,
        enable_checkpointing=False,
        callbacks=[TestReport(str(out), save_figures=True)],
        enable_model_summary=False,
    )
    if cfg.split == "val":  # the carve-out: the first of val's loaders (a threshold's own
        # sample, Kermany's val/ for one, is the second when it is not the carve-out)
        datamodule.test_dataloader = lambda: _first(datamodule.val_dataloader())
    metrics = {k: v for k, v in trainer.test(model, datamodule=datamodule)[0].items() if "/" in k}
    record = RunRecord(out)
    record.start(
        ckpt_path=str(Path(cfg.ckpt_path).resolve()),
        split=cfg.split,
        data=datamodule.__class__.__name__,
        threshold=float(model.threshold),
        operating_point=point,
    )
    record.finish(Status.COMPLETED, test={k: float(v) for k, v in metrics.items()})
    print(
        f"\nEvaluated {cfg.ckpt_path} on the {cfg.split} split "
        f"(threshold {float(model.threshold):.3f}). Results in {out}",
        flush=True,
    )
    return record.data


def recalibrate(cfg: DictConfig, model, out: Path) -> dict[str, Any]:
    """Choose the checkpoint's threshold on a labeled sample: sidecar, metrics before/after."""
    data = run_config(model).get("data", {})
    folder = Path(cfg.recalibrate).expanduser()
    sample = read_labeled_folder(
        folder, int(data.get("image_size", 224)), data.get("resize", "squash")
    )
    with torch.no_grad():
        probs = torch.cat(
            [
                model.predict_proba(sample.images[i : i + cfg.batch_size])
                for i in range(0, len(sample), cfg.batch_size)
            ]
        )
    rule = cfg.threshold
    if rule is None:
        stored = model.operating_point.get("rule", "youden")
        rule = stored if parse_rule(stored)[0] != "fixed" else "youden"
    before = float(model.threshold)
    point = operating_point(probs, sample.labels, rule, str(folder), groups=sample.patients)
    if point.get("warning"):
        log.warning("%s", point["warning"])
    sidecar = sidecar_path(cfg.ckpt_path)
    metrics = {
        "before": {"threshold": before, **_floats(binary_metrics(probs, sample.labels, before))},
        "after": {
            "threshold": point["value"],
            **_floats(binary_metrics(probs, sample.labels, point["value"])),
        },
    }
    lines = [f"\nOperating point on {folder}: {describe(point)}"]
    for name in ("sensitivity", "specificity"):
        if name in point:
            est, low, high = point[name]
            lines.append(
                f"  {name} at it: {est:.3f} ({point.get('estimate', 'in-sample')}, "
                f"95% CI {low:.3f}-{high:.3f})"
            )
    lines.append(f"  {'':12s}{'threshold':>10s}{'acc':>8s}{'sens':>8s}{'spec':>8s}{'AUROC':>8s}")
    for when, m in metrics.items():
        lines.append(
            f"  {when:12s}{m['threshold']:10.3f}{m['acc']:8.3f}{m['sensitivity']:8.3f}"
            f"{m['specificity']:8.3f}{m['auroc']:8.3f}"
        )
    print("\n".join(lines), flush=True)  # what was computed, even if it cannot be kept
    try:
        write_json_atomic(sidecar, bound(point, cfg.ckpt_path, model.state_dict()))
    except OSError as err:
        raise ConfigError(
            f"Could not write the operating point beside the checkpoint, {sidecar} "
            f"({err.strerror or err}): make {sidecar.parent} writable (or copy the checkpoint "
            f"somewhere writable) and run the same command again; the numbers above are its "
            f"before and after."
        ) from None
    print(f"Written beside the checkpoint: {sidecar} (eval and predict use it)", flush=True)
    record = RunRecord(out)
    record.start(ckpt_path=str(Path(cfg.ckpt_path).resolve()), recalibrate=str(folder))
    record.finish(Status.COMPLETED, operating_point=point, sidecar=str(sidecar), sample=metrics)
    return record.data


def _first(loaders):
    """The first of a list of dataloaders, or the one dataloader."""
    return loaders[0] if isinstance(loaders, list | tuple) else loaders


def _floats(values: dict[str, torch.Tensor]) -> dict[str, float]:
    return {k: float(v) for k, v in values.items()}


@hydra.main(version_base="1.3", config_path="../conf", config_name="eval")
def main(cfg: DictConfig) -> dict[str, Any]:
    """Hydra entry point: the project's errors print as one sentence (xray_loss.errors)."""
    return evaluate(cfg)


if __name__ == "__main__":
    setup_process()
    sys.argv[1:] = quote_overrides(sys.argv[1:], ("ckpt_path", "data.root"))
    main()
