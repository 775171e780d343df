"""Predict P(pneumonia) for new images with a trained checkpoint.

    python -m xray_loss.predict ckpt_path=<run>/checkpoints/best-epoch011.ckpt inputs=scans/
    python -m xray_loss.predict ckpt_path=... inputs=scan.jpeg threshold=youden cam=true

Images are read and resized exactly as in training (grey, the checkpoint's image size and resize
mode). Writes ``predictions.csv`` (file, prob_pneumonia, label, threshold, status) to
logs/predict/runs/<time>_<overrides>, and with ``cam=true`` a Grad-CAM overlay per image in
``cam/``. A file that is not a readable image (not an image, truncated, over PIL's
decompression-bomb limit) is named in a warning, skipped, and listed in predictions.csv with
``status`` ``skipped: <reason>`` (``ok`` for classified images); when no file is readable the
command fails, naming the folder, after writing that CSV.
"""

from __future__ import annotations

import csv
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import hydra
import torch
from omegaconf import DictConfig, OmegaConf

from xray_loss.checks import check_entry, check_threshold
from xray_loss.config import ConfigError, quote_overrides, setup_process
from xray_loss.data.images import ImageDecodeError, decode, display_path
from xray_loss.gradcam import grad_cam
from xray_loss.inference import load_classifier, operating_point, run_config
from xray_loss.metrics import decide
from xray_loss.threshold import parse_rule

log = logging.getLogger("xray_loss.predict")

COLUMNS = ["file", "prob_pneumonia", "label", "threshold", "status"]
EXAMPLE = (
    "python -m xray_loss.predict "
    "ckpt_path=logs/train/runs/<run>/checkpoints/best-epoch011.ckpt inputs=scans/"
)


def require(cfg: DictConfig, keys: Sequence[str], example: str) -> None:
    """One sentence with an example command for mandatory keys left unset (``???``), instead
    of OmegaConf's MissingMandatoryValue traceback."""
    missing = [key for key in keys if OmegaConf.is_missing(cfg, key)]
    if missing:
        raise ConfigError(
            f"{' and '.join(missing)} {'is' if len(missing) == 1 else 'are'} not set: "
            f"give the checkpoint of a training run and the image file or folder to classify, "
            f"e.g. {example}"
        )


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


def choose_threshold(option: Any, model, ckpt_path: str) -> tuple[float, str]:
    """The threshold to call pneumonia at, and where it came from.

    ``stored`` (default): the checkpoint's operating point, or the one ``xray_loss.eval
    recalibrate=...`` wrote beside it; ``youden``: Youden's threshold on the validation
    carve-out, stored with the checkpoint; a number: that threshold.
    """
    if option == "stored":
        point, origin = operating_point(model, ckpt_path)
        return float(point["value"]), origin
    if option == "youden":
        return float(model.youden_threshold), "youden on the validation carve-out"
    kind, value = parse_rule(check_threshold(option)["rule"])
    if kind != "fixed":
        raise ConfigError(
            f"Invalid value threshold={option!r}: predict takes stored, youden or a probability; "
            f"a rule that needs labels is chosen by python -m xray_loss.eval recalibrate=FOLDER."
        )
    return float(value), "given"


def save_cam(image: torch.Tensor, cam: torch.Tensor, prob: float, path: Path) -> None:
    from matplotlib.figure import Figure  # drawn only when asked for

    fig = Figure(figsize=(4, 4), dpi=100)
    ax = fig.subplots()
    ax.imshow(image[0].numpy(), cmap="gray")
    ax.imshow(cam.numpy(), cmap="jet", alpha=0.35)
    ax.set_title(f"P(pneumonia) = {prob:.3f}", fontsize=10)
    ax.axis("off")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)


