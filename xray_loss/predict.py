"""Predict P(pneumonia) for new images with a trained checkpoint.

    python -m xray_loss.predict ckpt_path=<run>/checkpoints/best-epoch011.ckpt inputs=scans/
    python -m xray_loss.predict ckpt_path=... inputs=scan.jpeg threshold=youden cam=true

Images are read and resized exactly as in training (grey, the checkpoint's image size and resize
mode). Writes ``predictions.csv`` (file, prob_pneumonia, label, threshold) to
logs/predict/runs/<time>_<overrides>, and with ``cam=true`` a Grad-CAM overlay per image in
``cam/``. A file that is not a readable image is named in a warning and skipped.
"""

from __future__ import annotations

import csv
import logging
import sys
from pathlib import Path
from typing import Any

import hydra
import matplotlib
import torch
from omegaconf import DictConfig

from xray_loss.config import (
    ConfigError,
    check_threshold,
    quote_path_overrides,
    register_resolvers,
)
from xray_loss.data.images import ImageDecodeError, decode
from xray_loss.gradcam import grad_cam
from xray_loss.metrics import decide
from xray_loss.module import load_classifier, run_config

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

log = logging.getLogger("xray_loss.predict")
register_resolvers()


def list_inputs(inputs: str) -> list[Path]:
    """The file, or every non-hidden file under the folder (non-images are reported later)."""
    path = Path(inputs).expanduser()
    if path.is_file():
        return [path]
    if path.is_dir():
        files = [
            p
            for p in sorted(path.rglob("*"))
            if p.is_file() and not any(part.startswith(".") for part in p.relative_to(path).parts)
        ]
        if files:
            return files
        raise ConfigError(f"inputs={path} is an empty folder: put the images to classify there.")
    raise ConfigError(f"inputs={path} does not exist: give an image file or a folder of images.")


def choose_threshold(option: Any, model) -> float:
    """``youden``: the threshold chosen on validation and stored with the checkpoint."""
    rule = check_threshold(option)
    return float(model.youden_threshold) if rule == "youden" else float(rule)


def save_cam(image: torch.Tensor, cam: torch.Tensor, prob: float, path: Path) -> None:
    fig, ax = plt.subplots(figsize=(4, 4), dpi=100)
    ax.imshow(image[0].numpy(), cmap="gray")
    ax.imshow(cam.numpy(), cmap="jet", alpha=0.35)
    ax.set_title(f"P(pneumonia) = {prob:.3f}", fontsize=10)
    ax.axis("off")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


def predict(cfg: DictConfig) -> list[dict[str, Any]]:
    out = Path(cfg.paths.output_dir)
    model = load_classifier(cfg.ckpt_path)
    threshold = choose_threshold(cfg.threshold, model)
    data = run_config(model).get("data", {})
    size, resize = int(data.get("image_size", 224)), data.get("resize", "squash")
    use_gpu = cfg.accelerator in ("auto", "gpu") and torch.cuda.is_available()
    device = torch.device("cuda" if use_gpu else "cpu")
    model.to(device)
    files = list_inputs(cfg.inputs)
    images, names, skipped = [], [], []
    for path in files:
        try:
            images.append(decode(path, size, resize))
            names.append(path)
        except (ImageDecodeError, OSError) as err:
            skipped.append(path)
            log.warning("skipped %s: not a readable image (%s)", path, err)
    rows: list[dict[str, Any]] = []
    for start in range(0, len(images), int(cfg.batch_size)):
        batch = torch.stack(images[start : start + int(cfg.batch_size)]).to(device)
        with torch.no_grad():
            probs = model.predict_proba(batch).cpu()
        positive = decide(probs, threshold).tolist()
        cams = grad_cam(model, batch).cpu() if cfg.cam else None
        for i, prob in enumerate(probs.tolist()):
            path = names[start + i]
            rows.append(
                {
                    "file": str(path),
                    "prob_pneumonia": f"{prob:.8f}",
                    "label": "PNEUMONIA" if positive[i] else "NORMAL",
                    "threshold": f"{threshold:.6f}",
                }
            )
            if cams is not None:
                save_cam(
                    batch[i].cpu(), cams[i], prob, out / "cam" / f"{start + i:05d}_{path.stem}.png"
                )
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "predictions.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["file", "prob_pneumonia", "label", "threshold"])
        writer.writeheader()
        writer.writerows(rows)
    print(
        f"\n{len(rows)} image(s) classified (threshold {threshold:.3f}), {len(skipped)} "
        f"skipped. Predictions: {out / 'predictions.csv'}"
        + (f"; Grad-CAM: {out / 'cam'}" if cfg.cam else ""),
        flush=True,
    )
    return rows


@hydra.main(version_base="1.3", config_path="../conf", config_name="predict")
def main(cfg: DictConfig) -> list[dict[str, Any]]:
    return predict(cfg)


if __name__ == "__main__":
    sys.argv[1:] = quote_path_overrides(sys.argv[1:], ("ckpt_path", "inputs"))
    main()
