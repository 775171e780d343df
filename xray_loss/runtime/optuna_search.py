"""Optuna search for Hydra multiruns (``hparams_search=optuna``): the sweeper's study and the
per-epoch pruning of its trials. Needs the ``optuna`` extra (``pip install -e ".[optuna]"``);
nothing imports this module unless a search runs.

Why not ``hydra-optuna-sweeper``: its releases (1.2.0, 1.3.0) require optuna<3, their SQLite
storage fails with a bare AssertionError under SQLAlchemy 2, and they cannot prune. This one is
written against Hydra's sweeper-plugin interface and current Optuna:

- the search space uses Hydra's override grammar (``choice(...)``, ``range(...)``,
  ``interval(a, b)``, ``tag(log, interval(a, b))``) in ``hydra.sweeper.params`` or on the command
  line;
- trials are asked in batches of ``n_jobs`` and run by the configured launcher (basic, joblib,
  submitit); each job gets ``+optuna_trial_id=N`` and reports its per-epoch validation metric to
  the study, whose pruner can stop it (below);
- the study lives in ``optuna.db`` (SQLite) in the sweep directory: ``resume=true`` continues it,
  ``n_trials`` counting the trials already finished; trials interrupted by a kill are re-run.

Pruning: the sweeper gives every job ``+optuna_trial_id=N``; the job opens the study in the
sweep's SQLite storage and reports its validation AUROC after each epoch. A pruned job ends with
``status: pruned``.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import lightning as L
import optuna
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import ChoiceSweep, IntervalSweep, Override, RangeSweep
from hydra.core.plugins import Plugins
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)
from optuna.trial import TrialState

from xray_loss.runtime.record import Status

log = logging.getLogger(__name__)


# --- the sweeper -------------------------------------------------------------------------------
def _distribution(override: Override) -> BaseDistribution | None:
    """Optuna distribution of a sweep override; None for a fixed value."""
    value = override.value()
    if isinstance(value, ChoiceSweep):
        return CategoricalDistribution(list(override.sweep_iterator()))
    if isinstance(value, RangeSweep):
        return CategoricalDistribution(list(override.sweep_iterator()))
    if isinstance(value, IntervalSweep):
        log_scale = "log" in value.tags
        if isinstance(value.start, int) and isinstance(value.end, int):
            return IntDistribution(value.start, value.end, log=log_scale)
        return FloatDistribution(float(value.start), float(value.end), log=log_scale)
    return None


def _as_override(key: str, value: Any) -> str:
    return f"{key}={value!r}" if isinstance(value, float) else f"{key}={value}"


class OptunaSearch:
    """The sweeper's work (see the module docstring); ``conf``: the plugin's settings."""

    def __init__(self, conf: DictConfig) -> None:
        self.conf = conf
        self.config: DictConfig | None = None
        self.hydra_context: HydraContext | None = None
        self.launcher = None

    def setup(
        self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig
    ) -> None:
        self.config = config
        self.hydra_context = hydra_context
        self.launcher = Plugins.instance().instantiate_launcher(
            hydra_context=hydra_context, task_function=task_function, config=config
        )

    def _search_space(self, arguments: list[str]) -> tuple[dict[str, BaseDistribution], list[str]]:
        parser = OverridesParser.create(config_loader=self.hydra_context.config_loader)
        params = [f"{k}={v}" for k, v in self.conf.params.items()]
        space: dict[str, BaseDistribution] = {}
        fixed: list[str] = []
        for override in parser.parse_overrides(params + list(arguments)):
            key = override.get_key_element()
            dist = _distribution(override)
            if dist is None:
                fixed = [f for f in fixed if not f.startswith(f"{key}=")]
                fixed.append(f"{key}={override.get_value_element_as_str()}")
                space.pop(key, None)
            else:
                space[key] = dist
        return space, fixed

    def _study(self) -> optuna.Study:
        sampler = optuna.samplers.TPESampler(
            seed=self.conf.seed, n_startup_trials=self.conf.n_startup_trials
        )
        pruner = (
            optuna.pruners.MedianPruner(
                n_startup_trials=self.conf.pruner_startup_trials,
                n_warmup_steps=self.conf.pruner_warmup_epochs,
            )
            if self.conf.pruner == "median"
            else optuna.pruners.NopPruner()
        )
        return optuna.create_study(
            study_name=self.conf.study_name,
            storage=self.conf.storage,
            sampler=sampler,
            pruner=pruner,
            direction=self.conf.direction,
            load_if_exists=True,
        )

    def sweep(self, arguments: list[str]) -> list[Any]:
        sweep_dir = Path(self.config.hydra.sweep.dir)
        sweep_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(self.config, sweep_dir / "multirun.yaml")
        space, fixed = self._search_space(arguments)
        study = self._study()
        # trials a killed sweep left running: close them and run their parameters again; the
        # retry names the trial it replaces, which then does not count as done
        for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            study.tell(trial.number, state=TrialState.FAIL)
            study.enqueue_trial(trial.params, user_attrs={"retry_of": trial.number})
        trials = study.get_trials(deepcopy=False)
        replaced = {t.user_attrs["retry_of"] for t in trials if "retry_of" in t.user_attrs}
        finished = [t for t in trials if t.state.is_finished() and t.number not in replaced]
        remaining = self.conf.n_trials - len(finished)
        log.info(
            "Optuna study %s in %s: %d trial(s) done, %d to run",
            self.conf.study_name,
            self.conf.storage,
            len(finished),
            max(0, remaining),
        )
        returns = []
        job_index = len(study.trials)
        while remaining > 0:
            trials = [study.ask(space) for _ in range(min(self.conf.n_jobs, remaining))]
            # the job reopens its trial with optuna.trial.Trial(study, trial_id): Optuna has no
            # public accessor of that storage id, so the private attribute is the only way
            batch = [
                fixed
                + [_as_override(k, v) for k, v in t.params.items()]
                + [f"+optuna_trial_id={t._trial_id}"]
                for t in trials
            ]
            results = self.launcher.launch(batch, initial_job_idx=job_index)
            for trial, result in zip(trials, results, strict=True):
                self._tell(study, trial, result)
            returns.append(results)
            job_index += len(batch)
            remaining -= len(batch)
        best = [t for t in study.trials if t.state == TrialState.COMPLETE]
        if best:
            log.info(
                "best trial %d: %s = %.4f with %s",
                study.best_trial.number,
                self.conf.objective,
                study.best_value,
                study.best_params,
            )
            OmegaConf.save(
                OmegaConf.create(
                    {
                        "best_value": study.best_value,
                        "best_params": study.best_params,
                        "trials": len(study.trials),
                    }
                ),
                sweep_dir / "optuna_best.yaml",
            )
        return returns

    def _tell(self, study: optuna.Study, trial: optuna.Trial, result) -> None:
        try:
            record = result.return_value or {}
        except Exception as err:  # the job raised past the task function
            log.warning("trial %d failed: %s", trial.number, err)
            study.tell(trial, state=TrialState.FAIL)
            return
        status = record.get("status")
        value = record.get(self.conf.objective)
        if status == Status.COMPLETED and value is not None:
            study.tell(trial, float(value))
        elif status == Status.PRUNED:
            study.tell(trial, state=TrialState.PRUNED)
        else:
            study.tell(trial, state=TrialState.FAIL)


# --- a trial's job -------------------------------------------------------------------------------
def trial_from_sweep(trial_id: int) -> optuna.trial.Trial:
    """The running trial ``trial_id`` of the sweep's study (storage from the sweeper config)."""
    sweeper = HydraConfig.get().sweeper
    study = optuna.load_study(study_name=sweeper.study_name, storage=sweeper.storage)
    return optuna.trial.Trial(study, int(trial_id))


class OptunaPruning(L.Callback):
    """Reports ``monitor`` after every validation and raises ``TrialPruned`` when told to."""

    def __init__(self, trial: optuna.trial.Trial, monitor: str = "val/auroc") -> None:
        self.trial = trial
        self.monitor = monitor

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or self.monitor not in trainer.callback_metrics:
            return
        value = float(trainer.callback_metrics[self.monitor])
        epoch = trainer.current_epoch
        prune = False
        if trainer.is_global_zero:
            self.trial.report(value, step=epoch)
            prune = self.trial.should_prune()
        # every rank takes rank 0's decision, so DDP ranks stop together
        if trainer.strategy.broadcast(prune, src=0):
            raise optuna.TrialPruned(f"pruned at epoch {epoch} ({self.monitor}={value:.4f})")
