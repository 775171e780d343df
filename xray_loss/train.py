"""Train one model: config -> datamodule + module -> trainer -> logs and metrics.json.

    python -m xray_loss.train loss=ce lr=1e-3
    python -m xray_loss.train -m loss=bce,ce lr=1e-4,1e-3 epochs=2

Every run writes into its own directory (``logs/<name>/runs/<time>_<overrides>``, or the job's
directory of a multirun): the composed config (``.hydra/``), ``metrics.json``, checkpoints
(best by val AUROC, and last), TensorBoard events and ``test_predictions.csv``.
"""

from __future__ import annotations

import logging
import os
import time
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import hydra
import lightning as L
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from xray_loss.allocator import retain_freed_memory
from xray_loss.callbacks import EpochBudgets, TrainingDiverged
from xray_loss.config import (
    ConfigError,
    check_config,
    hydra_choice_summary,
    register_resolvers,
    run_configuration,
)
from xray_loss.ddp import LocalRanks, global_rank, is_ddp, world_size
from xray_loss.record import RunRecord

log = logging.getLogger("xray_loss.train")
register_resolvers()

# in-memory data needs no loader workers; Lightning's hint about them is noise here
warnings.filterwarnings("ignore", message=r".*does not have many workers.*")
warnings.filterwarnings("ignore", message=r".*GPU available but not used.*")
warnings.filterwarnings("ignore", message=r".*`isinstance\(treespec, LeafSpec\)`.*")
# ... and so are its adverts for cloud services
logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(
    lambda record: "Tip:" not in record.getMessage()
)

METRIC_NAMES = ("loss", "acc", "auroc", "f1", "sensitivity", "specificity")


class RunFailed(ConfigError):
    """A run that ended with a clear, already-explained error (no traceback needed)."""


def hyperparameters(cfg: DictConfig) -> dict[str, Any]:
    """The resolved values that describe a run: what the HParams table and reports compare."""
    choices = hydra_choice_summary(HydraConfig.get().runtime.choices)
    return {
        "loss": choices.get("loss"),
        "model": choices.get("model"),
        "data": choices.get("data"),
        "optimizer": choices.get("optimizer"),
        "scheduler": choices.get("scheduler"),
        "lr": float(cfg.lr),
        "epochs": int(cfg.epochs),
        "max_epochs": int(cfg.trainer.max_epochs),
        "batch_size": int(cfg.batch_size),
        "seed": int(cfg.seed),
        "weight_decay": float(cfg.optimizer.get("weight_decay", 0.0) or 0.0),
        "image_size": int(cfg.data.image_size),
        "threshold": str(cfg.threshold),
    }


def write_hparams(trainer: L.Trainer, params: dict[str, Any], metrics: dict[str, float]) -> None:
    """Fill TensorBoard's HParams tab: this run's hyperparameters and its final metric tags."""
    from torch.utils.tensorboard.summary import hparams

    for logger in trainer.loggers:
        if isinstance(logger, L.pytorch.loggers.TensorBoardLogger):
            params = {k: ("none" if v is None else v) for k, v in params.items()}
            writer = logger.experiment._get_file_writer()
            for summary in hparams(params, metrics):
                writer.add_summary(summary)
            logger.experiment.flush()


def build_trainer(cfg: DictConfig, extra_callbacks: list[L.Callback]) -> L.Trainer:
    callbacks = [instantiate(c) for c in cfg.callbacks.values() if c] + extra_callbacks
    loggers = [instantiate(c) for c in cfg.logger.values() if c]
    return instantiate(cfg.trainer, callbacks=callbacks, logger=loggers)


def configure_threads(cfg: DictConfig) -> None:
    """``threads=auto``: share the CPU cores between the jobs/ranks running side by side."""
    threads = cfg.get("threads", "auto")
    if threads != "auto":
        torch.set_num_threads(int(threads))
        return
    launcher = HydraConfig.get().launcher
    parallel = 1
    if "Joblib" in str(launcher.get("_target_", "")):
        n_jobs = launcher.get("n_jobs") or -1
        parallel = os.cpu_count() if n_jobs < 0 else n_jobs
    if is_ddp(cfg) and str(cfg.trainer.accelerator) == "cpu":
        parallel *= world_size(cfg)
    if parallel > 1:
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // parallel))


