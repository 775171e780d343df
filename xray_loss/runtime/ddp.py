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


def share_cpu_threads(cfg: DictConfig, launcher: DictConfig) -> None:
    """``threads=auto``: share the CPU cores between the jobs and ranks running side by side
    (a joblib launcher's parallel jobs, CPU DDP ranks); a number sets the torch threads."""
    threads = cfg.get("threads", "auto")
    if threads != "auto":
        torch.set_num_threads(int(threads))
        return
    parallel = 1
    if "Joblib" in str(launcher.get("_target_", "")):
        n_jobs = launcher.get("n_jobs") or -1
        parallel = os.cpu_count() if n_jobs < 0 else n_jobs
    if is_ddp(cfg) and str(cfg.trainer.accelerator) == "cpu":
        parallel *= world_size(cfg)
    if parallel > 1:
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // parallel))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LocalRanks:
    """The local ranks 1..devices-1 of a DDP job, started by rank 0 on the job's resolved config.

    A context manager: entering starts them (none when not needed) and makes this process local
    rank 0; leaving waits for them, or stops them if the block failed, and restores the
    environment. Every rank of a DDP job writes ``.hydra/resolved_rank<N>.yaml``: the config it
    ran, for audits.
    """

    def __init__(self, cfg: DictConfig, run_dir: Path) -> None:
        self.cfg, self.run_dir = cfg, Path(run_dir)
        self.children: list[subprocess.Popen] = []
        self._saved_env: dict[str, str | None] = {}

    def __enter__(self) -> LocalRanks:
        self._start()
        rank = global_rank()
        if rank > 0 or self.children or (is_ddp(self.cfg) and world_size(self.cfg) > 1):
            path = self.run_dir / ".hydra" / f"resolved_rank{rank}.yaml"
            OmegaConf.save(self.cfg, path, resolve=True)
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self._finish(failed=exc_type is not None)

    def _start(self) -> None:
        cfg, run_dir = self.cfg, self.run_dir
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

    def _finish(self, failed: bool) -> None:
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
