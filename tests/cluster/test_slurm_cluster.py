"""The single-node SLURM test cluster works, and a Hydra sweep runs on it through submitit.

Scheduling (srun, sbatch, squeue), signals to a running job (``scancel --signal=USR1``, the
preemption path) and ``scontrol requeue`` are checked on their own first; then one sweep of the
project goes through ``hydra/launcher=slurm`` as a job array.
"""

from __future__ import annotations

import re
import time

import pytest

from tests.conftest import assert_ok, metrics, run_cli, run_dirs, sweep_dirs, sweep_summary

pytestmark = pytest.mark.slurm


def test_the_node_is_idle_with_the_machines_cpus(slurm):
    out = slurm.run("sinfo", "-h", "-N", "-o", "%N|%t|%c|%P").stdout.split()
    assert out == [f"{slurm.node}|idle|{slurm.cpus}|{slurm.partition}*"]
    assert slurm.squeue() == []


def test_srun_starts_two_tasks(slurm):
    proc = slurm.run(
        "srun",
        "-n2",
        "--overcommit",  # two tasks even on a one-CPU machine
        "bash",
        "-c",
        "echo $SLURM_PROCID $SLURM_NTASKS $(hostname -s)",
        timeout=60,
    )
    assert sorted(proc.stdout.splitlines()) == [f"0 2 {slurm.node}", f"1 2 {slurm.node}"]


def test_a_batch_job_writes_its_file_and_leaves_the_queue(slurm, tmp_path):
    out = tmp_path / "out.txt"
    job = slurm.sbatch(
        f"--output={tmp_path}/slurm-%j.out",
        "--wrap",
        f"echo $SLURM_JOB_ID $SLURM_JOB_PARTITION > {out}",
    )
    assert slurm.wait_for_file(out).split() == [job, slurm.partition]
    slurm.wait_idle(timeout=30)
    assert slurm.squeue() == []


@pytest.mark.parametrize("where", ["batch", "step"])
def test_scancel_signal_usr1_reaches_a_running_job(slurm, tmp_path, where):
    """The preemption path: the job traps USR1 and writes a file.

    ``scancel --signal=USR1`` signals a job's steps (what submitit runs under srun); the batch
    shell itself only gets it with ``--batch`` (or ``--full``).
    """
    body = (
        f"trap 'echo USR1 $SLURM_JOB_ID > {tmp_path}/usr1.txt; exit 0' USR1\n"
        f"echo $$ > {tmp_path}/started\n"
        "for i in $(seq 1200); do sleep 0.1; done\n"  # short sleeps: bash runs the trap between
    )
    script = tmp_path / "job.sh"
    if where == "batch":
        script.write_text("#!/bin/bash\n" + body)
    else:
        (tmp_path / "step.sh").write_text("#!/bin/bash\n" + body)
        script.write_text(f"#!/bin/bash\nsrun bash {tmp_path}/step.sh\n")
    job = slurm.sbatch(f"--output={tmp_path}/slurm-%j.out", str(script))
    slurm.wait_for_file(tmp_path / "started")
    assert slurm.job_state(job) == "RUNNING"
    flags = ["--batch"] if where == "batch" else []
    slurm.run("scancel", "--signal=USR1", *flags, job)
    assert slurm.wait_for_file(tmp_path / "usr1.txt", timeout=30).split() == ["USR1", job]
    slurm.wait_idle(timeout=30)


def test_scontrol_requeue_runs_the_job_again(slurm, tmp_path):
    runs = tmp_path / "runs.txt"
    script = tmp_path / "job.sh"
    script.write_text(
        "#!/bin/bash\n"
        f"echo ${{SLURM_RESTART_COUNT:-0}} >> {runs}\n"
        # the first run waits to be requeued, the second one finishes
        'if [ "${SLURM_RESTART_COUNT:-0}" = 0 ]; then sleep 120; fi\n'
    )
    job = slurm.sbatch("--requeue", f"--output={tmp_path}/slurm-%j.out", str(script))
    assert slurm.wait_for_file(runs) == "0\n"
    slurm.run("scontrol", "requeue", job)
    # a requeued job waits cred_expire (5 s, AuthInfo in slurm.conf) before it starts again
    assert slurm.wait_for_file(runs, timeout=60, lines=2) == "0\n1\n"
    slurm.wait_idle(timeout=30)