def pruning_callbacks(cfg: DictConfig) -> list[L.Callback]:
    """The Optuna pruning hook when this job is a trial of ``hparams_search=optuna``."""
    trial_id = cfg.get("optuna_trial_id")
    if trial_id is None:
        return []
    from xray_loss.optuna_pruning import OptunaPruning, trial_from_sweep

    return [OptunaPruning(trial_from_sweep(int(trial_id)))]


def stage_metrics(trainer: L.Trainer, stage: str) -> dict[str, float]:
    """The ``stage/...`` metrics of the last evaluation, logged to TensorBoard or not."""
    return {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith(f"{stage}/")}


def test_budgets(trainer: L.Trainer, module: L.LightningModule, datamodule) -> dict[str, Any]:
    """Test metrics of the best checkpoint at each epoch budget (``budgets=[10,30,100]``)."""
    keeper = next((c for c in trainer.callbacks if isinstance(c, EpochBudgets)), None)
    results: dict[str, Any] = {}
    for nominal, info in sorted((keeper.saved if keeper else {}).items()):
        module.report_suffix = f"_epoch{nominal:03d}"
        with loggers_off(trainer) as loggers:  # logged below as budget/..., step = the budget
            trainer.test(module, datamodule=datamodule, ckpt_path=info["checkpoint"], verbose=False)
        test = stage_metrics(trainer, "test")
        epoch = torch.load(info["checkpoint"], map_location="cpu", weights_only=True)["epoch"]
        results[str(nominal)] = {**info, "best_epoch": epoch + 1, "test": test}
        for logger in loggers:
            logger.log_metrics({f"budget/{k}": v for k, v in test.items()}, step=nominal)
    module.report_suffix = ""
    return results


@contextmanager
def loggers_off(trainer: L.Trainer):
    """Evaluate without writing to the loggers (per-epoch curves stay one point per epoch)."""
    loggers = trainer.loggers
    trainer.loggers = []
    try:
        yield loggers
    finally:
        trainer.loggers = loggers


