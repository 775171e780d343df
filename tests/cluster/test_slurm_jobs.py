"""The project's jobs on the single-node SLURM cluster: DDP ranks started by srun, a preempted
job requeued and resumed to the same weights as an uninterrupted one, failed jobs recorded while
the others complete. All through ``hydra/launcher=slurm`` (the preset on submitit)."""

from __future__ import annotations

import re
import subprocess
import time
from pathlib import Path

import pytest
import torch

from tests.conftest import (
    assert_ok,
    metrics,
    run_cli,
    run_dirs,
    start_cli,
    sweep_dirs,
    sweep_summary,
)
from tests.test_dir_lock import lock_is_free

pytestmark = [pytest.mark.slurm, pytest.mark.slow]


def launcher(slurm) -> list[str]:
    """The preset, sized for this machine (its defaults ask for 8 CPUs and 32 GB a task)."""
    return [
        "hydra/launcher=slurm",
        f"hydra.launcher.partition={slurm.partition}",
        "hydra.launcher.timeout_min=10",
        "hydra.launcher.cpus_per_task=1",
        "hydra.launcher.mem_gb=1",
    ]


def the_sweep(workdir: Path) -> Path:
    (sweep,) = sweep_dirs(workdir)
    return sweep


def summary(sweep: Path) -> dict[str, dict]:
    return {row["job"]: row for row in sweep_summary(sweep)}


def test_ddp_ranks_of_a_job_are_tasks_started_by_srun(slurm, workdir):
    ddp = ["trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2"]
    proc = run_cli("-m", "debug=tiny", "epochs=1", *ddp, *launcher(slurm), cwd=workdir, timeout=240)
    assert_ok(proc)
    sweep = the_sweep(workdir)
    (run,) = run_dirs(sweep)
    # asks SLURM for 2 tasks on 1 node, and no GPU on a CPU run
    (submission,) = sweep.glob(".submitit/*/*_submission.sh")
    text = submission.read_text()
    assert "#SBATCH --ntasks-per-node=2" in text and "#SBATCH --nodes=1" in text
    assert "gpus" not in text and "gres" not in text
    # srun started both ranks (submitit's task logs), the project started none
    job = submission.name.split("_")[0]
    for rank in (0, 1):
        log = (submission.parent / f"{job}_{rank}_log.out").read_text()
        assert f"global_rank={rank}(2)" in log and "Job completed successfully" in log
        err = (submission.parent / f"{job}_{rank}_log.err").read_text()
        assert f"Initializing distributed: GLOBAL_RANK: {rank}, MEMBER: {rank + 1}/2" in err
    assert "DDP: started local ranks" not in (run / "train.log").read_text()
    # both ranks ran the same resolved config; one record, of the 2-rank job
    rank0 = (run / ".hydra" / "resolved_rank0.yaml").read_text()
    assert rank0 == (run / ".hydra" / "resolved_rank1.yaml").read_text()
    record = metrics(run)
    assert record["status"] == "completed" and record["world_size"] == 2
    assert [p.name for p in run.glob("*metrics*")] == ["metrics.json"]
    slurm.wait_idle(timeout=30)


# 16 steps an epoch: the signal lands within one, resume.ckpt is saved at the next step; one
# step an epoch: it lands on an epoch's last step, last.ckpt is that state, the run stops as the
# next epoch starts
# (the signal must come before training ends, a second or more after the trigger)
SIZES = {"mid-epoch": ["epochs=6"], "epoch end": ["epochs=30", "data.n_train=16"]}


