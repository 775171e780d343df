"""A real single-node SLURM cluster for the tests in this directory (``make test-slurm``).

The session fixture ``slurm_cluster`` starts munged, slurmctld and slurmd with
``tests/cluster/slurm_up.sh`` in a temporary directory, points ``SLURM_CONF`` at it in
``os.environ`` for the whole session (so ``python -m xray_loss.train -m hydra/launcher=slurm``
in a subprocess submits there), puts ``tests/cluster/bin`` (an ``sacct`` that works without an
accounting database, for submitit) first on PATH, and stops the cluster at the end. Tests take
``slurm``: the same cluster, with none of our jobs queued before and after the test.

Needs root and the Debian packages slurm-wlm and munge. Without them the tests are skipped,
except under CI (``CI=true``), where ``.ci/run`` installs them and their absence is an error.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
UP = HERE / "slurm_up.sh"
DOWN = HERE / "slurm_down.sh"
BIN = HERE / "bin"
TOOLS = (
    "sbatch",
    "srun",
    "squeue",
    "sinfo",
    "scontrol",
    "scancel",
    "slurmctld",
    "slurmd",
    "munged",
)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "slurm: jobs on the single-node test cluster of tests/cluster (root, slurm-wlm, munge)",
    )


@dataclass
class SlurmCluster:
    """The running test cluster: where it lives and small helpers around the client commands."""

    state_dir: Path
    conf: Path
    partition: str
    node: str
    cpus: int
    env: dict[str, str] = field(default_factory=dict)

    @property
    def log_dir(self) -> Path:
        return self.state_dir / "log"

    def run(
        self, *args: str, check: bool = True, timeout: float = 60
    ) -> subprocess.CompletedProcess:
        """A client command (``sinfo``, ``sbatch``, ...) against this cluster; text output."""
        proc = subprocess.run(
            list(args),
            capture_output=True,
            text=True,
            timeout=timeout,
            env={**os.environ, "SLURM_CONF": str(self.conf)},
        )
        if check and proc.returncode != 0:
            raise AssertionError(
                f"{' '.join(args)} exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
                f"\n{self.log_tail()}"
            )
        return proc

    def sbatch(self, *args: str) -> str:
        """Submit a batch job; returns its id."""
        return self.run("sbatch", "--parsable", *args).stdout.strip().split(";")[0]

    def node_state(self) -> str:
        return self.run("sinfo", "-h", "-N", "-n", self.node, "-o", "%t").stdout.strip()

    def squeue(self) -> list[str]:
        """The current user's jobs: one ``"<job id> <state> <name>"`` line per job or array task."""
        user = pwd.getpwuid(os.getuid()).pw_name
        out = self.run("squeue", "-h", "-r", "-u", user, "-o", "%i %T %j").stdout
        return [line.strip() for line in out.splitlines() if line.strip()]

    def job_state(self, job_id: str) -> str | None:
        """The job's state while slurmctld still lists it (``MinJobAge``), else None."""
        out = self.run("squeue", "-h", "-t", "all", "-j", job_id, "-o", "%T", check=False)
        return out.stdout.strip() or None

    def wait_idle(self, timeout: float = 60) -> None:
        """Wait until the current user has no job left in squeue."""
        deadline = time.monotonic() + timeout
        while jobs := self.squeue():
            if time.monotonic() > deadline:
                raise TimeoutError(f"jobs still queued after {timeout}s: {jobs}\n{self.log_tail()}")
            time.sleep(0.2)

    def wait_for_file(self, path: Path, timeout: float = 60, lines: int = 1) -> str:
        """Wait until a job wrote ``lines`` complete lines to ``path``; returns the text."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if path.exists():
                text = path.read_text()
                if text.count("\n") >= lines:
                    return text
            time.sleep(0.1)
        raise TimeoutError(
            f"{path} did not get {lines} line(s) within {timeout}s; squeue: {self.squeue()}"
            f"\n{self.log_tail()}"
        )

    def cancel_all(self) -> None:
        """Cancel every job of the current user (test cleanup)."""
        user = pwd.getpwuid(os.getuid()).pw_name
        self.run("scancel", "-u", user, check=False)

    def log_tail(self, lines: int = 15) -> str:
        """The last lines of the daemons' logs, for failure messages."""
        parts = []
        for log in sorted(self.log_dir.glob("*.log")):
            tail = log.read_text(errors="replace").splitlines()[-lines:]
            parts.append(f"---- {log}\n" + "\n".join(tail))
        return "\n".join(parts)


def _missing_requirements() -> str | None:
    path = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"])  # the daemons
    missing = [tool for tool in TOOLS if shutil.which(tool, path=path) is None]
    if missing:
        return f"SLURM/munge commands not on PATH: {', '.join(missing)}"
    if os.geteuid() != 0:
        return "the test cluster runs its daemons and jobs as root; run as root"
    return None


def _state_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    state = tmp_path_factory.mktemp("slurm")
    # unix socket paths (munge, slurmd's spool) must stay well under 108 characters
    if len(str(state)) > 60:
        state = Path(tempfile.mkdtemp(prefix="xray-slurm-"))
    return state


@pytest.fixture(scope="session")
def slurm_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SlurmCluster]:
    problem = _missing_requirements()
    if problem:
        if os.environ.get("CI") == "true":
            pytest.fail(
                f"{problem}. Under CI, .ci/run should have installed slurm-wlm and munge "
                "(apt-get install -y slurm-wlm munge, as root).",
                pytrace=False,
            )
        pytest.skip(f"no SLURM test cluster: {problem} (Debian: apt-get install slurm-wlm munge)")

    state = _state_dir(tmp_path_factory)
    up = subprocess.run(["bash", str(UP), str(state)], capture_output=True, text=True, timeout=180)
    if up.returncode != 0:
        pytest.fail(
            f"{UP} {state} failed (exit {up.returncode}):\n{up.stdout}\n{up.stderr}", pytrace=False
        )
    env = dict(line.split("=", 1) for line in up.stdout.splitlines() if "=" in line)
    cluster = SlurmCluster(
        state_dir=state,
        conf=Path(env["SLURM_CONF"]),
        partition=env["SLURM_TEST_PARTITION"],
        node=env["SLURM_TEST_NODE"],
        cpus=int(env["SLURM_TEST_CPUS"]),
        env=env,
    )
    saved = {key: os.environ.get(key) for key in ("SLURM_CONF", "PATH")}
    os.environ["SLURM_CONF"] = str(cluster.conf)
    os.environ["PATH"] = f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"
    try:
        yield cluster
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        down = subprocess.run(
            ["bash", str(DOWN), str(state)], capture_output=True, text=True, timeout=120
        )
        if down.returncode != 0:
            pytest.fail(
                f"{DOWN} {state} failed (exit {down.returncode}):\n{down.stdout}\n{down.stderr}",
                pytrace=False,
            )


@pytest.fixture
def slurm(slurm_cluster: SlurmCluster) -> Iterator[SlurmCluster]:
    """The session's cluster, with no job of ours queued before and after the test.

    Jobs a test leaves behind are cancelled (and waited for) after it.
    """
    slurm_cluster.wait_idle(timeout=30)
    yield slurm_cluster
    if slurm_cluster.squeue():
        slurm_cluster.cancel_all()
    slurm_cluster.wait_idle(timeout=30)
