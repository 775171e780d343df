"""What a run is, in one table: every key's role, from which everything that names, records,
groups or identifies runs is derived.

- ``axis``: a named hyperparameter (``loss``, ``lr``, ...): metrics.json's ``config``, the
  HParams columns, the report's axes and columns;
- ``repeat``: repeats a configuration (``seed``, ``data.fold``): pooled as repetitions;
- ``setting``: defines what a run computes: its ``configuration``. **Every key not listed is
  one**, so a new knob splits configurations until it is listed otherwise; it can never be
  pooled as a repeat by accident;
- ``sweep``: what a sweep is (a preset, a count of seeds, the sweeper's own settings): part of
  a sweep's identity, not of a run's configuration;
- ``bookkeeping``: how a run is run or logged (workers, checkpoints, paths, loggers): in no
  identity; the same weights and metrics bit for bit (tests/test_bookkeeping.py).

``named=False``: an override of the key does not name run directories and TensorBoard runs (a
path, a preset). A named sweep axis is one line here plus its knob in ``conf/train.yaml``.
"""

from __future__ import annotations

import functools
import subprocess
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf


class Role(StrEnum):
    AXIS = "axis"
    REPEAT = "repeat"
    SETTING = "setting"
    SWEEP = "sweep"
    BOOKKEEPING = "bookkeeping"


def threshold_name(threshold: Any) -> str:
    """``0.5``, ``youden``, ``youden on folder``: a threshold setting as a table shows it."""
    if not OmegaConf.is_config(threshold) and not isinstance(threshold, dict):
        return str(threshold)
    source = threshold.get("source", "carveout")
    return str(threshold["rule"]) + ("" if source == "carveout" else f" on {source}")


@dataclass(frozen=True)
class Key:
    role: Role
    path: str | None = None  # where a named key's value is (default: the key); a group's choice
    record: Callable[[Any], Any] | None = None  # a named hyperparameter: its value as recorded
    choice: bool = False  # the value is Hydra's choice of the config group ``path``
    default: Any = None  # a named hyperparameter's value where the config has none
    named: bool = True  # an override of it names run directories
    follows: tuple[str, ...] = ()  # keys whose values determine this one's

    def at(self, key: str) -> str:
        return self.path or key


