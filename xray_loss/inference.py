"""A trained model from its checkpoint, as eval and predict use it: rebuilt without pickled
code, with the run's config, and at the operating point that applies (the checkpoint's own, or
one ``python -m xray_loss.eval recalibrate=...`` wrote beside it for these very weights)."""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from xray_loss.config import ConfigError
from xray_loss.module import XrayClassifier
from xray_loss.threshold import describe, parse_rule, probability, sidecar_path

log = logging.getLogger(__name__)


class CheckpointError(ConfigError):
    """A checkpoint that cannot be loaded as an xray_loss model; the message says why."""


def load_classifier(path: str | Path, map_location: str = "cpu") -> XrayClassifier:
    """Rebuild a trained model from its checkpoint alone (``weights_only``: no pickled code)."""
    path = Path(path).expanduser()
    if not path.is_file():
        found = "is a directory" if path.is_dir() else "does not exist"
        raise CheckpointError(
            f"ckpt_path={path} {found}. Give a checkpoint file written by "
            f"`python -m xray_loss.train`: <run dir>/checkpoints/best-epochNNN.ckpt or last.ckpt."
        )
    try:
        model = XrayClassifier.load_from_checkpoint(
            path, map_location=map_location, weights_only=True
        )
    except Exception as err:  # corrupt file, foreign checkpoint, other architecture
        reason = str(err).strip().splitlines()[0][:300] if str(err).strip() else ""
        if "weights_only" in str(err) or "pickle" in str(err).lower():  # torch's unsafe advice
            reason = "it holds pickled objects, which are never loaded"
        raise CheckpointError(
            f"Could not load {path} as an xray_loss checkpoint ({type(err).__name__}: {reason}). "
            f"Expected an intact checkpoint written by `python -m xray_loss.train` (best-*.ckpt "
            f"or last.ckpt of a run); a truncated copy or another project's file cannot be used."
        ) from None
    model.eval()
    return model


def run_config(model: XrayClassifier) -> dict[str, Any]:
    """The resolved config of the run that trained ``model`` (empty if unknown)."""
    return dict(model.hparams.get("run_config") or {})


def operating_point(model: XrayClassifier, ckpt_path: str | Path) -> tuple[dict[str, Any], str]:
    """The operating point that applies to ``model`` (set as its threshold) and where it came
    from: a recalibrated sidecar beside the checkpoint first (refused if it was chosen for other
    weights), else the checkpoint's own."""
    point = read_sidecar(ckpt_path, model.state_dict())
    if point is not None:
        model.threshold.fill_(float(point["value"]))
        origin = f"recalibrated, {sidecar_path(ckpt_path).name}: {describe(point)}"
    else:
        point = {**model.operating_point, "value": float(model.threshold)}
        origin = f"the checkpoint's: {describe(point)}"
    log.info("threshold %s", origin)
    return point, origin


# state-dict entries that are no weights: the decision threshold an operating point sets
# (XrayClassifier.threshold), so a model's digest is the same before and after one applies
NOT_WEIGHTS = ("threshold",)
WEIGHTS = "weights_sha256"  # the sidecar's key for the digest of the weights it was chosen for


def weights_digest(state_dict: Mapping[str, torch.Tensor]) -> str:
    """The SHA-256 of a model's weights: each tensor's name, dtype, shape and bytes, in key
    order. A recalibrated operating point records it, and is refused for any other weights:
    a threshold is chosen for the scores of the weights it was chosen on."""
    digest = hashlib.sha256()
    for key in sorted(k for k in state_dict if k not in NOT_WEIGHTS):
        tensor = state_dict[key].detach().to("cpu").contiguous()
        digest.update(f"{key}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def bound(
    point: dict[str, Any], ckpt_path: str | Path, state_dict: Mapping[str, torch.Tensor]
) -> dict[str, Any]:
    """What a sidecar holds: the operating point, the checkpoint it was chosen for and the
    digest of that checkpoint's weights, which :func:`read_sidecar` checks."""
    return {
        **point,
        "checkpoint": str(Path(ckpt_path).resolve()),
        WEIGHTS: weights_digest(state_dict),
    }


def read_sidecar(
    ckpt_path: str | Path, state_dict: Mapping[str, torch.Tensor]
) -> dict[str, Any] | None:
    """The recalibrated operating point beside a checkpoint (None if there is none), for the
    model whose ``state_dict`` it is to be applied to. Its threshold is checked as one on the
    command line is (``threshold.probability``); a damaged or impossible file, or one chosen for
    other weights than these (:func:`weights_digest`), is refused, named."""
    path = sidecar_path(ckpt_path)
    if not path.exists():
        return None
    fix = (
        f"Write it again with `python -m xray_loss.eval ckpt_path={ckpt_path} "
        f"recalibrate=<labeled folder>`, or delete it to use the checkpoint's own threshold."
    )
    try:
        point = json.loads(path.read_text())
        raw = point["value"]
        parse_rule(point.get("rule", raw))
    except (OSError, ValueError, KeyError, TypeError) as err:
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise ConfigError(f"The operating point {path} cannot be read ({reason}). {fix}") from None
    value = probability(raw)
    if value is None:
        raise ConfigError(
            f"The operating point {path} holds threshold {raw!r}, which is not a probability in "
            f"[0, 1]. {fix}"
        )
    chosen_for, weights = point.get(WEIGHTS), weights_digest(state_dict)
    if chosen_for is None:
        raise ConfigError(
            f"The operating point {path} does not name the weights it was chosen for (an older "
            f"xray_loss wrote it), so it cannot be checked against those of {ckpt_path} "
            f"(weights {weights[:12]}). {fix}"
        )
    if chosen_for != weights:
        raise ConfigError(
            f"The operating point {path} was chosen for the weights {str(chosen_for)[:12]} of "
            f"{point.get('checkpoint', 'another checkpoint')}, but {ckpt_path} now holds the "
            f"weights {weights[:12]}: the checkpoint was overwritten since (resume=true "
            f"rewrites last.ckpt) or the file was copied beside another checkpoint, and a "
            f"threshold chosen for other weights does not apply. {fix}"
        )
    return {**point, "value": value}