def train(cfg: DictConfig) -> dict[str, Any]:
    """Fit, then test the best checkpoint; returns the run record written to metrics.json."""
    run_dir = Path(cfg.paths.output_dir)
    rank = global_rank()
    record = RunRecord(run_dir, write=rank == 0)
    if cfg.resume and record.status == "completed":
        log.info("resume: %s already completed, skipped", run_dir)
        return record.data
    last_ckpt = run_dir / "checkpoints" / "last.ckpt"
    interrupted = cfg.resume and record.status == "running" and last_ckpt.exists()
    resume_from = str(last_ckpt) if interrupted else None
    record.start(
        run_dir=str(run_dir),
        overrides=list(HydraConfig.get().overrides.task),
        resumed_from=resume_from,
    )
    started = time.time()
    ranks = LocalRanks()

    def fail(status: str, error: str) -> None:
        ranks.finish(failed=True)
        record.finish(status, error=error, wall_time_s=round(time.time() - started, 2))

    try:
        check_config(cfg)
        record.update(config=hyperparameters(cfg), configuration=run_configuration(cfg))
        configure_threads(cfg)
        ranks.start(cfg, run_dir)
        if rank > 0 or ranks.children:  # every rank keeps the config it ran, for audits
            OmegaConf.save(cfg, run_dir / ".hydra" / f"resolved_rank{rank}.yaml", resolve=True)
        datamodule: L.LightningDataModule = instantiate(cfg.data)
        datamodule.setup("fit")  # report splits and class counts before building the model
        # seeded after the data setup, which may or may not draw random numbers (building the
        # decode cache runs a DataLoader; a warm cache does not): cold and warm runs agree
        L.seed_everything(int(cfg.seed), workers=True, verbose=False)
        module = instantiate(
            cfg.module,
            class_counts=datamodule.class_counts,
            run_config=OmegaConf.to_container(cfg, resolve=True),
            _recursive_=False,
            _convert_="all",
        )
        trainer = build_trainer(cfg, pruning_callbacks(cfg))
        trainer.fit(module, datamodule=datamodule, ckpt_path=resume_from)
        checkpoint = trainer.checkpoint_callback
        best = checkpoint.best_model_path if checkpoint else ""
        budgets = test_budgets(trainer, module, datamodule)
        with loggers_off(trainer):  # the best epoch's val metrics, for metrics.json only
            trainer.validate(module, datamodule=datamodule, ckpt_path=best or None, verbose=False)
        val = stage_metrics(trainer, "val")
        test = trainer.test(module, datamodule=datamodule, ckpt_path=best or None)[0]
    except TrainingDiverged as err:
        fail("diverged", str(err))
        raise RunFailed(str(err)) from None
    except ConfigError as err:
        fail("failed", str(err))
        raise
    except (ValueError, FileNotFoundError) as err:  # bad data or options, already explained
        fail("failed", str(err))
        raise RunFailed(str(err)) from None
    except BaseException as err:
        if type(err).__name__ == "TrialPruned":
            fail("pruned", str(err))
            return record.data
        fail("failed", f"{type(err).__name__}: {err}")
        raise
    ranks.finish(failed=False)

    best_epoch = (
        torch.load(best, map_location="cpu", weights_only=True)["epoch"] + 1 if best else None
    )
    best_val_auroc = float(checkpoint.best_model_score) if checkpoint and best else None
    result = {
        "best_epoch": best_epoch,
        "best_checkpoint": best or None,
        "epochs_trained": trainer.current_epoch,
        "threshold": float(module.threshold),
        # val and test metrics are both taken at this threshold (P >= threshold is pneumonia)
        "threshold_rule": "youden on val" if cfg.threshold == "youden" else "fixed",
        "val": {k: float(v) for k, v in val.items()},
        "test": {k: float(v) for k, v in test.items()},
        "best_val_auroc": best_val_auroc,
        "budgets": budgets,
        "world_size": trainer.world_size,
        "wall_time_s": round(time.time() - started, 2),
    }
    if trainer.is_global_zero:
        metric_tags = {"val/auroc_best": best_val_auroc or 0.0}
        metric_tags.update({f"test/{m}": 0.0 for m in METRIC_NAMES})
        for logger in trainer.loggers:
            logger.log_metrics(
                {"val/auroc_best": metric_tags["val/auroc_best"]}, step=trainer.global_step
            )
        write_hparams(trainer, record.data["config"], metric_tags)
        record.finish("completed", **result)
        print_summary(run_dir, result, cfg)
    return record.data


def print_summary(run_dir: Path, result: dict[str, Any], cfg: DictConfig) -> None:
    test = result["test"]
    lines = [
        "",
        f"Run finished: best epoch {result['best_epoch']}, "
        f"val AUROC {result['best_val_auroc'] or float('nan'):.4f}",
        "Test (best checkpoint, threshold {:.3f}): ".format(result["threshold"])
        + ", ".join(f"{m} {test.get(f'test/{m}', float('nan')):.4f}" for m in METRIC_NAMES),
        f"Run directory: {run_dir}",
        f"TensorBoard:   tensorboard --logdir {cfg.paths.log_dir} --host 127.0.0.1",
    ]
    print("\n".join(lines), flush=True)


@hydra.main(version_base="1.3", config_path="../conf", config_name="train")
def main(cfg: DictConfig) -> dict[str, Any]:
    """Hydra entry point. In a multirun a failed job is recorded and the sweep goes on."""
    retain_freed_memory()
    if HydraConfig.get().mode != RunMode.MULTIRUN:
        return train(cfg)
    try:
        return train(cfg)
    except Exception as err:
        log.error("job failed: %s", err)
        return RunRecord(Path(cfg.paths.output_dir)).data


if __name__ == "__main__":
    main()
