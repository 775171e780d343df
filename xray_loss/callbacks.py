"""Lightning callbacks the default run uses beyond Lightning's own (checkpoints, progress bar)."""

from __future__ import annotations

import csv
import math
import shutil
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint, Timer
from lightning.pytorch.utilities import rank_zero_only
from torchmetrics.functional.classification import (
    binary_auroc,
    binary_confusion_matrix,
    binary_roc,
)

from xray_loss.budget import TimeBudget
from xray_loss.dashboard import tensorboard_logger
from xray_loss.metrics import decide
from xray_loss.runtime.record import TrainingDiverged
from xray_loss.runtime.rundirs import IMAGES


class DivergenceGuard(L.Callback):
    """Stops a run whose training loss is NaN/inf or stays above ``max_loss``.

    A diverged run rarely produces NaN: with a huge learning rate the logits explode and the
    loss sits at tens or hundreds while staying finite. Chance level is about 0.69 for BCE and
    CE; a mean batch loss above ``max_loss`` (default 10) over ``every_n_steps`` steps means
    confidently wrong predictions on most images. The loss is accumulated on the device and
    read every ``every_n_steps`` steps (and at epoch end), so a GPU run is not synchronised at
    every step and a diverged run still stops well within its first epoch.
    """

    def __init__(self, every_n_steps: int = 10, max_loss: float = 10.0) -> None:
        self.every_n_steps = max(1, int(every_n_steps))
        self.max_loss = float(max_loss)
        self._sum: torch.Tensor | None = None
        self._count = 0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        loss = loss.detach().float()
        self._sum = loss if self._sum is None else self._sum + loss
        self._count += 1
        if self._count >= self.every_n_steps:
            self._check(trainer)

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self._check(trainer)

    def _check(self, trainer: L.Trainer) -> None:
        if self._sum is None:
            return
        mean = float(self._sum) / self._count
        self._sum, self._count = None, 0
        if not math.isfinite(mean) or mean > self.max_loss:
            what = (
                "became NaN or infinite"
                if not math.isfinite(mean)
                else (f"averaged {mean:.3g} over the last steps (above max_loss={self.max_loss:g})")
            )
            raise TrainingDiverged(
                f"Training diverged: the loss {what} in epoch {trainer.current_epoch + 1} "
                f"(step {trainer.global_step}). Lower the learning rate (lr={_lr(trainer)})."
            )


class BestCheckpoint(ModelCheckpoint):
    """Lightning's ModelCheckpoint, its ``{epoch}`` counted from 1 like everything else the
    run reports: ``best-epoch011.ckpt`` holds the weights after 11 epochs of training, the
    ``best_epoch`` of metrics.json and the epoch of the curves' x axis (Lightning's own
    ``epoch`` is the 0-based index of the epoch that was running)."""

    def format_checkpoint_name(self, metrics, filename=None, ver=None, prefix=None) -> str:
        if "epoch" in metrics:
            metrics = {**metrics, "epoch": metrics["epoch"] + 1}
        return super().format_checkpoint_name(metrics, filename, ver, prefix)


def fit_end(trainer: L.Trainer) -> tuple[str, int]:
    """Why ``trainer.fit`` returned (``runtime.record.STOP_REASONS``) and how many epochs it
    completed. Lightning's ``current_epoch`` also counts an epoch that ``max_time`` (or
    ``max_steps``) cut short; such an epoch is not counted here."""
    complete = trainer.fit_loop.epoch_loop.batch_progress.is_last_batch  # test_private_apis.py
    epochs = (
        trainer.current_epoch
        if complete or trainer.global_step == 0
        else max(0, trainer.current_epoch - 1)
    )
    max_epochs = trainer.max_epochs if trainer.max_epochs is not None else math.inf
    timers = [c for c in trainer.callbacks if isinstance(c, Timer)]
    if complete and trainer.current_epoch >= max_epochs:
        reason = "max_epochs"
    elif any(isinstance(c, EarlyStopping) and c.stopped_epoch > 0 for c in trainer.callbacks):
        reason = "early_stopping"
    elif any((t.time_remaining() or 1.0) <= 0 for t in timers) or getattr(
        TimeBudget.of(trainer), "stopped", False
    ):
        reason = "max_time"
    elif trainer.max_steps not in (None, -1) and trainer.global_step >= trainer.max_steps:
        reason = "max_steps"
    else:
        reason = "should_stop"  # another callback set trainer.should_stop
    return reason, epochs


def _lr(trainer: L.Trainer) -> str:
    try:
        return f"{trainer.optimizers[0].param_groups[0]['lr']:g}"
    except (IndexError, KeyError, AttributeError):
        return "?"