def read_images(
    files: list[Path], size: int, resize: str
) -> tuple[list[torch.Tensor], list[Path], dict[Path, str]]:
    """Decode every file as in training; the unreadable ones are named and skipped.

    Returns the images, their files, and the reason of every skipped file.
    """
    images, names, skipped = [], [], {}
    for path in files:
        try:
            images.append(decode(path, size, resize))
            names.append(path)
        except ImageDecodeError as err:
            skipped[path] = err.reason
        except OSError as err:
            skipped[path] = err.strerror or str(err)
        if path in skipped:
            log.warning("skipped %s: not a readable image (%s)", display_path(path), skipped[path])
    return images, names, skipped


def no_image_message(inputs: str, skipped: dict[Path, str], csv_path: Path) -> str:
    """One paragraph: nothing could be classified, why (the first reasons), where the list is."""
    reasons = "; ".join(f"{display_path(p.name)}: {r}" for p, r in list(skipped.items())[:3])
    more = f"; and {len(skipped) - 3} more" if len(skipped) > 3 else ""
    return (
        f"No readable image in inputs={inputs}: all {len(skipped)} file(s) were skipped "
        f"({reasons}{more}). Each is listed with its reason in {csv_path}. Give JPEG or PNG "
        f"chest X-rays (grey or RGB, any size), a file or a folder of them."
    )


def predict(cfg: DictConfig) -> list[dict[str, Any]]:
    require(cfg, ("ckpt_path", "inputs"), EXAMPLE)
    check_entry(cfg, "predict")
    out = Path(cfg.paths.output_dir)
    model = load_classifier(cfg.ckpt_path)
    threshold, origin = choose_threshold(cfg.threshold, model, cfg.ckpt_path)
    log.info("threshold %.4f: %s", threshold, origin)
    data = run_config(model).get("data", {})
    size, resize = int(data.get("image_size", 224)), data.get("resize", "squash")
    use_gpu = cfg.accelerator in ("auto", "gpu") and torch.cuda.is_available()
    device = torch.device("cuda" if use_gpu else "cpu")
    model.to(device)
    files = list_inputs(cfg.inputs)
    images, names, skipped = read_images(files, size, resize)
    rows: dict[Path, dict[str, Any]] = {}
    for start in range(0, len(images), int(cfg.batch_size)):
        batch = torch.stack(images[start : start + int(cfg.batch_size)]).to(device)
        with torch.no_grad():
            probs = model.predict_proba(batch).cpu()
        positive = decide(probs, threshold).tolist()
        cams = grad_cam(model, batch).cpu() if cfg.cam else None
        for i, prob in enumerate(probs.tolist()):
            path = names[start + i]
            rows[path] = {
                "file": display_path(path),
                "prob_pneumonia": f"{prob:.8f}",
                "label": "PNEUMONIA" if positive[i] else "NORMAL",
                "threshold": f"{threshold:.6f}",
                "status": "ok",
            }
            if cams is not None:
                save_cam(
                    batch[i].cpu(), cams[i], prob, out / "cam" / f"{start + i:05d}_{path.stem}.png"
                )
    for path, reason in skipped.items():
        rows[path] = {"file": display_path(path), "status": f"skipped: {reason}"}
    out.mkdir(parents=True, exist_ok=True)
    csv_path = out / "predictions.csv"
    with open(csv_path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS, restval="")
        writer.writeheader()
        writer.writerows(rows[path] for path in files)  # in the order of the inputs
    if not images:
        raise ConfigError(no_image_message(cfg.inputs, skipped, csv_path))
    classified = [row for row in rows.values() if row["status"] == "ok"]
    print(
        f"\n{len(classified)} image(s) classified at threshold {threshold:.3f} ({origin}), "
        f"{len(skipped)} "
        f"skipped. Predictions: {csv_path}" + (f"; Grad-CAM: {out / 'cam'}" if cfg.cam else ""),
        flush=True,
    )
    return classified


@hydra.main(version_base="1.3", config_path="../conf", config_name="predict")
def main(cfg: DictConfig) -> list[dict[str, Any]]:
    return predict(cfg)


if __name__ == "__main__":
    setup_process()
    sys.argv[1:] = quote_overrides(sys.argv[1:], ("ckpt_path", "inputs"))
    main()
