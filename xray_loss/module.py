"""The LightningModule: backbone + loss head, metrics per stage, optimizer with a head lr.

Its hyperparameters are plain, resolved config dicts (``_target_`` + arguments), so a checkpoint
describes itself: ``XrayClassifier.load_from_checkpoint(path, weights_only=True)`` rebuilds the
model with no Hydra and no pickled objects.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
import torch
from hydra.utils import instantiate
from torchmetrics import MeanMetric, MetricCollection
from torchmetrics.classification import (
    BinaryAccuracy,
    BinaryAUROC,
    BinaryF1Score,
    BinaryRecall,
    BinarySpecificity,
)
from torchmetrics.functional.classification import binary_roc

from xray_loss.config import ConfigError


def stage_metrics(stage: str, threshold: float = 0.5) -> MetricCollection:
    """The metric contract: ``{stage}/acc, auroc, f1, sensitivity, specificity``."""
    return MetricCollection(
        {
            "acc": BinaryAccuracy(threshold=threshold),
            "auroc": BinaryAUROC(),
            "f1": BinaryF1Score(threshold=threshold),
            "sensitivity": BinaryRecall(threshold=threshold),
            "specificity": BinarySpecificity(threshold=threshold),
        },
        prefix=f"{stage}/",
    )


def youden_threshold(probs: torch.Tensor, labels: torch.Tensor) -> float:
    """The threshold maximising sensitivity + specificity - 1 on these predictions."""
    if labels.min() == labels.max():
        return 0.5
    fpr, tpr, thresholds = binary_roc(probs, labels)
    best = torch.argmax(tpr - fpr)
    return float(thresholds[best].clamp(0.0, 1.0))


class XrayClassifier(L.LightningModule):
    """Backbone + head. Takes uint8 (or [0, 1] float) images, returns logits.

    Args:
        backbone: config of the backbone (``_target_`` + kwargs), see ``conf/model``.
        head: config of the loss head, see ``conf/loss``.
        optimizer: config of a partial optimizer, see ``conf/optimizer``.
        scheduler: config of a partial lr scheduler (stepped per epoch), or empty.
        class_counts: [n_normal, n_pneumonia] of the training split, for ``auto`` weights.
        mean, std: input normalisation after scaling to [0, 1].
        threshold: decision threshold for test metrics: a number, or ``youden`` (chosen on
            the validation split at every validation, stored with each checkpoint).
        channels_last: "auto" (on CUDA only), true or false.
        compile: ``torch.compile`` the forward pass (weights and checkpoints are unchanged).
        run_config: the resolved run config, stored for ``eval``/``predict``.
    """

    def __init__(
        self,
        backbone: dict,
        head: dict,
        optimizer: dict,
        scheduler: dict | None = None,
        class_counts: list[int] | None = None,
        mean: float = 0.5,
        std: float = 0.5,
        threshold: float | str = 0.5,
        channels_last: bool | str = "auto",
        compile: bool = False,
        run_config: dict | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.backbone = instantiate(backbone)
        # one draw of the global RNG whatever the head, so runs differing only in the head
        # share everything downstream (see xray_loss.heads)
        init_seed = int(torch.randint(0, 2**31 - 1, (1,)).item())
        self.head = instantiate(
            head,
            in_features=self.backbone.out_features,
            class_counts=class_counts,
            init_seed=init_seed,
        )
        self.in_chans = int(getattr(self.backbone, "in_chans", 1))
        if threshold != "youden" and not 0.0 <= float(threshold) <= 1.0:
            raise ValueError(f"threshold must be a probability or 'youden', got {threshold!r}.")
        self.register_buffer("mean", torch.tensor(float(mean)))
        self.register_buffer("std", torch.tensor(float(std)))
        # the decision threshold of the test metrics, and Youden's threshold on the validation
        # split of the checkpoint's epoch (kept either way, for `predict threshold=youden`)
        self.register_buffer(
            "threshold", torch.tensor(0.5 if threshold == "youden" else float(threshold))
        )
        self.register_buffer("youden_threshold", torch.tensor(0.5))
        self.use_channels_last = channels_last is True
        self._logits = self._logits_eager
        # training statistics accumulate on the device and are logged once per epoch: no
        # input validation, NaN checks (host syncs) or logging machinery on the hot path
        self.train_metrics = MetricCollection(
            {"acc": BinaryAccuracy(validate_args=False)}, prefix="train/"
        )
        self.train_loss = MeanMetric(nan_strategy="disable")
        self.val_metrics = stage_metrics("val")
        self.test_metrics = stage_metrics("test")
        self._val_outputs: list[tuple[torch.Tensor, torch.Tensor]] = []
        self._test_outputs: list[tuple[torch.Tensor, torch.Tensor]] = []
        self.test_probs: torch.Tensor | None = None
        self.test_labels: torch.Tensor | None = None
        self.report_suffix = ""  # names the test report files of an epoch-budget test

    # --- model -------------------------------------------------------------------------------
    def setup(self, stage: str) -> None:
        # runs before Lightning moves the model: ask the strategy where it is going
        device = self.trainer.strategy.root_device if self._trainer else self.device
        if self.hparams.channels_last == "auto":
            self.use_channels_last = device.type == "cuda"
        if self.use_channels_last:
            self.to(memory_format=torch.channels_last)
        if self.hparams.compile and self._logits == self._logits_eager:
            self._logits = torch.compile(self._logits_eager)

    def preprocess(self, x: torch.Tensor) -> torch.Tensor:
        """uint8 or [0, 1] images -> normalised float, with as many channels as the backbone."""
        x = x.float().div_(255.0) if x.dtype == torch.uint8 else x.float()
        x = (x - self.mean) / self.std
        if self.in_chans == 3 and x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        if self.use_channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._logits(x)

    def _logits_eager(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(self.preprocess(x)))

    def predict_proba(self, x: torch.Tensor) -> torch.Tensor:
        """P(pneumonia) for a batch of images."""
        return self.head.prob(self(x)).float()

    # --- steps -------------------------------------------------------------------------------
    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int):
        x, y = batch
        logits = self(x)
        loss = self.head.loss(logits, y)
        self.train_metrics.update(self.head.prob(logits.detach()).float(), y)
        self.train_loss.update(loss.detach().float().expand(y.shape[0]))  # weighted by batch
        return loss

    def on_train_epoch_end(self) -> None:
        self.log("train/loss", self.train_loss.compute(), prog_bar=True)
        self.log_dict(self.train_metrics.compute(), prog_bar=True)
        self.train_loss.reset()
        self.train_metrics.reset()

    def _eval_step(self, batch, stage: str, metrics: MetricCollection, outputs: list) -> None:
        x, y = batch
        logits = self(x)
        probs = self.head.prob(logits).float()
        self.log(
            f"{stage}/loss",
            self.head.loss(logits, y),
            on_epoch=True,
            batch_size=y.shape[0],
            sync_dist=True,
        )
        metrics.update(probs, y)
        outputs.append((probs.detach(), y.detach()))

    def validation_step(self, batch, batch_idx: int) -> None:
        self._eval_step(batch, "val", self.val_metrics, self._val_outputs)

    def on_validation_epoch_end(self) -> None:
        self.log_dict(self.val_metrics.compute())
        self.val_metrics.reset()
        probs, labels = self._gather(self._val_outputs)
        self._val_outputs.clear()
        if not self.trainer.sanity_checking and self.trainer.state.fn == "fit" and len(labels):
            self.youden_threshold.fill_(youden_threshold(probs, labels))
            if self.hparams.threshold == "youden":
                self.threshold.fill_(self.youden_threshold)
        self.log("val/threshold", self.threshold.float())

    def on_test_epoch_start(self) -> None:
        # test metrics use the decision threshold stored with the checkpoint under test
        self.test_metrics = stage_metrics("test", float(self.threshold)).to(self.device)

    def test_step(self, batch, batch_idx: int) -> None:
        self._eval_step(batch, "test", self.test_metrics, self._test_outputs)

    def on_test_epoch_end(self) -> None:
        self.log_dict(self.test_metrics.compute())
        self.test_metrics.reset()
        self.test_probs, self.test_labels = self._gather(self._test_outputs)
        self._test_outputs.clear()

    def _gather(self, outputs: list) -> tuple[torch.Tensor, torch.Tensor]:
        """Concatenate per-batch (probs, labels), across ranks too."""
        if not outputs:
            return torch.empty(0), torch.empty(0, dtype=torch.long)
        probs = torch.cat([p for p, _ in outputs])
        labels = torch.cat([y for _, y in outputs])
        if self.trainer.world_size > 1:
            probs = self.all_gather(probs).reshape(-1)
            labels = self.all_gather(labels).reshape(-1)
        return probs.cpu(), labels.cpu()

    # --- optimisation ------------------------------------------------------------------------
    def configure_optimizers(self) -> Any:
        lr = float(self.hparams.optimizer["lr"])
        groups = [
            {"params": list(self.backbone.parameters()), "lr": lr},
            {"params": list(self.head.parameters()), "lr": lr * self.head.lr_scale},
        ]
        optimizer = instantiate(self.hparams.optimizer)(groups)
        if not self.hparams.scheduler:
            return optimizer
        scheduler = instantiate(self.hparams.scheduler)(optimizer)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "epoch"},
        }


class CheckpointError(ConfigError):
    """A checkpoint that cannot be loaded as an xray_loss model; the message says why."""


def load_classifier(path: str | Path, map_location: str = "cpu") -> XrayClassifier:
    """Rebuild a trained model from its checkpoint alone (``weights_only``: no pickled code)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise CheckpointError(
            f"ckpt_path={path} does not exist. Give a checkpoint written by "
            f"`python -m xray_loss.train`: <run dir>/checkpoints/best-epochNNN.ckpt or last.ckpt."
        )
    try:
        model = XrayClassifier.load_from_checkpoint(
            path, map_location=map_location, weights_only=True
        )
    except Exception as err:  # corrupt file, foreign checkpoint, other architecture
        reason = str(err).strip().splitlines()[0][:300] if str(err).strip() else ""
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
