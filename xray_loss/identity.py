"""What a run is: its named hyperparameters (``xray_loss.metrics.AXES``, what metrics.json's
``config``, the HParams table and the report's columns call them) and its resolved
configuration (every setting that defines what it computes: equal configurations are repeats).
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from xray_loss.metrics import AXES


def threshold_name(threshold: Any) -> str:
    """``0.5``, ``youden``, ``youden on folder``: a threshold setting as a table shows it."""
    if not OmegaConf.is_config(threshold) and not isinstance(threshold, dict):
        return str(threshold)
    source = threshold.get("source", "carveout")
    return str(threshold["rule"]) + ("" if source == "carveout" else f" on {source}")


def hyperparameters(cfg: DictConfig, choices: dict[str, Any]) -> dict[str, Any]:
    """The named hyperparameters of a run (``xray_loss.metrics.AXES``): what metrics.json's
    ``config``, the HParams table and the report's columns call them. ``choices`` are Hydra's
    config-group choices (``loss=ce_matched`` is named ``ce_matched``, not by its class)."""
    decay = OmegaConf.select(cfg, "optimizer.weight_decay", default=0.0) or 0.0
    values = {
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
        "weight_decay": float(decay),
        "image_size": int(cfg.data.image_size),
        "threshold": threshold_name(cfg.threshold),
    }
    return {axis: values[axis] for axis in AXES}


# settings that change how a run is run or logged, not what it computes: left out of a run's
# configuration when it is recorded, and when the report reads an older record
BOOKKEEPING = (
    "data.batch_size",  # = batch_size
    "data.eval_batch_size",  # the same metrics at any size (tests/test_train_cli.py)
    "data.seed",  # = seed
    "data.cache",
    "data.cache_dir",
    "data.split_csv",
    "data.num_workers",
    "data.download",
    "data.url",
    "optimizer.lr",  # = lr
    "trainer._target_",
    "trainer.default_root_dir",
    "trainer.enable_model_summary",
    "trainer.enable_progress_bar",
    "trainer.log_every_n_steps",
    "trainer.num_sanity_val_steps",
    "trainer.benchmark",
    "trainer.deterministic",
    "trainer.plugins",  # checkpoint IO (runtime.checkpointing.AtomicCheckpointIO)
)
_CONFIGURATION_KEYS = ("seed", "lr", "epochs", "epochs_scale", "batch_size", "threshold", "budgets")
_CONFIGURATION_GROUPS = ("data", "model", "loss", "optimizer", "scheduler", "trainer")


def run_configuration(cfg: DictConfig) -> dict[str, Any]:
    """Every resolved setting that defines what a run computes, as flat ``group.key`` items.

    Two runs with equal configurations are repetitions (they differ in ``seed`` and
    ``data.fold`` at most, see ``xray_loss.metrics.REPEATS``); the sweep's aggregate and the
    report group runs on this, never on the command that started them (``resume``, ``name``,
    ``threads``, ``hydra.*`` and ``paths.*`` are not part of it).
    """
    flat: dict[str, Any] = {}

    def walk(prefix: str, node: Any) -> None:
        if isinstance(node, dict) and node:
            for key, value in node.items():
                walk(f"{prefix}.{key}", value)
        elif not prefix.endswith("._partial_") and prefix not in BOOKKEEPING:
            flat[prefix] = str(node) if isinstance(node, (list, dict)) else node

    for key in _CONFIGURATION_KEYS:
        flat[key] = OmegaConf.select(cfg, key, default=None)
        if OmegaConf.is_list(flat[key]):
            flat[key] = str(list(flat[key]))
    for group in _CONFIGURATION_GROUPS:
        node = OmegaConf.select(cfg, group, default=None)
        if node is not None:
            walk(group, OmegaConf.to_container(node, resolve=True))
    return flat


def format_value(v: Any) -> str:
    """A value as run names, tables and HParams show it: floats shortest (1e-05, 0.001)."""
    return f"{v:g}" if isinstance(v, float) else str(v)


def sort_key(v: Any) -> tuple:
    """Numbers in numeric order (1e-05 < 0.0001, 10 < 30 < 100), then text."""
    try:
        return (0, float(v), "")
    except (TypeError, ValueError):
        return (1, 0.0, str(v))


def code_commit() -> str | None:
    """The package's git commit (``+dirty`` with uncommitted changes), or None outside git."""
    where = str(Path(__file__).resolve().parent)
    try:
        head = subprocess.run(
            ["git", "-C", where, "rev-parse", "--short", "HEAD"],
            capture_output=True, text=True, timeout=10, check=True,
        ).stdout.strip()  # fmt: skip
        dirty = subprocess.run(
            ["git", "-C", where, "status", "--porcelain", "--untracked-files=no"],
            capture_output=True, text=True, timeout=10, check=True,
        ).stdout.strip()  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return None
    return head + ("+dirty" if dirty else "")
