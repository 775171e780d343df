"""Starting the extra ranks of a DDP job so that they run exactly the job's config.

Lightning's DDP launcher re-executes ``sys.argv`` for ranks 1..N-1. Under Hydra that is
wrong in a multirun: each new rank re-runs the whole sweep (a second sweep directory, and with a
sampler such as Optuna, other hyperparameters than rank 0). Here rank 0 saves the job's
*resolved* config into its run directory and starts the other local ranks on that file, in
Hydra's single-run mode and in the same run directory; Lightning then sees ``LOCAL_RANK`` set
and starts nobody. Under SLURM (submitit, srun) or torchrun the ranks are already started by
the scheduler and nothing is launched here.
"""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
from pathlib import Path

import torch
from lightning.fabric.plugins.environments import SLURMEnvironment, TorchElasticEnvironment
from omegaconf import DictConfig, OmegaConf

log = logging.getLogger(__name__)

RESOLVED = "resolved.yaml"


def _devices(cfg: DictConfig) -> int:
    devices = cfg.trainer.get("devices", 1)
    if isinstance(devices, int):
        return devices
    if isinstance(devices, str) and devices.isdigit():
        return int(devices)
    return len(devices) if OmegaConf.is_list(devices) else 1


def world_size(cfg: DictConfig) -> int:
    return _devices(cfg) * int(cfg.trainer.get("num_nodes", 1))


def is_ddp(cfg: DictConfig) -> bool:
    strategy = str(cfg.trainer.get("strategy", "auto"))
    return strategy.startswith("ddp") and not strategy.startswith("ddp_spawn")


def scheduler_started_ranks() -> bool:
    """True when SLURM, torchrun or a parent process already started every rank."""
    return (
        "LOCAL_RANK" in os.environ or SLURMEnvironment.detect() or TorchElasticEnvironment.detect()
    )


def global_rank() -> int:
    """This process's rank from the environment (before Lightning sets anything up)."""
    for key in ("RANK", "SLURM_PROCID"):
        if key in os.environ:
            return int(os.environ[key])
    local = int(os.environ.get("LOCAL_RANK", 0))
    per_node = int(os.environ.get("XRAY_LOSS_LOCAL_WORLD", 1))
    return int(os.environ.get("NODE_RANK", 0)) * per_node + local


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LocalRanks:
    """The local ranks 1..devices-1 this process started (none when not needed)."""

    def __init__(self) -> None:
        self.children: list[subprocess.Popen] = []
        self._saved_env: dict[str, str | None] = {}

    def start(self, cfg: DictConfig, run_dir: Path) -> None:
        """Start the other local ranks on the resolved config; make this process local rank 0."""
        devices = _devices(cfg)
        if not is_ddp(cfg) or world_size(cfg) <= 1 or scheduler_started_ranks():
            return
        hydra_dir = run_dir / ".hydra"
        hydra_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(cfg, hydra_dir / RESOLVED, resolve=True)
        env = {
            "MASTER_ADDR": os.environ.get("MASTER_ADDR", "127.0.0.1"),
            "MASTER_PORT": os.environ.get("MASTER_PORT", str(_free_port())),
            "WORLD_SIZE": str(world_size(cfg)),
            "NODE_RANK": os.environ.get("NODE_RANK", "0"),
            "XRAY_LOSS_LOCAL_WORLD": str(devices),
            "LOCAL_RANK": "0",
        }
        self._saved_env = {k: os.environ.get(k) for k in env}
        os.environ.update(env)
        quoted = str(run_dir).replace("'", "\\'")
        for local_rank in range(1, devices):
            command = [
                sys.executable,
                "-m",
                "xray_loss.train",
                "--config-path",
                str(hydra_dir.resolve()),
                "--config-name",
                Path(RESOLVED).stem,
                f"hydra.run.dir='{quoted}'",
                "hydra.output_subdir=null",
                f"hydra.job.name=rank{local_rank}",
            ]
            child_env = {**os.environ, "LOCAL_RANK": str(local_rank)}
            self.children.append(subprocess.Popen(command, env=child_env))
        log.info("DDP: started local ranks 1..%d on %s", devices - 1, hydra_dir / RESOLVED)

    def finish(self, failed: bool) -> None:
        """Wait for the ranks; stop them if rank 0 failed; restore the environment.

        The process group goes too: the next job of a multirun in this process starts a new one.
        """
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
        for child in self.children:
            if failed and child.poll() is None:
                child.terminate()
            try:
                child.wait(timeout=60 if failed else None)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()
        for key, value in self._saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        codes = [c.returncode for c in self.children]
        self.children, self._saved_env = [], {}
        if not failed and any(codes):
            raise RuntimeError(f"DDP ranks exited with codes {codes}; see their output above.")