A, R, S, W, B = Role.AXIS, Role.REPEAT, Role.SETTING, Role.SWEEP, Role.BOOKKEEPING
# Keys are config paths, or the names of named hyperparameters (their ``path`` says where).
# A key ending in "." covers every key below it (the longest listed prefix decides).
SCHEMA: dict[str, Key] = {
    # the named hyperparameters, in the order tables show them
    "loss": Key(A, record=str, choice=True),
    "lr": Key(A, record=float),
    "epochs": Key(A, record=int),
    "max_epochs": Key(A, "trainer.max_epochs", int, follows=("epochs", "epochs_scale")),
    "batch_size": Key(A, record=int),
    "model": Key(A, record=str, choice=True),
    "data": Key(A, record=str, choice=True),
    "optimizer": Key(A, record=str, choice=True),
    "scheduler": Key(A, record=str, choice=True),
    "weight_decay": Key(A, "optimizer.weight_decay", float, default=0.0),
    "image_size": Key(A, "data.image_size", int),
    "threshold": Key(A, record=threshold_name),
    "seed": Key(R, record=int),
    "data.fold": Key(R),
    # settings an override names no run by: a path
    "data.root": Key(S, named=False),
    # what a sweep is: a preset (its values are in the runs' settings), the sweeper's settings
    "experiment": Key(W, named=False),
    "hparams_search": Key(W, named=False),
    "debug": Key(W, named=False),
    "seeds": Key(W, named=False),
    "hydra.": Key(W, named=False),
    # how a run is run or logged: the same weights and metrics bit for bit either way
    "resume": Key(B, named=False),
    "name": Key(B, named=False),
    "paths.": Key(B, named=False),
    "hydra.launcher.": Key(B, named=False),
    "hydra.sweep.": Key(B, named=False),
    "hydra.sweeper.n_trials": Key(B, named=False),
    "hydra.sweeper.n_jobs": Key(B, named=False),
    "ckpt_path": Key(B, named=False),  # eval and predict
    "inputs": Key(B, named=False),
    "optuna_trial_id": Key(B, named=False),  # added by the Optuna sweeper
    "data.cache_dir": Key(B, named=False),
    "data.split_csv": Key(B, named=False),
    "data.url": Key(B, named=False),
    # threads, channels_last and compile are settings (not listed): they change the arithmetic
    # (compile fuses kernels: test AUROC 0.806 vs 0.828 with dropout; threads and channels_last
    # change weights in the last bits, which training amplifies), so runs differing in them are
    # two configurations, never one run repeated. Every key below is checked bit for bit by
    # tests/test_bookkeeping.py.
    "checkpoint_every_n_epochs": Key(B),
    "checkpoint_every_n_steps": Key(B),
    "module.": Key(B),  # wires the groups into the LightningModule: restates them
    "logger.": Key(B),
    # callbacks are settings (an EMA of the weights, the checkpoint's metric, the divergence
    # guard, the time budget) but for those that write, show or resume
    "callbacks.model_checkpoint._target_": Key(B),  # a subclass that only names the files
    "callbacks.model_checkpoint.dirpath": Key(B),
    "callbacks.model_checkpoint.filename": Key(B),
    "callbacks.model_checkpoint.save_last": Key(B),
    "callbacks.model_checkpoint.auto_insert_metric_name": Key(B),
    "callbacks.last_checkpoint.": Key(B),
    "callbacks.resume_checkpoint.": Key(B),
    "callbacks.progress_bar.": Key(B),
    "callbacks.sample_grid.": Key(B),
    "callbacks.dashboard_layout.": Key(B),
    "callbacks.test_report.": Key(B),
    "callbacks.epoch_budgets.": Key(B),  # restates budgets and epochs_scale
    "callbacks.time_budget.duration": Key(B),  # restates trainer.max_time
    "data.batch_size": Key(B),  # = batch_size
    "data.seed": Key(B),  # = seed
    "optimizer.lr": Key(B),  # = lr
    "data.eval_batch_size": Key(B),  # the same metrics at any size (tests/test_train_cli.py)
    "data.cache": Key(B),
    "data.num_workers": Key(B),  # changes nothing (tests/test_resume.py)
    "data.download": Key(B),
    "trainer._target_": Key(B),
    "trainer.default_root_dir": Key(B),
    "trainer.enable_model_summary": Key(B),
    "trainer.enable_progress_bar": Key(B),
    "trainer.log_every_n_steps": Key(B),
    "trainer.num_sanity_val_steps": Key(B),
    "trainer.benchmark": Key(B),
    "trainer.deterministic": Key(B),
    "trainer.plugins": Key(B),  # checkpoint IO (runtime.checkpointing.AtomicCheckpointIO)
}
del A, R, S, W, B
CONF = Path(__file__).resolve().parents[1] / "conf"
GROUPS = frozenset(p.name for p in CONF.iterdir() if p.is_dir())  # data, model, loss, ...


# --- derived, when asked (so that a key added to SCHEMA counts everywhere at once) -----------
def axis_names() -> tuple[str, ...]:
    """The named hyperparameters, in table order."""
    return tuple(k for k, v in SCHEMA.items() if v.record is not None)


def repeat_keys() -> tuple[str, ...]:
    """The config paths that repeat a configuration (``seed``, ``data.fold``)."""
    return tuple(v.at(k) for k, v in SCHEMA.items() if v.role == Role.REPEAT)


