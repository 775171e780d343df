"""Claims about the backbones and the process set-up, checked."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import torch
import torchvision

from xray_loss import backbones

MAKEFILE = Path(__file__).resolve().parents[1] / "Makefile"


def test_a_pretrained_rgb_stem_summed_over_channels_is_the_rgb_net_on_repeated_grey(monkeypatch):
    """backbones.py: with in_chans=1 a pretrained stem's weights are summed over RGB, which is
    exactly the RGB network applied to the grey image repeated three times."""
    torch.manual_seed(0)
    rgb = torchvision.models.resnet18(weights=None).eval()
    reference = torchvision.models.resnet18(weights=None)
    reference.load_state_dict(rgb.state_dict())
    reference.fc = torch.nn.Identity()
    reference.eval()

    class FakeWeights:  # stands in for an offline-unavailable ImageNet weights enum member
        url = "https://example.invalid/resnet18.pth"

    monkeypatch.setattr(backbones, "_load_weights", lambda name, weights: FakeWeights())
    monkeypatch.setattr(torchvision.models, "get_model", lambda name, weights: rgb)
    grey_net = backbones.torchvision_backbone("resnet18", weights="IMAGENET1K_V1", in_chans=1)
    grey_net.eval()
    image = torch.rand(2, 1, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(
            grey_net(image), reference(image.expand(-1, 3, -1, -1)), atol=1e-5, rtol=1e-5
        )


_TRAIN_A_FEW_STEPS = """
import hashlib, resource, torch
torch.manual_seed(0)
torch.set_num_threads(1)
from xray_loss.backbones import SmallCNN
model = SmallCNN(widths=(8, 16, 32))
head = torch.nn.Linear(model.out_features, 1)
opt = torch.optim.Adam([*model.parameters(), *head.parameters()], 1e-3)
for _ in range(5):
    x = torch.rand(32, 1, 96, 96)
    loss = head(model(x)).square().mean()
    opt.zero_grad(); loss.backward(); opt.step()
digest = hashlib.sha256()
for p in [*model.parameters(), *head.parameters()]:
    digest.update(p.detach().numpy().tobytes())
torch.empty(1 << 24).fill_(1)  # a 64 MiB block, then eight more: each one mapped afresh...
faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(8):  # ...unless freed memory is kept
    torch.empty(1 << 24).fill_(1)
print(digest.hexdigest(), resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults)
"""


def test_retaining_freed_memory_leaves_results_bit_identical():
    """README (Performance): the Makefile's allocator setting changes speed, not numbers (and
    it takes effect: freed blocks are kept, not faulted in again)."""
    (tunables,) = re.findall(r"^MALLOC_TUNABLES := (\S+)$", MAKEFILE.read_text(), re.M)
    runs = []
    for setting in ({}, {"GLIBC_TUNABLES": tunables}):
        env = {k: v for k, v in os.environ.items() if k != "GLIBC_TUNABLES"} | setting
        out = subprocess.run(
            [sys.executable, "-c", _TRAIN_A_FEW_STEPS],
            env=env,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.split()
        runs.append((out[0], int(out[1])))
    (default, default_faults), (kept, kept_faults) = runs
    assert len(default) == 64 and default == kept
    assert kept_faults < default_faults / 4, (default_faults, kept_faults)
