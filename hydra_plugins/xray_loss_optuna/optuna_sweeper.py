"""A Hydra sweeper plugin running an Optuna study (TPE, median pruning, SQLite storage).

Why not ``hydra-optuna-sweeper``: its releases (1.2.0, 1.3.0) require optuna<3, their SQLite
storage fails with a bare AssertionError under SQLAlchemy 2, and they cannot prune. This one is
written against Hydra's sweeper-plugin interface and current Optuna:

- the search space uses Hydra's override grammar (``choice(...)``, ``range(...)``,
  ``interval(a, b)``, ``tag(log, interval(a, b))``) in ``hydra.sweeper.params`` or on the command
  line;
- trials are asked in batches of ``n_jobs`` and run by the configured launcher (basic, joblib,
  submitit); each job gets ``+optuna_trial_id=N`` and reports its per-epoch validation metric to
  the study, whose pruner can stop it (``xray_loss.runtime.optuna_pruning``);
- the study lives in ``optuna.db`` (SQLite) in the sweep directory: ``resume=true`` continues it,
  ``n_trials`` counting the trials already finished; trials interrupted by a kill are re-run.
"""

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import optuna
from hydra.core.config_store import ConfigStore
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import (
    ChoiceSweep,
    IntervalSweep,
    Override,
    RangeSweep,
)
from hydra.core.plugins import Plugins
from hydra.plugins.sweeper import Sweeper
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


@dataclass
class OptunaPruningSweeperConf:
    _target_: str = "hydra_plugins.xray_loss_optuna.optuna_sweeper.OptunaPruningSweeper"
    n_trials: int = 20
    n_jobs: int = 1
    direction: str = "maximize"
    objective: str = "best_val_auroc"
    study_name: str = "xray_loss"
    storage: str = "sqlite:///${hydra.sweep.dir}/optuna.db"
    seed: Optional[int] = None
    n_startup_trials: int = 5
    pruner: str = "median"
    pruner_startup_trials: int = 3
    pruner_warmup_epochs: int = 1
    params: Dict[str, str] = field(default_factory=dict)


ConfigStore.instance().store(
    group="hydra/sweeper",
    name="optuna_pruning",
    node=OptunaPruningSweeperConf,
    provider="xray_loss",
)


def _distribution(override: Override) -> Optional[BaseDistribution]:
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


class OptunaPruningSweeper(Sweeper):
    """See the module docstring."""

    def __init__(self, **conf: Any) -> None:
        self.conf = OmegaConf.structured(OptunaPruningSweeperConf(**conf))
        self.config: Optional[DictConfig] = None
        self.hydra_context: Optional[HydraContext] = None
        self.launcher = None

    def setup(
        self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig
    ) -> None:
        self.config = config
        self.hydra_context = hydra_context
        self.launcher = Plugins.instance().instantiate_launcher(
            hydra_context=hydra_context, task_function=task_function, config=config
        )

    def _search_space(self, arguments: List[str]) -> Tuple[Dict[str, BaseDistribution], List[str]]:
        parser = OverridesParser.create(config_loader=self.hydra_context.config_loader)
        params = [f"{k}={v}" for k, v in self.conf.params.items()]
        space: Dict[str, BaseDistribution] = {}
        fixed: List[str] = []
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

    def sweep(self, arguments: List[str]) -> List[Any]:
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