def key_of(path: str) -> Key:
    """The schema's entry for a config path or override key (``hydra/launcher`` is
    ``hydra.launcher``): listed exactly, else under the longest listed prefix, else a setting."""
    return _key_of(path.lstrip("+~").replace("/", "."), len(SCHEMA))


@functools.lru_cache(maxsize=4096)
def _key_of(path: str, _entries: int) -> Key:
    # cached per path and per number of SCHEMA entries: an entry added to it counts at once
    by_path = {v.at(k): v for k, v in SCHEMA.items()}
    if path in by_path:
        return by_path[path]
    prefixes = [p for p in by_path if p.endswith(".") and (path + ".").startswith(p)]
    return by_path[max(prefixes, key=len)] if prefixes else Key(Role.SETTING)


def restated() -> dict[str, tuple[str, ...]]:
    """Settings that restate a named axis under another name (``image_size`` is
    ``data.image_size``; ``trainer.max_epochs`` follows ``epochs``): no column of their own."""
    out: dict[str, tuple[str, ...]] = {}
    for key, entry in SCHEMA.items():
        if entry.record is not None and entry.at(key) != key and not entry.choice:
            out[key] = (*out.get(key, ()), entry.at(key))
        for followed in entry.follows:
            out[followed] = (*out.get(followed, ()), key, entry.at(key))
    return out


def _override_key(override: str) -> str:
    return override.split("=", 1)[0]


def named_overrides(overrides: Iterable[str]) -> list[str]:
    """The overrides that name a run: those of named keys, sorted, without ``+``/``~``."""
    return sorted(o.lstrip("+~") for o in overrides if key_of(_override_key(o)).named)


def sweep_overrides(overrides: Iterable[str]) -> list[str]:
    """The overrides that say which jobs a sweep runs: all but bookkeeping."""
    return sorted(o for o in overrides if key_of(_override_key(o)).role != Role.BOOKKEEPING)


def hyperparameters(cfg: DictConfig, choices: dict[str, Any]) -> dict[str, Any]:
    """The named hyperparameters of a run (:func:`axis_names`): what metrics.json's ``config``, the
    HParams table and the report's columns call them. ``choices`` are Hydra's config-group
    choices (``loss=ce_matched`` is named ``ce_matched``, not by its class)."""
    values = {}
    for name in axis_names():
        entry = SCHEMA[name]
        if entry.choice:
            value = choices.get(entry.at(name))
        else:
            value = OmegaConf.select(cfg, entry.at(name), default=None)
        value = entry.default if value is None else value
        values[name] = None if value is None else entry.record(value)
    return values


def run_configuration(cfg: DictConfig) -> dict[str, Any]:
    """Every resolved setting that defines what a run computes, as flat ``group.key`` items:
    every key of the config but bookkeeping and a sweep's own; a config group's keys one by
    one, a top-level value (``threshold``, ``budgets``) whole.

    Two runs with equal configurations are repetitions (they differ in :func:`repeat_keys` at
    most); the sweep's aggregate and the report group runs on this, never on the command that
    started them.
    """
    flat: dict[str, Any] = {}

    def walk(path: str, node: Any) -> None:
        if key_of(path).role in (Role.BOOKKEEPING, Role.SWEEP) or path.endswith("._partial_"):
            return
        if isinstance(node, dict) and node:
            for key, value in node.items():
                walk(f"{path}.{key}", value)
        else:
            flat[path] = str(node) if isinstance(node, (list, dict)) else node

    for key, node in OmegaConf.to_container(cfg, resolve=True).items():
        if key in GROUPS:
            walk(str(key), node)
        elif key_of(str(key)).role not in (Role.BOOKKEEPING, Role.SWEEP):
            flat[str(key)] = str(node) if isinstance(node, (list, dict)) else node  # whole
    return flat


def in_configuration(key: str) -> bool:
    """Whether a key of a record's configuration still counts (a record may predate the
    listing of a key as bookkeeping)."""
    return key_of(key).role not in (Role.BOOKKEEPING, Role.SWEEP)


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
