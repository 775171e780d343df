"""The LightningModule: backbone + loss head, metrics per stage, optimizer with a head lr.

Its hyperparameters are plain, resolved config dicts (``_target_`` + arguments), so a checkpoint
describes itself: ``XrayClassifier.load_from_checkpoint(path, weights_only=True)`` rebuilds the
model with no Hydra and no pickled objects.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import lightning as L
import torch
from hydra.utils import instantiate
from torch import nn
from torchmetrics import MeanMetric
from torchmetrics.classification import BinaryAccuracy

from xray_loss.metrics import (
    OBJECTIVE,
    TRAIN_METRICS,
    binary_metrics,
    brier,
    decide,
    nll,
    threshold_metrics,
    youden_threshold,
)
from xray_loss.threshold import choose, operating_point, parse_rule


@dataclass
class Evaluated:
    """One evaluated split: every image exactly once, in dataset order (DDP padding removed)."""

    index: torch.Tensor
    labels: torch.Tensor
    probs: torch.Tensor  # float32 P(pneumonia)
    log_odds: torch.Tensor  # float32 d, P(pneumonia) = sigmoid(d): the head-independent NLL
    objective: torch.Tensor  # the head's own loss (comparable within one head only)


class XrayClassifier(L.LightningModule):
    """Backbone + head. Takes uint8 (or [0, 1] float) images, returns logits.

    The head, the loss and the probabilities run in float32 whatever the trainer's precision
    (under ``bf16-mixed`` only the backbone runs in bf16), so AUROC, thresholds and the saved
    predictions are computed on fine-grained probabilities. Validation and test metrics are
    computed once per epoch on the whole evaluated set, each image exactly once (under DDP the
    padded repeats of the distributed sampler are dropped by dataset index).

    Args:
        backbone: config of the backbone (``_target_`` + kwargs), see ``conf/model``.
        head: config of the loss head, see ``conf/loss``.
        optimizer: config of a partial optimizer, see ``conf/optimizer``.
        scheduler: config of a partial lr scheduler (stepped per epoch), or empty.
        class_counts: [n_normal, n_pneumonia] of the training split, for ``auto`` weights.
        mean, std: input normalisation after scaling to [0, 1].
        threshold: the decision threshold (``P >= threshold`` is pneumonia) of the val and test
            metrics: ``{"rule": ..., "source": ...}`` (see xray_loss.threshold), or a rule
            alone (a number, ``youden``, ``sens@0.95``, ``spec@0.90``; source carveout). A
            data-driven rule is re-chosen at every validation on the source's sample (the
            second val dataloader, or the carve-out itself) and stored with each checkpoint.
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
        threshold: dict | float | str = 0.5,
        channels_last: bool | str = "auto",
        compile: bool = False,
        run_config: dict | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        spec = threshold if isinstance(threshold, dict) else {"rule": threshold}
        self.rule, self.source = spec["rule"], spec.get("source", "carveout")
        kind, value = parse_rule(self.rule)
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
        self.register_buffer("mean", torch.tensor(float(mean)))
        self.register_buffer("std", torch.tensor(float(std)))
        # the decision threshold of the val/test metrics, and Youden's threshold on the
        # validation carve-out of the checkpoint's epoch (kept either way, for predict)
        self.register_buffer("threshold", torch.tensor(value if kind == "fixed" else 0.5))
        self.register_buffer("youden_threshold", torch.tensor(0.5))
        # what the threshold was chosen on (stored in checkpoints, see on_save_checkpoint)
        self.operating_point: dict[str, Any] = {"rule": str(self.rule), "source": self.source}
        self.use_channels_last = channels_last is True
        self._logits = self._logits_eager
        # training statistics accumulate on the device and are logged once per epoch: no
        # input validation, NaN checks (host syncs) or logging machinery on the hot path.
        # TRAIN_METRICS: the head's objective, the head-independent NLL and Brier, accuracy
        self.train_metrics = nn.ModuleDict(
            {
                name: BinaryAccuracy(validate_args=False)
                if name == "acc"
                else MeanMetric(nan_strategy="disable")
                for name in TRAIN_METRICS
            }
        )
        self._outputs: dict[str, list[tuple[torch.Tensor, ...]]] = {
            "val": [],
            "calibration": [],
            "test": [],
        }
        self.evaluated: dict[str, Evaluated] = {}
        self.loaded_epoch: int | None = None  # epoch of the checkpoint last loaded (0-based)

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

    def _fp32(self) -> torch.autocast:
        """A region where autocast is off: the head, loss and probabilities stay float32."""
        return torch.autocast(self.device.type, enabled=False)

    def _logits_eager(self, x: torch.Tensor) -> torch.Tensor:
        features = self.backbone(self.preprocess(x))
        with self._fp32():
            return self.head(features.float())

    def predict_proba(self, x: torch.Tensor) -> torch.Tensor:
        """float32 P(pneumonia) for a batch of images."""
        logits = self(x)
        with self._fp32():
            return self.head.prob(logits.float())

    # --- steps -------------------------------------------------------------------------------
    def training_step(self, batch: tuple[torch.Tensor, ...], batch_idx: int):
        x, y = batch[0], batch[1]
        logits = self(x)
        with self._fp32():
            loss = self.head.loss(logits, y)
            log_odds = self.head.log_odds(logits.detach())
            probs = torch.sigmoid(log_odds)
            means = {OBJECTIVE: loss.detach(), "nll": nll(log_odds, y), "brier": brier(probs, y)}
        for name, value in means.items():
            self.train_metrics[name].update(value.expand(y.shape[0]))  # weighted by batch
        self.train_metrics["acc"].update(decide(probs, self.threshold).long(), y)
        return loss

    def _log_epoch_as_step(self) -> None:
        """Values go to the loggers at step = epochs completed (Lightning takes a logged
        ``step`` as the x value, and then adds no ``epoch`` counter): curves of runs with other
        batch sizes or lengths line up on the epoch axis in TensorBoard; test values sit at the
        end of training."""
        if not self.trainer.loggers:  # eval and predict: no axis to place, no row to print
            return
        done = self.current_epoch + (0 if self.trainer.state.fn == "test" else 1)
        self.log("step", float(done), logger=True)

    def on_train_epoch_end(self) -> None:
        self._log_epoch_as_step()
        # the backbone's learning rate this epoch, on the epoch axis like every other curve
        # (Lightning's LearningRateMonitor logs at the optimizer step)
        self.log("train/lr", self._epoch_lr)
        for name, metric in self.train_metrics.items():
            self.log(f"train/{name}", metric.compute(), prog_bar=name in ("nll", "acc"))
            metric.reset()

    def on_train_batch_start(self, batch, batch_idx: int) -> None:
        # the lr of this epoch: read at its first batch in this process (also after a resume
        # mid-epoch), before an epoch-wise scheduler steps at its end
        if getattr(self, "_lr_epoch", None) != self.current_epoch:
            self._lr_epoch = self.current_epoch
            self._epoch_lr = float(self.trainer.optimizers[0].param_groups[0]["lr"])

    def _eval_step(self, batch: tuple[torch.Tensor, ...], stage: str) -> None:
        x, y, index = batch
        self._outputs[stage].append((index, self(x).detach(), y))

    def validation_step(self, batch, batch_idx: int, dataloader_idx: int = 0) -> None:
        # a second val dataloader is the threshold's calibration sample (threshold.source)
        self._eval_step(batch, "calibration" if dataloader_idx == 1 else "val")

    def test_step(self, batch, batch_idx: int) -> None:
        self._eval_step(batch, "test")

    def on_validation_epoch_end(self) -> None:
        result = self._evaluate("val")
        calibration = result
        if len(self.trainer.num_val_batches) > 1:  # a calibration dataloader is there
            calibration = self._evaluate("calibration")
        fitting = not self.trainer.sanity_checking and self.trainer.state.fn == "fit"
        if fitting and len(result.labels):
            self.youden_threshold.fill_(youden_threshold(result.probs, result.labels))
            if parse_rule(self.rule)[0] != "fixed":
                value = choose(calibration.probs, calibration.labels, self.rule)
                self.threshold.fill_(value)
            positives = int(calibration.labels.sum())
            self.operating_point.update(
                n=len(calibration.labels),
                n_pneumonia=positives,
                n_normal=len(calibration.labels) - positives,
            )
        self._log_metrics("val", result)
        # a curve of the threshold only where a rule moves it (a fixed one is a flat line)
        moves = parse_rule(self.rule)[0] != "fixed"
        to_loggers = self.trainer.state.fn != "validate" and moves
        self.log("val/threshold", self.threshold.float(), sync_dist=True, logger=to_loggers)

    def on_test_epoch_end(self) -> None:
        # the decision threshold is the one stored with the checkpoint under test
        self._log_metrics("test", self._evaluate("test"))

    def _log_metrics(self, stage: str, result: Evaluated) -> None:
        values = binary_metrics(
            result.probs, result.labels, float(self.threshold), log_odds=result.log_odds
        )
        values = {OBJECTIVE: result.objective, **values}
        if stage == "test":  # and at 0.5, to show what the chosen operating point changes
            at_half = binary_metrics(result.probs, result.labels, 0.5)
            values.update({f"{k}@0.5": at_half[k] for k in threshold_metrics()})
        logged = {f"{stage}/{k}": v.to(self.device) for k, v in values.items()}
        self._log_epoch_as_step()
        # every rank holds the whole set, so the values agree; sync_dist only keeps Lightning
        # from warning about epoch-level values under DDP. A re-validation after fit (the best
        # checkpoint's val metrics for metrics.json) stays out of the per-epoch curves.
        to_loggers = self.trainer.state.fn != "validate"
        self.log_dict(logged, sync_dist=True, logger=to_loggers)

    def operating_point_report(self, n_boot: int = 1000) -> dict[str, Any]:
        """The threshold of the checkpoint last evaluated, with its rule, source, sample size
        and bootstrap intervals over the sample it was chosen on (xray_loss.threshold)."""
        stage = "calibration" if "calibration" in self.evaluated else "val"
        chosen_on = self.evaluated[stage]
        source = self.source if stage == "calibration" else "carveout"
        # the bootstrap draws patients where the split knows them (evaluated index: split order)
        splits = getattr(getattr(self._trainer, "datamodule", None), "splits", None) or {}
        patients = getattr(splits.get(stage), "patients", None)
        groups = [patients[i] for i in chosen_on.index.tolist()] if patients else None
        point = operating_point(
            chosen_on.probs, chosen_on.labels, self.rule, source, n_boot, groups=groups
        )
        return {**point, "value": float(self.threshold)}

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["operating_point"] = {**self.operating_point, "value": float(self.threshold)}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.loaded_epoch = int(checkpoint.get("epoch", 0))
        self.operating_point = dict(checkpoint.get("operating_point") or self.operating_point)

    def _evaluate(self, stage: str) -> Evaluated:
        """The stage's outputs gathered from every rank, each image once, in dataset order."""
        outputs = self._outputs[stage]
        if outputs:
            index = torch.cat([i for i, _, _ in outputs])
            logits = torch.cat([z for _, z, _ in outputs])
            labels = torch.cat([y for _, _, y in outputs])
        else:
            index = torch.empty(0, dtype=torch.long, device=self.device)
            logits = torch.empty(0, self.head.n_logits, device=self.device)
            labels = torch.empty(0, dtype=torch.long, device=self.device)
        outputs.clear()
        if self.trainer.world_size > 1:  # the sampler pads every rank to the same length
            index = self.all_gather(index).reshape(-1)
            labels = self.all_gather(labels).reshape(-1)
            logits = self.all_gather(logits).reshape(-1, logits.shape[-1])
        order = torch.argsort(index, stable=True)
        index, logits, labels = index[order], logits[order], labels[order]
        first = torch.ones_like(index, dtype=torch.bool)
        first[1:] = index[1:] != index[:-1]
        index, logits, labels = index[first], logits[first].float(), labels[first]
        with self._fp32():
            log_odds = self.head.log_odds(logits)
            probs = self.head.prob(logits)
            loss = self.head.loss(logits, labels) if len(labels) else torch.tensor(float("nan"))
        result = Evaluated(
            index.cpu(), labels.cpu(), probs.cpu(), log_odds.cpu(), loss.detach().cpu()
        )
        self.evaluated[stage] = result
        return result

    # --- optimisation ------------------------------------------------------------------------
    def configure_optimizers(self) -> Any:
        """Two groups: the head's lr is ``lr * lr_scale`` and its weight decay ``wd / lr_scale``.

        The decay of a parameter per step is lr x wd (AdamW) or enters the gradient as wd x w
        (SGD, Adam): rescaling both keeps a matched head's decay of u = w1 - w0 equal to its
        twin's (see xray_loss.heads).
        """
        lr = float(self.hparams.optimizer["lr"])
        scale = self.head.lr_scale
        head_group: dict[str, Any] = {"params": list(self.head.parameters()), "lr": lr * scale}
        if "weight_decay" in self.hparams.optimizer:
            head_group["weight_decay"] = float(self.hparams.optimizer["weight_decay"]) / scale
        groups = [{"params": list(self.backbone.parameters()), "lr": lr}, head_group]
        optimizer = instantiate(self.hparams.optimizer)(groups)
        if not self.hparams.scheduler:
            return optimizer
        scheduler = instantiate(self.hparams.scheduler)(optimizer)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "epoch"},
        }
