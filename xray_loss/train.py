"""Train one model: config -> datamodule + module -> trainer -> logs and metrics.json.

    python -m xray_loss.train loss=ce lr=1e-3
    python -m xray_loss.train -m loss=bce,ce lr=1e-4,1e-3 epochs=2

Each run writes its config, metrics.json, checkpoints, events and predictions in its own folder.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

import hydra
import lightning as L
from hydra.core.hydra_config import HydraConfig
from hydra.errors import CompactHydraException
from hydra.types import RunMode
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from xray_loss.budget import TimeBudget
from xray_loss.callbacks import EpochBudgets, fit_end
from xray_loss.checks import check_config
from xray_loss.config import quote_overrides, setup_process, spell_out_threshold
from xray_loss.dashboard import write_experiment, write_session
from xray_loss.identity import hyperparameters, run_configuration
from xray_loss.metrics import metric_names
from xray_loss.runtime.ddp import LocalRanks, global_rank, share_cpu_threads
from xray_loss.runtime.record import Interrupted, RunRecord, recorded_run
from xray_loss.runtime.sweep import console, report_interruption, stop_if_every_job_fails

log = logging.getLogger("xray_loss.train")


def train(cfg: DictConfig) -> dict[str, Any]:
    """Fit, then test the best checkpoint; returns the run record written to metrics.json."""
    run_dir, task = Path(cfg.paths.output_dir), list(HydraConfig.get().overrides.task)
    with recorded_run(run_dir, cfg.resume, global_rank(), write_session, overrides=task) as run:
        if run.skip:  # resume=true and this run already completed
            return run.record.data
        check_config(cfg)
        config = hyperparameters(cfg, HydraConfig.get().runtime.choices)
        run.record.update(config=config, configuration=run_configuration(cfg))
        share_cpu_threads(cfg, HydraConfig.get().launcher)
        with LocalRanks(cfg, run_dir):  # the other local ranks of a DDP job
            datamodule: L.LightningDataModule = instantiate(cfg.data)
            datamodule.setup("fit")  # splits and class counts, before the model is built
            run.record.update(splits=datamodule.manifest())
            # seeded after the data setup (a cold decode cache draws random numbers, a warm not)
            L.seed_everything(int(cfg.seed), workers=True, verbose=False)
            module = instantiate(
                cfg.module,
                class_counts=datamodule.class_counts,
                run_config=OmegaConf.to_container(cfg, resolve=True),
                _recursive_=False,
                _convert_="all",
            )
            loggers = [instantiate(c) for c in cfg.logger.values() if c]
            trainer: L.Trainer = instantiate(cfg.trainer, callbacks=callbacks(cfg), logger=loggers)
            trainer.fit(module, datamodule=datamodule, ckpt_path=run.resume_from)
            budgets = EpochBudgets.of(trainer).test(trainer, module, datamodule)
            # the best checkpoint's val metrics, for metrics.json (not the per-epoch curves)
            trainer.validate(module, datamodule=datamodule, ckpt_path="best", verbose=False)
            val = {k: v for k, v in trainer.callback_metrics.items() if k.startswith("val/")}
            test = trainer.test(module, datamodule=datamodule, ckpt_path="best")[0]
        result = summarise(trainer, module, val, test, budgets)
        run.finish(result)
        if trainer.is_global_zero:
            write_session(run_dir, run.record.data, trainer.current_epoch)
            if HydraConfig.get().mode != RunMode.MULTIRUN:  # a sweep writes its own experiment
                write_experiment(run_dir, {})
            print_summary(run_dir, result, cfg)
    return run.record.data


def callbacks(cfg: DictConfig) -> list[L.Callback]:
    """The configured callbacks, plus Optuna's pruning hook in a trial of hparams_search."""
    found = [instantiate(c) for c in cfg.callbacks.values() if c]
    if cfg.get("optuna_trial_id") is not None:
        from xray_loss.runtime.optuna_search import OptunaPruning, trial_from_sweep

        found.append(OptunaPruning(trial_from_sweep(int(cfg.optuna_trial_id))))
    return found


def summarise(trainer: L.Trainer, module, val: dict, test: dict, budgets: dict) -> dict[str, Any]:
    """What metrics.json records of a finished run, read off the checkpoint callback."""
    checkpoint = trainer.checkpoint_callback
    stopped_by, epochs = fit_end(trainer)
    return {
        "best_epoch": module.loaded_epoch + 1,  # of the best checkpoint, loaded by the test
        "best_checkpoint": checkpoint.best_model_path,
        "best_val_auroc": float(checkpoint.best_model_score),
        "stopped_by": stopped_by,  # max_epochs, max_time, ...: record.STOP_REASONS
        "epochs_trained": epochs,  # complete epochs (a cut one is not counted)
        "steps": trainer.global_step,
        "images_seen": TimeBudget.images_seen(trainer),  # all ranks, across resumes
        "final_lr": getattr(module, "_epoch_lr", None),  # the backbone's in the last trained epoch
        "threshold": float(module.threshold),  # of val and test metrics: P >= it is pneumonia
        "operating_point": module.operating_point_report(),
        "val": {k: float(v) for k, v in val.items()},
        "test": {k: float(v) for k, v in test.items() if k.startswith("test/")},
        "test_images": len(module.evaluated["test"].labels),  # test_predictions.csv's rows
        "budgets": budgets,
        "world_size": trainer.world_size,
    }


def print_summary(run_dir: Path, result: dict[str, Any], cfg: DictConfig) -> None:
    """The run's result, on the console and in its train.log (``sweep.console``)."""
    test = result["test"]
    console.info(
        f"\nRun finished: best epoch {result['best_epoch']}, "
        f"val AUROC {result['best_val_auroc']:.4f}\n"
        f"Test (best checkpoint, threshold {result['threshold']:.3f}): "
        + ", ".join(f"{m} {test.get(f'test/{m}', float('nan')):.4f}" for m in metric_names())
        + f"\nRun directory: {run_dir}\n"
        f"TensorBoard:   make tensorboard SWEEP={run_dir}"
    )


@hydra.main(version_base="1.3", config_path="../conf", config_name="train")
def main(cfg: DictConfig) -> dict[str, Any]:
    """Hydra entry point. A failed sweep job is recorded and the sweep goes on, unless every job
    would fail alike; a signal stops a run or sweep as interrupted, naming how to continue."""
    setup_process()  # in launcher workers too (a no-op where the command already ran it)
    multirun = HydraConfig.get().mode == RunMode.MULTIRUN
    try:
        return train(cfg)
    except Interrupted as stop:
        if global_rank() == 0:
            report_interruption(stop, Path(HydraConfig.get().sweep.dir) if multirun else None)
        raise
    except Exception as err:
        if not multirun:
            raise
        stop_if_every_job_fails(err, HydraConfig.get())
        # the project's own errors are one sentence; anything else keeps its stack
        log.error("job failed: %s", err, exc_info=not isinstance(err, CompactHydraException))
        return RunRecord(Path(cfg.paths.output_dir)).data


if __name__ == "__main__":
    setup_process()
    sys.argv[1:] = quote_overrides(spell_out_threshold(sys.argv[1:]))
    main()
