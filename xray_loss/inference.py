"""A trained model from its checkpoint, as eval and predict use it: rebuilt without pickled
code, with the run's config, and at the operating point that applies (the checkpoint's own, or
one ``python -m xray_loss.eval recalibrate=...`` wrote beside it)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from xray_loss.config import ConfigError
from xray_loss.module import XrayClassifier
from xray_loss.threshold import describe, read_sidecar, sidecar_path

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