@pytest.mark.parametrize("where", list(SIZES))
def test_a_preempted_job_is_requeued_and_ends_as_the_uninterrupted_one(slurm, workdir, where):
    """Two jobs of one config (the last.ckpt cadence changes nothing they compute); the second
    (cadence 1) is signalled mid-training as SLURM does before preemption, checkpoints,
    requeues itself and resumes. Both end bit for bit alike."""
    args = [
        "-m",
        "debug=tiny",
        "trainer=cpu",
        *SIZES[where],
        "batch_size=16",
        "threads=1",
        "data.augment.enabled=true",
        "model.backbone.dropout=0.3",
        "checkpoint_every_n_epochs=3,1",
        *launcher(slurm),
    ]
    sweep_proc = start_cli(workdir, *args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        # signal job 1 once its first epoch is done
        deadline = time.monotonic() + 180
        pattern = "logs/train/multirun/*/*checkpoint_every_n_epochs=1*/checkpoints/last.ckpt"
        while not list(workdir.glob(pattern)):
            assert sweep_proc.poll() is None, sweep_proc.stdout.read()[-3000:]
            assert time.monotonic() < deadline, f"no first epoch: {slurm.squeue()}"
            time.sleep(0.05)
        (task,) = [j.split()[0] for j in slurm.squeue() if j.split()[0].endswith("_1")]
        slurm.run("scancel", "--signal=USR1", task)
        out, _ = sweep_proc.communicate(timeout=240)
    finally:
        if sweep_proc.poll() is None:
            sweep_proc.kill()
    assert sweep_proc.returncode == 0, out[-3000:]
    assert "Sweep finished: 2 of 2 job(s) completed" in out

    sweep = the_sweep(workdir)
    preempted, plain = sorted(run_dirs(sweep), key=lambda r: r.name)  # cadence 1, cadence 3
    assert "checkpoint_every_n_epochs=1" in preempted.name
    record, ref = metrics(preempted), metrics(plain)
    assert record["status"] == ref["status"] == "completed"
    assert "resumes" not in ref
    # signalled, checkpointed at the next step, requeued by itself, resumed by the requeued job
    assert "resumes" in record, "the signal came after training (the machine is slow?)"
    (resume,) = record["resumes"]
    assert resume["slurm_restart_count"] == 1
    assert resume["interrupted"]["reason"].startswith("Preempted by SIGUSR1 at step ")
    assert f"job {task} requeued" in resume["interrupted"]["reason"]
    expected = ("resume.ckpt", "last.ckpt") if where == "mid-epoch" else ("last.ckpt",)
    assert Path(resume["checkpoint"]).name in expected
    log = (sweep / ".submitit" / task / f"{task}_0_log.out").read_text()
    assert len(re.findall(rf"Starting with JobEnvironment\(job_id={task},", log)) == 2
    assert len(re.findall(r"^submitit INFO .* Job completed successfully$", log, re.M)) == 1

    for key in ("best_epoch", "best_val_auroc", "epochs_trained", "threshold", "val", "test"):
        assert record[key] == ref[key], key
    for name in ("last.ckpt", Path(ref["best_checkpoint"]).name):
        got = torch.load(preempted / "checkpoints" / name, map_location="cpu", weights_only=True)
        want = torch.load(plain / "checkpoints" / name, map_location="cpu", weights_only=True)
        assert got["global_step"] == want["global_step"]
        for key, tensor in want["state_dict"].items():
            assert torch.equal(got["state_dict"][key], tensor), f"{name}: {key}"
    assert {row["status"] for row in summary(sweep).values()} == {"completed"}
    slurm.wait_idle(timeout=30)
    assert slurm.squeue() == []


def test_failed_jobs_are_recorded_while_the_others_complete(slurm, workdir):
    proc = run_cli(
        "-m",
        "debug=tiny",
        "trainer=cpu",
        "epochs=2",
        "lr=10,-1,1e-3",
        *launcher(slurm),
        cwd=workdir,
        timeout=240,
    )
    assert proc.returncode == 1
    assert "2 job(s) failed" in proc.stderr
    # jobs are named by what the sweep varies: lr
    assert "lr=10: diverged: Training diverged" in proc.stderr
    assert "lr=-1: failed: Invalid value lr=-1" in proc.stderr
    sweep = the_sweep(workdir)
    rows = summary(sweep)
    assert len(rows) == 3
    diverged, bad, good = (rows[f"lr={lr}"] for lr in ("10", "-1", "0.001"))
    assert diverged["status"] == "diverged" and "Training diverged" in diverged["error"]
    assert bad["status"] == "failed" and "Invalid value lr=-1" in bad["error"]
    assert good["status"] == "completed" and float(good["test_auroc"]) > 0
    assert lock_is_free(sweep)
    slurm.wait_idle(timeout=30)
    assert slurm.squeue() == []