def write_predictions(path: Path, result, datamodule) -> None:
    """``test_predictions.csv``: index, label, P(pneumonia), and the file and patient where the
    data source knows them, every test image exactly once, in dataset order."""
    split = (getattr(datamodule, "splits", None) or {}).get("test")
    files = getattr(split, "files", None) or []
    patients = getattr(split, "patients", None) or []
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8", errors="backslashreplace") as f:
        writer = csv.writer(f)
        writer.writerow(["index", "label", "prob", "file", "patient"])
        rows = zip(
            result.index.tolist(), result.labels.tolist(), result.probs.tolist(), strict=True
        )
        for i, y, p in rows:
            file = files[i] if i < len(files) else ""
            patient = patients[i] if i < len(patients) else ""
            writer.writerow([i, y, f"{p:.8f}", file, patient])


class TestReport(L.Callback):
    """At test time: confusion matrix and ROC curve to TensorBoard, predictions to a CSV.

    ``test_predictions.csv`` (see :func:`write_predictions`) is what ``xray_loss.report`` uses
    for bootstrap confidence intervals (resampling patients when known) and calibration.
    """

    def __init__(self, output_dir: str, save_figures: bool = False) -> None:
        self.dir = Path(output_dir)
        self.save_figures = save_figures  # also as confusion_matrix.png and roc.png

    @rank_zero_only
    def on_test_end(self, trainer, pl_module) -> None:
        # after the module's on_test_epoch_end, which gathers the predictions
        result = pl_module.evaluated.get("test")
        if result is None or result.probs.numel() == 0:
            return
        write_predictions(self.dir / "test_predictions.csv", result, trainer.datamodule)
        probs, labels = result.probs, result.labels
        threshold = float(pl_module.threshold)
        figures = {
            "confusion_matrix": confusion_figure(probs, labels, threshold),
            "roc": roc_figure(probs, labels, threshold),
        }
        tb = tensorboard_logger(trainer)
        for name, fig in figures.items():
            if self.save_figures:
                fig.savefig(self.dir / f"{name}.png", dpi=120)
            if tb is not None:
                # under the images' group, at the epoch the curves end (test/* scalars too)
                tb.experiment.add_figure(f"{IMAGES}/test_{name}", fig, trainer.current_epoch)


