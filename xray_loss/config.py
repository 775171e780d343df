"""Config-level helpers: OmegaConf resolvers used by ``conf/`` and the checks of user values.

The checks run before anything heavy, so a typo such as ``lr=-1`` costs a second, not a run,
and says in one sentence which key is wrong and what it accepts.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Sequence
from typing import Any

from hydra.errors import CompactHydraException
from omegaconf import DictConfig, OmegaConf

# Overrides that do not describe what a run computes: left out of run directory names.
_NAME_EXCLUDED = (
    "resume",
    "experiment",
    "hparams_search",
    "name",
    "paths.",
    "hydra.",
    "data.root",
    "data.cache_dir",
    "debug",
    "seeds=",
    "ckpt_path",
    "inputs",
)
_MAX_NAME = 120


class ConfigError(CompactHydraException):
    """An invalid config value; the message names the key and the allowed values."""


def run_dirname(overrides: Sequence[str], prefix: str = "", fallback: str = "") -> str:
    """A run directory name from the command-line overrides, e.g. ``loss=ce,lr=0.001``.

    Keys that do not change the computation are left out; path separators are replaced and
    very long names are shortened with a hash, so every name is one valid directory.
    """
    kept = sorted(
        o.lstrip("+~") for o in overrides if not o.lstrip("+~").startswith(_NAME_EXCLUDED)
    )
    name = ",".join(kept).replace("/", "_").replace(" ", "")
    if len(name) > _MAX_NAME:
        digest = hashlib.sha1(name.encode()).hexdigest()[:8]
        name = f"{name[: _MAX_NAME - 9]}~{digest}"
    return f"{prefix}{name}" if name else fallback


def quote_path_overrides(argv: list[str], keys: Sequence[str]) -> list[str]:
    """Quote path values for Hydra's override parser.

    Run directories are named after their overrides (``.../loss=ce,lr=0.001/...``), and a path
    holding ``=`` or ``,`` is a parse error as a bare override value. Paths given for ``keys``
    (e.g. ``ckpt_path``) are wrapped in single quotes, so a path copied from a run works as is.
    """
    out = []
    for arg in argv:
        key, sep, value = arg.partition("=")
        if sep and key in keys and value and value[0] not in "'\"":
            value = "'" + value.replace("'", "\\'") + "'"
        out.append(f"{key}{sep}{value}" if sep else arg)
    return out


def scale_epochs(epochs: int, scale: float) -> int:
    """Epochs actually trained: ``epochs * epochs_scale``, at least 1 (for debug sweeps)."""
    return max(1, round(int(epochs) * float(scale)))


def register_resolvers() -> None:
    """Register the ``xray_loss.*`` resolvers (idempotent)."""
    resolvers: dict[str, Callable[..., Any]] = {
        "xray_loss.dirname": lambda overrides, prefix="", fallback="": run_dirname(
            list(overrides), prefix, fallback
        ),
        "xray_loss.scale_epochs": scale_epochs,
    }
    for name, fn in resolvers.items():
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, fn)


# --- value checks --------------------------------------------------------------------------
def _number(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _int(value: Any) -> int | None:
    number = _number(value)
    return int(number) if number is not None and number == int(number) else None


def _positive(value):
    n = _number(value)
    return n is not None and n > 0


def _int_at_least(low: int):
    return lambda value: _int(value) is not None and _int(value) >= low


def _fraction_open(value):
    n = _number(value)
    return n is not None and 0 < n < 1


def _fraction_half_open(value):
    n = _number(value)
    return n is not None and 0 <= n < 1


# key -> (test, allowed values in words). Keys absent from the config are skipped.
_RULES: dict[str, tuple[Callable[[Any], bool], str]] = {
    "lr": (_positive, "a number > 0, e.g. 1e-3"),
    "epochs": (_int_at_least(1), "an integer >= 1"),
    "batch_size": (_int_at_least(1), "an integer >= 1"),
    "seed": (_int_at_least(0), "an integer >= 0"),
    "epochs_scale": (_positive, "a number > 0"),
    "seeds": (_int_at_least(1), "an integer >= 1"),
    "optimizer.weight_decay": (
        lambda v: _number(v) is not None and _number(v) >= 0,
        "a number >= 0",
    ),
    "data.n_train": (_int_at_least(2), "an integer >= 2"),
    "data.n_val": (_int_at_least(2), "an integer >= 2"),
    "data.n_test": (_int_at_least(2), "an integer >= 2"),
    "data.image_size": (_int_at_least(16), "an integer >= 16 (pixels)"),
    "data.num_workers": (_int_at_least(0), "an integer >= 0"),
    "data.pneumonia_fraction": (_fraction_open, "a number strictly between 0 and 1"),
    "data.difficulty": (_positive, "a number > 0"),
    "data.val_fraction": (_fraction_open, "a number strictly between 0 and 1"),
    "data.test_fraction": (_fraction_half_open, "a number in [0, 1)"),
    "loss.label_smoothing": (_fraction_half_open, "a number in [0, 1)"),
}


def check_config(cfg: DictConfig) -> None:
    """Raise ``ConfigError`` on the first invalid user value, naming key and allowed range."""
    for key, (ok, allowed) in _RULES.items():
        if OmegaConf.select(cfg, key, default="__absent__") == "__absent__":
            continue
        value = OmegaConf.select(cfg, key)
        if key.startswith("data.") and value is None:
            continue
        if not ok(value):
            raise ConfigError(f"Invalid value {key}={value!r}: {key} must be {allowed}.")
    check_threshold(OmegaConf.select(cfg, "threshold", default=0.5))
    problem = matched_head_problem(cfg)
    if problem:
        raise ConfigError(problem)
    budgets = OmegaConf.select(cfg, "budgets", default=None) or []
    if any(_int(b) is None or _int(b) < 1 for b in budgets):
        raise ConfigError(f"Invalid value budgets={list(budgets)}: epochs >= 1 expected.")
    scheduler = OmegaConf.select(cfg, "scheduler", default=None)
    if budgets and scheduler:
        raise ConfigError(
            f"budgets={list(budgets)} stand for shorter runs only at a constant learning rate: "
            f"a scheduler's schedule depends on the run's length; use scheduler=none or "
            f"separate runs (epochs=...)."
        )


def check_threshold(value: Any, key: str = "threshold") -> float | str:
    """A decision threshold: a probability in [0, 1], or ``youden``; else one clear error."""
    if value == "youden":
        return "youden"
    number = _number(value)
    if number is None or not 0 <= number <= 1:
        raise ConfigError(
            f"Invalid value {key}={value!r}: {key} must be a probability in [0, 1] or 'youden' "
            f"(chosen on the validation split)."
        )
    return number


# the optimizers and schedulers under which the matched heads are tested to be exact
_MATCHED_OPTIMIZERS = ("SGD", "Adam", "AdamW")
_MATCHED_PRECISIONS = ("32-true", "32", "bf16-mixed")


def matched_head_problem(cfg: DictConfig) -> str | None:
    """Why this run's matched head (``loss=bce_matched``/``ce_matched``) cannot train exactly
    like its twin, in one sentence; None when it can (or the head is not a matched one).

    The twins are exact under SGD (with momentum), Adam and AdamW with the head's weight decay
    divided by its lr scale (``XrayClassifier.configure_optimizers``), with or without a cosine
    schedule to zero, value clipping, dropout, bf16-mixed and DDP (tests/test_matched_heads.py).
    What no rescaling can make exact is refused here.
    """
    match = OmegaConf.select(cfg, "loss.match", default=None)
    if not match:
        return None
    name = "loss=bce_matched" if match == "ce" else "loss=ce_matched"
    twin = "loss=ce" if match == "ce" else "loss=bce"
    optimizer = OmegaConf.select(cfg, "optimizer", default=None) or {}
    kind = str(optimizer.get("_target_", "")).rsplit(".", 1)[-1]
    decay = _number(optimizer.get("weight_decay", 0.0) or 0.0) or 0.0
    if kind not in _MATCHED_OPTIMIZERS:
        return (
            f"{name} trains exactly like {twin} only with optimizer=sgd, adam or adamw, not {kind}."
        )
    if (
        match == "ce"
        and kind == "Adam"
        and decay > 0
        and not optimizer.get("decoupled_weight_decay")
    ):
        return (
            f"{name} cannot follow {twin} exactly under Adam with coupled L2 weight decay "
            f"(optimizer.weight_decay={decay:g}): use optimizer=adamw or optimizer.weight_decay=0."
        )
    clip = OmegaConf.select(cfg, "trainer.gradient_clip_val", default=None)
    algorithm = OmegaConf.select(cfg, "trainer.gradient_clip_algorithm", default=None) or "norm"
    if clip and algorithm == "norm":
        return (
            f"{name} cannot follow {twin} exactly with norm clipping "
            f"(trainer.gradient_clip_val={clip}): CE's head adds twice the squared gradient to "
            f"the global norm; use trainer.gradient_clip_algorithm=value or no clipping."
        )
    scheduler = OmegaConf.select(cfg, "scheduler", default=None) or {}
    sched = str(scheduler.get("_target_", "")).rsplit(".", 1)[-1]
    if sched and (sched != "CosineAnnealingLR" or (_number(scheduler.get("eta_min", 0)) or 0)):
        return (
            f"{name} keeps its head lr at {'2x' if match == 'ce' else '1/2x'} the backbone's only "
            f"under scheduler=none or a cosine schedule to zero (scheduler.eta_min=0), "
            f"not {sched} with these settings."
        )
    precision = str(OmegaConf.select(cfg, "trainer.precision", default="32-true"))
    if precision not in _MATCHED_PRECISIONS:
        return f"{name} is tested exact at precision 32-true and bf16-mixed, not {precision}."
    loss = OmegaConf.select(cfg, "loss")
    options = {
        "ce": {"pos_weight": loss.get("pos_weight")},
        "bce": {
            "class_weights": loss.get("class_weights"),
            "label_smoothing": (_number(loss.get("label_smoothing", 0)) or 0) or None,
        },
    }[match]
    for option, value in options.items():
        if value is not None:
            return (
                f"{name} takes no loss.{option} (got {value}): it has no exact counterpart on "
                f"{twin}'s head; compare unweighted heads or the plain heads instead."
            )
    return None


# settings that change how a run is run or logged, not what it computes
_BOOKKEEPING = (
    "data.batch_size",  # = batch_size
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
        elif not prefix.endswith("._partial_") and prefix not in _BOOKKEEPING:
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


def hydra_choice_summary(choices: dict[str, Any]) -> dict[str, str]:
    """The config-group choices worth logging (loss, model, data, optimizer, ...)."""
    keys = ("loss", "model", "data", "optimizer", "scheduler", "trainer", "experiment")
    return {k: str(choices.get(k)) for k in keys if choices.get(k) is not None}
