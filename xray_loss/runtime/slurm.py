"""SLURM from inside a job: its id, how often it was requeued, requeueing it; and the GPUs a
job of a given trainer asks for (the ``xray_loss.slurm_gpus`` resolver of the launcher preset)."""

from __future__ import annotations

import logging
import os
import subprocess
from typing import Any

from omegaconf import OmegaConf

log = logging.getLogger(__name__)


def slurm_gpus(accelerator: Any, devices: Any) -> int | None:
    """GPUs per node for a SLURM job of this trainer: one per device, none on CPUs.

    ``None`` (no ``--gpus-per-node``) when the trainer runs on CPUs, where sbatch would refuse
    a GPU request on a node without GPUs, or when the count is not a number (``devices=auto``:
    set ``hydra.launcher.gpus_per_node`` yourself).
    """
    if str(accelerator) == "cpu":
        return None
    if isinstance(devices, int) or (isinstance(devices, str) and devices.isdigit()):
        return int(devices)
    if isinstance(devices, (list, tuple)) or OmegaConf.is_list(devices):
        return len(devices)
    return None


def slurm_restarts() -> int:
    """How often SLURM has requeued this job (0 outside SLURM and on a job's first run)."""
    try:
        return int(os.environ.get("SLURM_RESTART_COUNT", 0))
    except ValueError:
        return 0


def job_id() -> str:
    """This SLURM job's id as scontrol names it (``<array job>_<task>`` for an array task)."""
    array = os.environ.get("SLURM_ARRAY_JOB_ID")
    if array:
        return f"{array}_{os.environ['SLURM_ARRAY_TASK_ID']}"
    return os.environ["SLURM_JOB_ID"]


def requeue_slurm_job(max_requeues: int) -> str:
    """``scontrol requeue`` this job; says what happened, for the exit message."""
    restarts = slurm_restarts()
    if restarts >= max_requeues:
        return f"not requeued: already requeued {restarts} times (max_requeues); use resume=true"
    try:
        proc = subprocess.run(
            ["scontrol", "requeue", job_id()], capture_output=True, text=True, timeout=60
        )
    except (OSError, subprocess.TimeoutExpired) as err:
        return f"requeueing failed ({err}); continue it with resume=true"
    if proc.returncode != 0:
        reason = (proc.stderr or proc.stdout).strip()
        return f"scontrol requeue {job_id()} failed ({reason}); continue it with resume=true"
    log.info("requeued SLURM job %s", job_id())
    return f"job {job_id()} requeued; it continues from this checkpoint"
