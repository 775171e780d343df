"""The Hydra sweeper plugin of ``hparams_search=optuna``: its settings, registered with Hydra.

The search (TPE, median pruning, SQLite storage; why not ``hydra-optuna-sweeper``) is
``xray_loss.runtime.optuna_search``, imported when a search starts: Optuna is an optional part,
and Hydra imports every plugin module at start-up.
"""

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from hydra.core.config_store import ConfigStore
from hydra.plugins.sweeper import Sweeper
from omegaconf import OmegaConf

from xray_loss.config import ConfigError


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


class OptunaPruningSweeper(Sweeper):
    """Hydra's handle on the search: settings here, the work in ``OptunaSearch``."""

    def __init__(self, **conf: Any) -> None:
        try:
            from xray_loss.runtime.optuna_search import OptunaSearch
        except ModuleNotFoundError as err:
            if err.name != "optuna":
                raise
            raise ConfigError(
                "hparams_search=optuna needs Optuna, an optional part: "
                "pip install -e '.[optuna]' (or pip install optuna), then run the search again."
            ) from None
        self.search = OptunaSearch(OmegaConf.structured(OptunaPruningSweeperConf(**conf)))

    def setup(self, **kwargs: Any) -> None:
        self.search.setup(**kwargs)

    def sweep(self, arguments: List[str]) -> Any:
        return self.search.sweep(arguments)
