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
    threshold = OmegaConf.select(cfg, "threshold", default=0.5)
    if threshold != "youden" and not (
        _number(threshold) is not None and 0 <= _number(threshold) <= 1
    ):
        raise ConfigError(
            f"Invalid value threshold={threshold!r}: threshold must be a probability in "
            f"[0, 1] or 'youden' (chosen on the validation split)."
        )
    budgets = OmegaConf.select(cfg, "budgets", default=None) or []
    if any(_int(b) is None or _int(b) < 1 for b in budgets):
        raise ConfigError(f"Invalid value budgets={list(budgets)}: epochs >= 1 expected.")


def hydra_choice_summary(choices: dict[str, Any]) -> dict[str, str]:
    """The config-group choices worth logging (loss, model, data, optimizer, ...)."""
    keys = ("loss", "model", "data", "optimizer", "scheduler", "trainer", "experiment")
    return {k: str(choices.get(k)) for k in keys if choices.get(k) is not None}
