"""Test a trained checkpoint on any configured data source.

    python -m xray_loss.eval ckpt_path=logs/train/runs/<run>/checkpoints/best-epoch011.ckpt
    python -m xray_loss.eval ckpt_path=... data=kermany data.root=/data/chest_xray

The model and, unless overridden, the data config come from the checkpoint. The decision
threshold is the one stored with it (0.5, or the validation-chosen Youden threshold), so the
test metrics reproduce those of the training run's metrics.json. Writes metrics.json,
confusion_matrix.png, roc.png and test_predictions.csv into logs/eval/runs/<time>_<overrides>.
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

from xray_loss.callbacks import TestReport
from xray_loss.config import ConfigError, quote_path_overrides, setup_process
from xray_loss.module import load_classifier, run_config
from xray_loss.record import RunRecord

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
    data["batch_size"] = int(cfg.batch_size)
    if "split_csv" in data:
        data["split_csv"] = str(out / "split.csv")  # never overwrite the training run's split
    data["augment"] = {**data.get("augment", {}), "enabled": False}
    return data


def evaluate(cfg: DictConfig) -> dict[str, Any]:
    if OmegaConf.is_missing(cfg, "ckpt_path"):  # one sentence, not MissingMandatoryValue's trace
        raise ConfigError(
            f"ckpt_path is not set: give the checkpoint of a training run to test, e.g. {EXAMPLE} "
            f"(add data=... to test on other data)."
        )
    out = Path(cfg.paths.output_dir)
    if cfg.split not in ("test", "val"):
        raise ConfigError(f"Invalid value split={cfg.split!r}: split must be test or val.")
    model = load_classifier(cfg.ckpt_path)
    trained = run_config(model)
    datamodule = instantiate(data_config(cfg, trained, out))
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
    if cfg.split == "val":
        datamodule.test_dataloader = datamodule.val_dataloader
    metrics = trainer.test(model, datamodule=datamodule)[0]
    record = RunRecord(out)
    record.start(
        ckpt_path=str(Path(cfg.ckpt_path).resolve()),
        split=cfg.split,
        data=datamodule.__class__.__name__,
        threshold=float(model.threshold),
    )
    record.finish("completed", test={k: float(v) for k, v in metrics.items()})
    print(
        f"\nEvaluated {cfg.ckpt_path} on the {cfg.split} split "
        f"(threshold {float(model.threshold):.3f}). Results in {out}",
        flush=True,
    )
    return record.data


@hydra.main(version_base="1.3", config_path="../conf", config_name="eval")
def main(cfg: DictConfig) -> dict[str, Any]:
    try:
        return evaluate(cfg)
    except (ValueError, FileNotFoundError) as err:
        raise ConfigError(str(err)) from None


if __name__ == "__main__":
    setup_process()
    sys.argv[1:] = quote_path_overrides(sys.argv[1:], ("ckpt_path", "data.root"))
    main()
