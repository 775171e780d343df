"""The checks of user values, run before anything heavy: a typo such as ``lr=-1`` costs a
second, not a run, and says in one sentence which key is wrong and what it accepts.
"""

from __future__ import annotations

import inspect
import math
import re
from collections.abc import Callable, Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

from hydra.utils import get_object
from omegaconf import DictConfig, OmegaConf

from xray_loss.config import ConfigError
from xray_loss.identity import CONF

# top-level keys set outside conf/ (the Optuna sweeper adds its trial's id)
_ADDED_BY_TOOLS = ("optuna_trial_id",)
# config groups instantiated with their keys as arguments: each key must be one it accepts
_INSTANTIATED = ("data", "loss", "optimizer", "scheduler", "model.backbone")


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


def _weights(test: Callable[[Any], bool]) -> Callable[[Any], bool]:
    """A class weighting: null (none), auto (from the class counts) or what ``test`` takes."""
    return lambda value: value is None or value == "auto" or test(value)


def _two_positive(value) -> bool:  # [w_normal, w_pneumonia]: a list or OmegaConf's ListConfig
    pair = list(value) if isinstance(value, Sequence) and not isinstance(value, str) else []
    return len(pair) == 2 and all(map(_positive, pair))


def _at_least(low: float):
    return lambda value: _number(value) is not None and _number(value) >= low


def _one_of(*choices: Any):
    # `is` for the booleans: 1 == True, and resume=1 is not resume=true
    return lambda value: any(value is c if isinstance(c, bool) else value == c for c in choices)


_BOOL = (_one_of(True, False), "true or false")


def _duration(value: Any) -> bool:
    """What Lightning's Timer takes, and more than no time: ``DD:HH:MM:SS`` or a timedelta
    mapping such as ``{minutes: 14}``."""
    if isinstance(value, str) and re.fullmatch(r"\d+:\d+:\d+:\d+", value.strip()):
        days, hours, minutes, seconds = (int(part) for part in value.split(":"))
        return (
            timedelta(days=days, hours=hours, minutes=minutes, seconds=seconds).total_seconds() > 0
        )
    if OmegaConf.is_dict(value) or isinstance(value, dict):
        try:
            return timedelta(**{k: float(v) for k, v in dict(value).items()}).total_seconds() > 0
        except (TypeError, ValueError):
            return False
    return value is None


def _widths(value: Any) -> bool:
    return (
        (OmegaConf.is_list(value) or isinstance(value, list))
        and len(value) > 0
        and all(_int(w) is not None and _int(w) >= 1 for w in value)
    )


def _gpu_there(cuda_only: bool):
    """gpu (or cuda) only where the machine has one: Lightning's "No supported gpu backend
    found!" (train) and a silent CPU run (predict) say less."""

    def ok(value: Any) -> bool:
        import torch

        if str(value) not in ("gpu", "cuda"):
            return True
        mps = not cuda_only and value == "gpu" and torch.backends.mps.is_available()
        return torch.cuda.is_available() or mps

    return ok


_NO_GPU = "cpu or auto on this machine, which has no GPU (trainer=cpu runs on the CPU)"

