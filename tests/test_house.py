"""The house rules of the code base: no import side effects, one source for names."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

_IMPORT_ONLY = """
import logging, warnings
import hydra, lightning, matplotlib.pyplot, optuna, tensorboard, torch, torchmetrics, torchvision
from omegaconf import OmegaConf
before_filters = list(warnings.filters)
before_resolvers = {n for n in ("xray_loss.dirname", "xray_loss.scale_epochs")
                    if OmegaConf.has_resolver(n)}
logger = logging.getLogger("lightning.pytorch.utilities.rank_zero")
before_log_filters = list(logger.filters)
import xray_loss.train, xray_loss.eval, xray_loss.predict, xray_loss.report, xray_loss.runtime.sweep
assert list(warnings.filters) == before_filters, "warning filters changed at import"
assert not before_resolvers
assert not any(OmegaConf.has_resolver(n) for n in ("xray_loss.dirname", "xray_loss.scale_epochs"))
assert list(logger.filters) == before_log_filters, "logger filters changed at import"
from xray_loss.config import setup_process
setup_process()
assert OmegaConf.has_resolver("xray_loss.dirname") and len(warnings.filters) > len(before_filters)
print("ok")
"""


def test_importing_the_entry_points_installs_nothing():
    proc = subprocess.run(
        [sys.executable, "-c", _IMPORT_ONLY], capture_output=True, text=True, cwd=ROOT
    )
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr[-3000:]


def _definitions(pattern: str) -> list[str]:
    found = []
    for path in sorted((ROOT / "xray_loss").rglob("*.py")):
        for line in path.read_text().splitlines():
            if re.match(pattern, line):
                found.append(f"{path.relative_to(ROOT)}: {line.strip()}")
    return found


def test_metric_names_and_axes_are_defined_once():
    """Module, train, sweep, report and callbacks import the metrics from xray_loss.metrics,
    the axes and what repeats a run from xray_loss.identity, statuses from runtime.record."""
    for pattern, home in (
        (r"^\s*[A-Z_]*METRIC[A-Z_]*\s*=\s*\(", "xray_loss/metrics.py"),
        (r"^\s*SCORES\s*[:=]", "xray_loss/metrics.py"),
        (r"^\s*STAGES\s*=", "xray_loss/metrics.py"),
        (r"^\s*CURVES\s*=", "xray_loss/metrics.py"),
        (r"^\s*[A-Z_]*AXES\s*=", "xray_loss/identity.py"),  # none: identity.axis_names()
        (r"^\s*REPEAT[A-Z_]*\s*=", "xray_loss/identity.py"),
        (r"^\s*[A-Z_]*(BOOKKEEPING|EXCLUDED|NOT_IDENTITY)[A-Z_]*\s*=", "xray_loss/identity.py"),
        (r"^\s*[A-Z_]*STATUS(ES)?\s*=\s*\(", "xray_loss/runtime/record.py"),
        (r"^\s*class \w+\(StrEnum\)", "xray_loss/"),
    ):
        defined = _definitions(pattern)
        assert all(d.startswith(home) for d in defined), (pattern, defined)


def test_train_reads_as_the_data_flow():
    source = (ROOT / "xray_loss" / "train.py").read_text()
    assert len(source.splitlines()) <= 150
    body = re.search(r"\ndef train\(.*?\n(?=\ndef |\n@)", source, re.S).group(0)
    assert len(body.strip().splitlines()) <= 48
    for step in ("instantiate(cfg.data)", "instantiate(\n", ".fit(", ".test("):
        assert step in body


def test_statuses_are_compared_as_the_enum_not_as_strings():
    """A run's statuses are ``runtime.record.Status``: no module spells one as a string."""
    from xray_loss.runtime.record import Status

    names = "|".join(Status)
    spelled = re.compile(rf"""[=!]=\s*["']({names})["']""")
    found = [
        f"{p.relative_to(ROOT)}: {line.strip()}"
        for p in [*(ROOT / "xray_loss").rglob("*.py"), *(ROOT / "hydra_plugins").rglob("*.py")]
        for line in p.read_text().splitlines()
        if spelled.search(line)
    ]
    assert not found, found
