"""Config-level helpers: the OmegaConf resolvers ``conf/`` uses, run directory names, process
setup, and ``ConfigError`` (the checks of user values are in ``xray_loss.checks``)."""

from __future__ import annotations

import functools
import hashlib
import logging
import warnings
from collections.abc import Callable, Sequence
from typing import Any

from omegaconf import OmegaConf

from xray_loss.errors import UserError
from xray_loss.identity import named_overrides

_MAX_NAME = 120


class ConfigError(UserError):
    """An invalid config value; the message names the key and the allowed values."""


def run_dirname(overrides: Sequence[str], prefix: str = "", fallback: str = "") -> str:
    """A run directory name from the command-line overrides, e.g. ``loss=ce,lr=0.001``.

    Keys that name no run (``identity.named_overrides``: paths, presets, ``resume``) are left
    out; path separators are replaced and very long names are shortened with a hash, so every
    name is one valid directory.
    """
    name = ",".join(named_overrides(overrides)).replace("/", "_").replace(" ", "")
    if len(name) > _MAX_NAME:
        digest = hashlib.sha1(name.encode()).hexdigest()[:8]
        name = f"{name[: _MAX_NAME - 9]}~{digest}"
    return f"{prefix}{name}" if name else fallback


def job_dirname(overrides: list[str], held: list[str], fallback: str) -> str:
    """A sweep job's directory (and TensorBoard run) name: its overrides without the ``held``
    keys, those that take one value in the whole sweep (``hydra.job.config.override_dirname.
    exclude_keys``, set by ``SweepBookkeeping``), e.g. ``loss=ce,lr=0.001,seed=1``."""
    held = set(held or ())
    kept = [o for o in overrides if o.split("=", 1)[0].lstrip("+~") not in held]
    return run_dirname(kept, "", fallback)


def quote_overrides(argv: list[str], keys: Sequence[str] = ()) -> list[str]:
    """Quote values for Hydra's override parser.

    Run directories are named after their overrides (``.../loss=ce,lr=0.001/...``), and a path
    holding ``=`` or ``,`` is a parse error as a bare override value. Paths given for ``keys``
    (e.g. ``ckpt_path``) are wrapped in single quotes, so a path copied from a run works as is.
    So is any value with a non-ASCII character (``name=résumé``, a path in another script),
    which Hydra's lexer refuses bare, unless a comma makes it a sweep's list.
    """
    out = []
    for arg in argv:
        key, sep, value = arg.partition("=")
        unicode = not value.isascii() and "," not in value
        if sep and (key in keys or unicode) and value and value[0] not in "'\"":
            value = "'" + value.replace("'", "\\'") + "'"
        out.append(f"{key}{sep}{value}" if sep else arg)
    return out


def spell_out_threshold(argv: list[str]) -> list[str]:
    """``threshold=youden`` is short for ``threshold.rule=youden`` (README); spelled out when
    a ``threshold.<key>=`` override sits beside it, which Hydra could not apply to the short
    form's string ("Could not override 'threshold.source'")."""
    if not any(arg.lstrip("+~").startswith("threshold.") for arg in argv):
        return argv
    return [
        f"threshold.rule={arg[len('threshold=') :]}"
        if arg.startswith("threshold=") and not arg[len("threshold=") :].startswith("{")
        else arg
        for arg in argv
    ]


def scale_epochs(epochs: int, scale: float) -> int:
    """Epochs actually trained: ``epochs * epochs_scale``, at least 1 (for debug sweeps)."""
    return max(1, round(int(epochs) * float(scale)))


# known noise, each checked benign: Lightning's hints about loader workers (the data is in
# memory), an idle GPU, metrics logged in eval (which has no logger), srun on the PATH of a
# machine not running under SLURM, a pytree deprecation in Lightning; and, at every run's
# validate/test of ckpt_path="best", that the trainer has several ModelCheckpoint callbacks:
# last.ckpt's (runtime.checkpointing.LastCheckpoint) is one too, and the best checkpoint
# Lightning then takes, the first one's, is conf/callbacks/default.yaml's model_checkpoint
# (tests/test_run_output.py checks it is the one metrics.json records)
_QUIET_INFO = ("Tip:", "Ignoring `Trainer(max_time=...)`, callbacks list already contains a Timer")
_QUIET_WARNINGS = (
    r".*does not have many workers.*",
    r".*GPU available but not used.*",
    r".*`isinstance\(treespec, LeafSpec\)`.*",
    r".*The `srun` command is available on your system but is not used.*",
    r".*but have no logger configured\..*",
    r'`\.(validate|test)\(ckpt_path="best"\)` is called with Trainer configured with multiple '
    r"`ModelCheckpoint` callbacks\. It will use the best checkpoint path from first checkpoint "
    r"callback\.",
)


@functools.cache
def setup_process() -> None:
    """What the entry points (train, eval, predict) install once, before Hydra composes the
    config: the ``xray_loss.*`` resolvers and filters for known noise. Importing a module
    installs nothing. (The CPU allocator setting is environment: the Makefile's GLIBC_TUNABLES.)"""
    register_resolvers()
    for pattern in _QUIET_WARNINGS:
        warnings.filterwarnings("ignore", message=pattern)
    # Lightning's adverts for cloud services, and its note that the Timer in the callbacks
    # wins over Trainer(max_time): that Timer is budget.TimeBudget, which takes max_time itself
    # and says so on the next line
    logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(
        lambda record: not any(noise in record.getMessage() for noise in _QUIET_INFO)
    )


def register_resolvers() -> None:
    """Register the ``xray_loss.*`` resolvers (idempotent)."""
    from xray_loss.runtime.slurm import slurm_gpus

    resolvers: dict[str, Callable[..., Any]] = {
        "xray_loss.dirname": lambda overrides, prefix="", fallback="": run_dirname(
            list(overrides), prefix, fallback
        ),
        # a sweep job's name: its overrides less those the whole sweep holds (SweepBookkeeping)
        "xray_loss.jobname": lambda overrides, held, fallback: job_dirname(
            list(overrides), list(held), fallback
        ),
        "xray_loss.scale_epochs": scale_epochs,
        "xray_loss.slurm_gpus": slurm_gpus,
    }
    for name, fn in resolvers.items():
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, fn)