# key -> (test, allowed values in words). Keys absent from the config are skipped; one table
# for the settings of train, predict (batch_size, accelerator, cam) and the sweeps.
_RULES: dict[str, tuple[Callable[[Any], bool], str]] = {
    "lr": (_positive, "a number > 0, e.g. 1e-3"),
    "epochs": (_int_at_least(1), "an integer >= 1"),
    "batch_size": (_int_at_least(1), "an integer >= 1"),
    "seed": (
        lambda v: _int(v) is not None and 0 <= _int(v) < 2**32,
        "an integer >= 0 and < 2**32 = 4294967296 (numpy's seed range)",
    ),
    "epochs_scale": (_positive, "a number > 0"),
    "seeds": (_int_at_least(1), "an integer >= 1"),
    "resume": _BOOL,
    "compile": _BOOL,
    "cam": _BOOL,
    "channels_last": (_one_of("auto", True, False), "auto, true or false"),
    "accelerator": (
        lambda v: _one_of("auto", "cpu", "gpu")(v) and _gpu_there(cuda_only=True)(v),
        "auto, cpu or gpu, and gpu only on a machine with a CUDA GPU",
    ),
    "trainer.accelerator": (_gpu_there(cuda_only=False), _NO_GPU),
    "trainer.max_time": (
        _duration,
        "null, a duration DD:HH:MM:SS longer than zero (e.g. 00:00:14:00 for 14 minutes) or a "
        "mapping such as {minutes: 14}",
    ),
    "logger": (
        lambda v: OmegaConf.is_dict(v) and len(v) > 0,
        "one logger or more of conf/logger (e.g. logger=tensorboard or logger=[tensorboard,csv])",
    ),
    "optimizer.weight_decay": (_at_least(0), "a number >= 0"),
    "optimizer.momentum": (_fraction_half_open, "a number in [0, 1), e.g. 0.9"),
    "model.backbone.widths": (_widths, "a non-empty list of integers >= 1, e.g. [16,32,64,128]"),
    "data.n_train": (_int_at_least(2), "an integer >= 2"),
    "data.n_val": (_int_at_least(2), "an integer >= 2"),
    "data.n_test": (_int_at_least(2), "an integer >= 2"),
    "data.image_size": (_int_at_least(16), "an integer >= 16 (pixels)"),
    "data.num_workers": (_int_at_least(0), "an integer >= 0"),
    "data.eval_batch_size": (_int_at_least(1), "an integer >= 1, or null for batch_size"),
    "data.on_device": (_one_of("auto", True, False), "auto, true or false"),
    "data.augment.enabled": _BOOL,
    "data.augment.hflip": _BOOL,
    "data.augment.rotation": (_at_least(0), "a number of degrees >= 0, e.g. 10"),
    "data.augment.crop_scale": (
        lambda v: _number(v) is not None and 0 < _number(v) <= 1,
        "a number in (0, 1], e.g. 0.85",
    ),
    "data.augment.brightness": (_at_least(0), "a number >= 0, e.g. 0.15"),
    "data.augment.contrast": (_at_least(0), "a number >= 0, e.g. 0.15"),
    "checkpoint_every_n_epochs": (_int_at_least(1), "an integer >= 1"),
    "checkpoint_every_n_steps": (_int_at_least(0), "an integer >= 0 (0: at epoch ends only)"),
    "data.pneumonia_fraction": (_fraction_open, "a number strictly between 0 and 1"),
    "data.difficulty": (_positive, "a number > 0"),
    "data.val_fraction": (_fraction_open, "a number strictly between 0 and 1"),
    "data.test_fraction": (_fraction_half_open, "a number in [0, 1)"),
    # a class weighted 0 or below is trained against (pos_weight=-1: a negative loss)
    "loss.pos_weight": (_weights(_positive), "null, auto or a number > 0 (1 is unweighted)"),
    "loss.class_weights": (_weights(_two_positive), "null, auto or two numbers > 0"),
    "loss.alpha": (_weights(_fraction_open), "null, auto or a number strictly between 0 and 1"),
    "loss.gamma": (_at_least(0), "a number >= 0"),
    "loss.label_smoothing": (_fraction_half_open, "a number in [0, 1)"),
    "threads": (lambda v: v == "auto" or _int_at_least(1)(v), "auto or an integer >= 1"),
    "name": (
        lambda v: (
            isinstance(v, str)
            and re.fullmatch(r"[A-Za-z0-9_.-]{1,100}", v)
            and v not in (".", "..")
        ),
        "a plain folder name under logs/ of at most 100 ASCII letters, digits, '-', '_' or "
        "'.', not a path",
    ),
}
# present in every config that has them at all: an empty group (logger=[]) drops the key
_REQUIRED = ("logger",)


def check_values(cfg: DictConfig, keys: Sequence[str] = tuple(_RULES)) -> None:
    """Raise ``ConfigError`` on the first invalid value of ``keys``, naming it and its range."""
    for key in keys:
        ok, allowed = _RULES[key]
        absent = OmegaConf.select(cfg, key, default="__absent__") == "__absent__"
        if absent and key not in _REQUIRED:
            continue
        value = OmegaConf.select(cfg, key)
        if key.startswith("data.") and value is None:
            continue
        if not ok(value):
            shown = "[]" if value is None and key in _REQUIRED else repr(value)
            shown = shown if len(shown) <= 60 else f"{shown[:40]}...({len(str(value))} characters)"
            raise ConfigError(f"Invalid value {key}={shown}: {key} must be {allowed}.")


# the values eval and predict take from the command line, checked before a checkpoint is read
ENTRY_VALUES: dict[str, tuple[str, ...]] = {
    "eval": ("batch_size", "accelerator", "seed"),
    "predict": ("batch_size", "accelerator", "cam"),
}


def check_entry(cfg: DictConfig, entry: str) -> None:
    """Raise ``ConfigError`` on the first invalid value an entry point (train, eval, predict)
    reads, before anything is loaded or a folder is made."""
    if entry == "train":
        check_config(cfg)
    else:
        check_values(cfg, ENTRY_VALUES[entry])