def test_submitit_notices_a_job_that_ended_without_a_result(slurm, tmp_path):
    """submitit sees that a job ended (here: cancelled) although it wrote no result.

    submitit learns the state of its jobs from ``sacct``; the cluster has no accounting
    database, so tests/cluster/bin/sacct answers from squeue and the job completion log. Without
    it, a job killed before writing its result keeps the launcher waiting for ever.
    """
    submitit = pytest.importorskip("submitit")
    executor = submitit.AutoExecutor(folder=tmp_path / "%j", cluster="slurm")
    executor.update_parameters(
        slurm_partition=slurm.partition, timeout_min=5, cpus_per_task=1, mem_gb=1
    )
    job = executor.submit(time.sleep, 300)

    def state() -> str:
        return job.get_info(mode="force").get("State", "UNKNOWN")

    deadline = time.monotonic() + 60
    while state() != "RUNNING":
        assert time.monotonic() < deadline, f"job {job.job_id} did not start: {slurm.squeue()}"
        time.sleep(0.2)
    slurm.run("scancel", job.job_id)
    deadline = time.monotonic() + 30
    while not job.done(force_check=True):
        assert time.monotonic() < deadline, f"submitit still waits for {job.job_id}: {state()}"
        time.sleep(0.2)
    assert state() == "CANCELLED" and not job.paths.result_pickle.exists()


@pytest.mark.slow
def test_a_hydra_sweep_runs_as_one_job_array(slurm, workdir):
    proc = run_cli(
        "-m",
        "debug=tiny",
        "loss=bce,ce",
        "seed=0,1",
        "epochs=1",
        "hydra/launcher=slurm",
        f"hydra.launcher.partition={slurm.partition}",
        "hydra.launcher.timeout_min=10",
        "hydra.launcher.cpus_per_task=1",
        "hydra.launcher.mem_gb=1",
        # the preset asks for trainer.devices GPUs per node; this node has none
        "hydra.launcher.gpus_per_node=0",
        cwd=workdir,
        timeout=240,
    )
    assert_ok(proc)
    # submitit followed its jobs through sacct (tests/cluster/bin/sacct), not blindly
    assert "Bypassing sacct error" not in proc.stdout + proc.stderr

    (sweep,) = sweep_dirs(workdir)
    # one sbatch: an array of 4 tasks, <array id>_<task> each
    submitit = sweep / ".submitit"
    tasks = sorted(p.name for p in submitit.iterdir() if re.fullmatch(r"\d+_\d+", p.name))
    array_ids = {name.split("_")[0] for name in tasks}
    assert len(array_ids) == 1, tasks
    (array_id,) = array_ids
    assert tasks == [f"{array_id}_{i}" for i in range(4)]
    submission = (submitit / array_id / f"{array_id}_submission.sh").read_text()
    assert "#SBATCH --array=0-3" in submission
    assert f"#SBATCH --partition={slurm.partition}" in submission
    for task in tasks:
        log = (submitit / task / f"{task}_0_log.out").read_text()
        assert f"job_id={task}," in log and "Job completed successfully" in log

    runs = run_dirs(sweep)
    assert len(runs) == 4
    assert {metrics(r)["status"] for r in runs} == {"completed"}
    assert {(metrics(r)["config"]["loss"], metrics(r)["config"]["seed"]) for r in runs} == {
        ("bce", 0),
        ("bce", 1),
        ("ce", 0),
        ("ce", 1),
    }
    rows = sweep_summary(sweep)
    assert len(rows) == 4 and {r["status"] for r in rows} == {"completed"}

    slurm.wait_idle(timeout=30)
    assert slurm.squeue() == []
