"""Config-level helpers: OmegaConf resolvers used by ``conf/`` and the checks of user values.

The checks run before anything heavy, so a typo such as ``lr=-1`` costs a second, not a run,
and says in one sentence which key is wrong and what it accepts.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import math
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
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


# known noise: Lightning's hints about loader workers (the data is in memory), an idle GPU,
# srun on the PATH of a machine not running under SLURM, a pytree deprecation in Lightning
_QUIET_WARNINGS = (
    r".*does not have many workers.*",
    r".*GPU available but not used.*",
    r".*`isinstance\(treespec, LeafSpec\)`.*",
    r".*The `srun` command is available on your system but is not used.*",
)


@functools.cache
def setup_process() -> None:
    """What the entry points (train, eval, predict) install once, before Hydra composes the
    config: the ``xray_loss.*`` resolvers, the allocator thresholds (xray_loss.allocator) and
    filters for known noise. Importing a module installs nothing."""
    from xray_loss.allocator import retain_freed_memory

    register_resolvers()
    retain_freed_memory()
    for pattern in _QUIET_WARNINGS:
        warnings.filterwarnings("ignore", message=pattern)
    # Lightning's adverts for cloud services
    logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(
        lambda record: "Tip:" not in record.getMessage()
    )


def register_resolvers() -> None:
    """Register the ``xray_loss.*`` resolvers (idempotent)."""
    from xray_loss.slurm import slurm_gpus

    resolvers: dict[str, Callable[..., Any]] = {
        "xray_loss.dirname": lambda overrides, prefix="", fallback="": run_dirname(
            list(overrides), prefix, fallback
        ),
        "xray_loss.scale_epochs": scale_epochs,
        "xray_loss.slurm_gpus": slurm_gpus,
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
    "data.eval_batch_size": (_int_at_least(1), "an integer >= 1, or null for batch_size"),
    "checkpoint_every_n_epochs": (_int_at_least(1), "an integer >= 1"),
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


def check_threshold(value: Any, key: str = "threshold") -> dict[str, Any]:
    """A decision threshold ``{rule, source}`` (or a bare rule, source ``carveout``), checked:
    see xray_loss.threshold for the rules and sources; anything else is one clear error."""
    from xray_loss.threshold import SOURCES, RuleError, parse_rule

    if OmegaConf.is_config(value):
        value = OmegaConf.to_container(value, resolve=True)
    spec = dict(value) if isinstance(value, dict) else {"rule": value}
    spec.setdefault("source", "carveout")
    try:
        parse_rule(spec.get("rule"))
    except RuleError as err:
        raise ConfigError(f"Invalid value {key}.rule={spec.get('rule')!r}: {err}") from None
    source = str(spec["source"])
    if source not in SOURCES and not Path(source).expanduser().is_dir():
        raise ConfigError(
            f"Invalid value {key}.source={source!r}: use carveout (the validation carve-out), "
            f"folder (the layout's val/), auto (folder when present) or the path of a labeled "
            f"folder holding NORMAL/ and PNEUMONIA/; {source} is not a folder."
        )
    return spec


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