def check_config(cfg: DictConfig) -> None:
    """Raise ``ConfigError`` on the first invalid user value, naming key and allowed range."""
    check_values(cfg)
    check_threshold(OmegaConf.select(cfg, "threshold", default=0.5))
    problem = matched_head_problem(cfg)
    if problem:
        raise ConfigError(problem)
    check_keys(cfg)
    budgets = OmegaConf.select(cfg, "budgets", default=None) or []
    if any(_int(b) is None or _int(b) < 1 for b in budgets):
        raise ConfigError(f"Invalid value budgets={list(budgets)}: epochs >= 1 expected.")
    longer = [b for b in budgets if _int(b) > int(cfg.epochs)]
    if longer:
        raise ConfigError(
            f"budgets={list(budgets)} asks for {longer} epochs, but the run trains "
            f"epochs={cfg.epochs}: set epochs={max(_int(b) for b in budgets)} (the longest "
            f"budget) or drop the longer budgets."
        )
    scheduler = OmegaConf.select(cfg, "scheduler", default=None)
    if budgets and scheduler:
        raise ConfigError(
            f"budgets={list(budgets)} stand for shorter runs only at a constant learning rate: "
            f"a scheduler's schedule depends on the run's length; use scheduler=none or "
            f"separate runs (epochs=...)."
        )


def known_top_level_keys() -> set[str]:
    """Every top-level key a config file under conf/ defines: the primary config's, its groups,
    and what the ``_global_`` presets (experiment, debug, hparams_search) set."""
    keys = set(OmegaConf.load(CONF / "train.yaml")) | set(_ADDED_BY_TOOLS)
    for group in CONF.iterdir():
        if group.is_dir():
            keys.add(group.name)
            for preset in group.glob("*.yaml"):
                if "@package _global_" in preset.read_text().split("\n", 1)[0]:
                    keys |= set(OmegaConf.load(preset))
    return keys - {"defaults"}


def _parameters(target: str) -> set[str] | None:
    """The keyword arguments ``target`` accepts, following ``**kwargs`` up the class tree;
    None when it takes any keyword."""
    found: set[str] = set()
    obj = get_object(target)
    for cls in getattr(obj, "__mro__", [obj]):
        init = getattr(cls, "__init__", None) if isinstance(obj, type) else cls
        if init is None or init is object.__init__:
            continue
        params = inspect.signature(init).parameters.values()
        found |= {p.name for p in params if p.kind is not p.VAR_KEYWORD}
        if not any(p.kind is p.VAR_KEYWORD for p in params):
            return found - {"self"}
    return None


def check_keys(cfg: DictConfig) -> None:
    """No key that nothing reads: ``+foo=1`` (unknown top-level key) and ``+data.bogus=1`` (a
    key the data source does not take) are refused as ``foo=1`` is, naming what is valid."""
    unknown = sorted(set(cfg) - known_top_level_keys())
    if unknown:
        shown = ", ".join(k for k in OmegaConf.load(CONF / "train.yaml") if k != "defaults")
        raise ConfigError(
            f"Unknown setting {unknown[0]}: xray_loss reads no top-level key of that name (check "
            f"the spelling; the top-level settings are {shown}, and the config groups data, "
            f"model, loss, ...; `python -m xray_loss.train --cfg job` shows them all)."
        )
    for group in _INSTANTIATED:
        node = OmegaConf.select(cfg, group, default=None)
        if not OmegaConf.is_dict(node) or "_target_" not in node:
            continue
        try:
            accepted = _parameters(str(node._target_))
        except Exception:  # noqa: BLE001 - a target Hydra itself will name when it fails
            continue
        if accepted is None:
            continue
        extra = sorted(k for k in node if not k.startswith("_") and k not in accepted)
        if extra:
            name = str(node._target_).rsplit(".", 1)[-1]
            hint = " (debug=tiny and debug=sweep shrink the phantom data only)" * (group == "data")
            preset = _preset_setting(f"{group}.{extra[0]}", node[extra[0]])
            if preset:  # e.g. model=resnet18 debug=tiny: not a key the user typed
                hint = (
                    f" ({preset} sets it to {node[extra[0]]}: {preset} shrinks the default small "
                    f"CNN and phantom data only, so leave it out with this {group.split('.')[0]})"
                )
            raise ConfigError(
                f"Unknown setting {group}.{extra[0]}: {name} takes no {extra[0]}{hint}; its "
                f"settings are {', '.join(sorted(accepted))}."
            )


def _preset_setting(key: str, value: Any) -> str | None:
    """The preset (``debug=tiny``) whose file sets ``key`` to ``value``: a key the user never
    typed is named as the preset's, not as theirs."""
    for preset in sorted(CONF.glob("*/*.yaml")):
        text = preset.read_text()
        if "@package _global_" in text.split("\n", 1)[0]:
            found = OmegaConf.select(OmegaConf.load(preset), key, default=None)
            if found is not None and found == value:
                return f"{preset.parent.name}={preset.stem}"
    return None


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