def confusion_figure(probs: torch.Tensor, labels: torch.Tensor, threshold: float):
    """A 2x2 confusion matrix (rows: truth, columns: prediction) with counts."""
    cm = binary_confusion_matrix(decide(probs, threshold).long(), labels).numpy()
    from matplotlib.figure import Figure  # at test time: training imports no matplotlib

    fig = Figure(figsize=(3.6, 3.2), dpi=100)
    ax = fig.subplots()
    ax.imshow(cm, cmap="Blues")
    names = ["normal", "pneumonia"]
    ax.set_xticks([0, 1], names)
    ax.set_yticks([0, 1], names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    for i in range(2):
        for j in range(2):
            ax.text(
                j,
                i,
                str(cm[i, j]),
                ha="center",
                va="center",
                color="white" if cm[i, j] > cm.max() / 2 else "black",
            )
    ax.set_title(f"threshold {threshold:.3f}")
    fig.tight_layout()
    return fig


def roc_figure(probs: torch.Tensor, labels: torch.Tensor, threshold: float):
    """ROC curve with its AUROC in the title and the decision threshold's operating point."""
    fpr, tpr, _ = binary_roc(probs, labels)
    auroc = float(binary_auroc(probs, labels))
    pred = decide(probs, threshold)
    pos, neg = labels == 1, labels == 0
    op_tpr = float((pred & pos).sum() / pos.sum().clamp(min=1))
    op_fpr = float((pred & neg).sum() / neg.sum().clamp(min=1))
    from matplotlib.figure import Figure

    fig = Figure(figsize=(3.6, 3.4), dpi=100)
    ax = fig.subplots()
    ax.plot(fpr.numpy(), tpr.numpy(), lw=1.5)
    ax.plot([0, 1], [0, 1], ls="--", c="grey", lw=0.8)
    point = f"threshold {threshold:.3f}: sens {op_tpr:.2f}, spec {1 - op_fpr:.2f}"
    ax.scatter([op_fpr], [op_tpr], c="red", zorder=3, label=point)
    ax.set_title(f"test ROC, AUROC {auroc:.3f} (n={labels.numel()})", fontsize=9)
    ax.set_xlabel("1 - specificity")
    ax.set_ylabel("sensitivity")
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    return fig


class EpochBudgets(L.Callback):
    """Keeps, at each epoch budget (e.g. 10, 30, 100), the best checkpoint so far and the
    weights of that epoch itself, and tests both (the fixed-epoch result shows what checkpoint
    selection changes; at the last budget it is the last epoch's).

    After fit, :meth:`test` gives what a separate run of NNN epochs would have reported (the best
    val AUROC checkpoint among its epochs, tested), from one long run: exactly so when nothing
    in the run depends on its total length (a constant learning rate; budgets with a scheduler
    are refused at config time), since data order and initialisation do not depend on
    ``epochs``. ``epochs_scale`` shrinks the budgets like it shrinks ``epochs``.
    """

    def __init__(
        self, output_dir: str, budgets: list[int] | None = None, epochs_scale: float = 1.0
    ) -> None:
        from xray_loss.config import scale_epochs

        self.output_dir = Path(output_dir)
        self.dir = self.output_dir / "checkpoints" / "budgets"
        self.budgets = {scale_epochs(b, epochs_scale): int(b) for b in (budgets or [])}
        self.saved: dict[int, dict] = {}

    @classmethod
    def of(cls, trainer: L.Trainer) -> EpochBudgets:
        """The trainer's (a plain one, keeping nothing, when the config has none)."""
        found = [c for c in trainer.callbacks if isinstance(c, cls)]
        return found[0] if found else cls(trainer.default_root_dir)

    def state_dict(self) -> dict:
        return {"saved": self.saved}

    def load_state_dict(self, state_dict: dict) -> None:
        self.saved = {int(k): v for k, v in state_dict.get("saved", {}).items()}

    # ModelCheckpoint updates its best at the end of each epoch, after any other callback's
    # on_train_epoch_end: so look at it when the next epoch starts, or when fit ends.
    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self._keep(trainer, trainer.current_epoch)

    def on_fit_end(self, trainer, pl_module) -> None:
        self._keep(trainer, trainer.current_epoch)

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        """A run that diverges late keeps the budgets it passed: what separate shorter runs
        would have reported (metrics.json ``budgets`` of the diverged run). One process only:
        DDP ranks may diverge at different steps, and testing waits for every rank."""
        if isinstance(exception, TrainingDiverged) and trainer.world_size == 1 and self.saved:
            exception.fields["budgets"] = self.test(trainer, pl_module, trainer.datamodule)

    def _keep(self, trainer, epochs_done: int) -> None:
        nominal = self.budgets.get(epochs_done)
        checkpoint = trainer.checkpoint_callback
        if nominal is None or nominal in self.saved or checkpoint is None:
            return
        if not checkpoint.best_model_path:
            return
        # budget010-best-epoch007.ckpt: the best checkpoint within the 10-epoch budget, named
        # like the run's own; budget010-last-epoch010.ckpt: the weights after the budget's own
        # epoch (epochs counted from 1, as everywhere)
        path = self.dir / f"budget{nominal:03d}-{Path(checkpoint.best_model_path).name}"
        last = self.dir / f"budget{nominal:03d}-last-epoch{epochs_done:03d}.ckpt"
        if trainer.is_global_zero:
            self.dir.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(checkpoint.best_model_path, path)
        trainer.save_checkpoint(last, weights_only=True)  # every rank takes part
        self.saved[nominal] = {
            "checkpoint": str(path),
            "last_checkpoint": str(last),
            "epochs_trained": epochs_done,
            "best_val_auroc": float(checkpoint.best_model_score),
        }

    def test(self, trainer: L.Trainer, module, datamodule) -> dict[str, dict]:
        """Test every kept checkpoint: metrics (metrics.json ``budgets``), predictions
        (``test_predictions_epochNNN.csv``) and ``budget/...`` scalars at step NNN.

        A plain Trainer of its own runs the tests, on one device of global rank zero, without
        loggers or callbacks: the run's per-epoch curves and its test report stay those of the
        final model.
        """
        results: dict[str, dict] = {}
        if trainer.is_global_zero and self.saved:
            device = trainer.strategy.root_device
            tester = L.Trainer(
                accelerator=device.type,
                devices=[device.index or 0] if device.type == "cuda" else 1,
                precision=trainer.precision,
                logger=False,
                callbacks=[],
                enable_progress_bar=False,
                enable_model_summary=False,
            )
            for nominal, info in sorted(self.saved.items()):
                if info.get("last_checkpoint"):  # the weights of the budget's own epoch
                    found = tester.test(module, datamodule, ckpt_path=info["last_checkpoint"])
                    last = {k: v for k, v in found[0].items() if k.startswith("test/")}
                    name = f"test_predictions_epoch{nominal:03d}_last.csv"
                    write_predictions(self.output_dir / name, module.evaluated["test"], datamodule)
                found = tester.test(module, datamodule=datamodule, ckpt_path=info["checkpoint"])
                test = {k: v for k, v in found[0].items() if k.startswith("test/")}
                name = f"test_predictions_epoch{nominal:03d}.csv"
                write_predictions(self.output_dir / name, module.evaluated["test"], datamodule)
                best_epoch = module.loaded_epoch + 1
                results[str(nominal)] = {**info, "best_epoch": best_epoch, "test": test}
                if info.get("last_checkpoint"):
                    results[str(nominal)]["last_test"] = last
                for logger in trainer.loggers:
                    logger.log_metrics({f"budget/{k}": v for k, v in test.items()}, step=nominal)
        trainer.strategy.barrier()
        return results
