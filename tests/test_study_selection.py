"""Selection never reads test/: on a tiny Kermany run of the study's experiment, the test
split's images are first read after fit has ended, with the checkpoint and the threshold the
run reports already fixed (issue 27: checkpoint, threshold and recipe are chosen on the
carve-out of train/ only)."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import torch

from tests.conftest import assert_ok, metrics, run_cli, run_dirs
from tests.fixtures import make_kermany
from xray_loss.data.base import XrayDataModule
from xray_loss.data.order import ImageTensorDataset


def test_nothing_before_the_end_of_fit_reads_the_test_split(tmp_path: Path, monkeypatch):
    root = make_kermany(tmp_path / "chest_xray", n_normal=24, n_pneumonia=36, test=True)
    events: list[tuple] = []
    loader, fit = XrayDataModule._loader, L.Trainer.fit

    def marked_loader(self, split: str, train: bool):
        made = loader(self, split, train)
        made.dataset.split_name = split  # which split a dataset serves, for the reads below
        return made

    def reading(method):
        def read(self, *args, **kwargs):
            if getattr(self, "split_name", None) == "test" and not any(
                e[0] == "test read" for e in events
            ):
                events.append(("test read", self.split_name))
            return method(self, *args, **kwargs)

        return read

    def recorded_fit(self, *args, **kwargs):
        out = fit(self, *args, **kwargs)
        best = self.checkpoint_callback.best_model_path
        stored = torch.load(best, map_location="cpu", weights_only=False)["state_dict"]
        events.append(("fit end", best, float(stored["threshold"])))
        return out

    monkeypatch.setattr(XrayDataModule, "_loader", marked_loader)
    monkeypatch.setattr(L.Trainer, "fit", recorded_fit)
    for name in ("__getitem__", "__getitems__"):
        monkeypatch.setattr(ImageTensorDataset, name, reading(getattr(ImageTensorDataset, name)))
    args = ["experiment=bce_vs_ce", f"data.root={root}", "epochs=3", "budgets=[1,3]"]
    args += ["data.image_size=16", "model.backbone.widths=[8]", "batch_size=16"]
    assert_ok(run_cli(*args, cwd=tmp_path))
    kinds = [e[0] for e in events]
    assert kinds == ["fit end", "test read"], events  # test/ was read, and only after fit
    (run,) = run_dirs(tmp_path)
    record = metrics(run)
    _, best, threshold = events[0]
    assert record["splits"]["test"]["n"] == 20  # the official test/ folder of the fixture
    assert record["best_checkpoint"] == best  # the checkpoint tested is the one fit chose
    assert record["threshold"] == threshold  # with the threshold chosen before test/ was read
