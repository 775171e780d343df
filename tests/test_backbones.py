"""Claims about the backbones and the process set-up, checked."""

from __future__ import annotations

import subprocess
import sys

import torch
import torchvision

from xray_loss import backbones


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
import sys, hashlib, torch
from xray_loss.runtime.allocator import retain_freed_memory
if sys.argv[1] == "on":
    assert retain_freed_memory()
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
print(digest.hexdigest())
"""


def test_retaining_freed_memory_leaves_results_bit_identical():
    """README (Performance): the allocator thresholds change speed, not numbers."""
    digests = [
        subprocess.run(
            [sys.executable, "-c", _TRAIN_A_FEW_STEPS, mode],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        for mode in ("off", "on")
    ]
    assert len(digests[0]) == 64 and digests[0] == digests[1]
