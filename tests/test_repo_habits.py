"""Repository habits: the GitHub CI workflow and the pre-commit hooks are valid and complete.

The structural checks read the files with PyYAML (always installed: Hydra needs it). The checks
that run a dev tool (check-jsonschema, actionlint, pre-commit) are skipped when the tool is not
installed; none of them needs the network, except that the first `pre-commit run` installs the
hook environments from PyPI into ~/.cache/pre-commit (once; the test skips when it cannot).
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
import warnings
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
WORKFLOW = ROOT / ".github" / "workflows" / "ci.yml"
PRE_COMMIT_CONFIG = ROOT / ".pre-commit-config.yaml"


def _tool(name: str) -> str | None:
    """``name`` from this interpreter's environment (.venv/bin), else from PATH, else None."""
    local = Path(sys.executable).parent / name
    if local.is_file() and os.access(local, os.X_OK):
        return str(local)
    return shutil.which(name)


def _tool_or_skip(name: str, how: str) -> str:
    """``_tool(name)``, or skip the test, saying ``how`` to install it."""
    tool = _tool(name)
    if tool is None:
        pytest.skip(f"{name} is not installed ({how})")
    return tool


def _run(cmd: list[str], cwd: Path = ROOT, timeout: float = 120) -> subprocess.CompletedProcess:
    # GIT_* variables (set when this runs inside a git hook) would point git at another repo.
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}
    return subprocess.run(
        cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env, check=False
    )


def _load(path: Path) -> dict:
    assert path.is_file(), f"{path.relative_to(ROOT)} is missing"
    data = yaml.safe_load(path.read_text())
    assert isinstance(data, dict), f"{path.relative_to(ROOT)}: not a YAML mapping"
    return data


# --- .github/workflows/ci.yml ---------------------------------------------------------------


def _steps(job: dict) -> list[dict]:
    steps = job.get("steps")
    assert isinstance(steps, list) and steps, "the CI job has no steps"
    return steps


def _uses(step: dict, action: str) -> bool:
    return str(step.get("uses", "")).startswith(f"actions/{action}@")


def _runs(step: dict, command: str) -> bool:
    return str(step.get("run", "")).strip() == command


def _index(steps: list[dict], pred, what: str) -> int:
    hits = [i for i, step in enumerate(steps) if pred(step)]
    assert hits, f"no step {what}"
    return hits[0]


def test_workflow_runs_lint_and_tests_on_both_pythons():
    wf = _load(WORKFLOW)
    # YAML 1.1 (PyYAML) reads a bare `on` key as the boolean True; GitHub reads it as "on".
    on = wf.get("on", wf.get(True))
    assert isinstance(on, dict), f"`on:` should be a mapping of events, got {on!r}"
    assert "push" in on and "pull_request" in on, f"CI must run on push and pull_request: {on}"

    jobs = wf.get("jobs")
    assert isinstance(jobs, dict) and set(jobs) == {"pythons", "test"}, f"jobs: {jobs}"
    job = jobs["test"]
    assert job.get("runs-on") == "ubuntu-latest"
    # the versions come from the job that reads pyproject.toml (next test), none written here
    assert job.get("needs") == "pythons"
    versions = job["strategy"]["matrix"]["python-version"]
    assert versions == "${{ fromJSON(needs.pythons.outputs.versions) }}", versions

    # CPU-only torch on the runners (no GPU there): the CUDA wheels are several GB.
    env = {**wf.get("env", {}), **job.get("env", {})}
    assert "download.pytorch.org/whl/cpu" in env.get("PIP_EXTRA_INDEX_URL", "")

    steps = _steps(job)
    checkout = _index(steps, lambda s: _uses(s, "checkout"), "uses actions/checkout")
    setup = _index(steps, lambda s: _uses(s, "setup-python"), "uses actions/setup-python")
    lint = _index(steps, lambda s: _runs(s, "make lint"), "runs `make lint`")
    test = _index(steps, lambda s: _runs(s, "make test"), "runs `make test`")
    assert checkout < setup < lint < test, "expected checkout, setup-python, make lint, make test"

    with_ = steps[setup].get("with", {})
    assert with_.get("python-version") == "${{ matrix.python-version }}"
    assert with_.get("cache") == "pip"


def test_ci_tests_the_oldest_python_pyproject_allows_and_no_other_source_names_it(tmp_path):
    """pyproject.toml's requires-python is the one source of the oldest supported Python: the
    workflow's `pythons` job, run here as CI runs it, must find that version (3.10, which
    ">=3.11" cannot install, once stood in the matrix), and ruff must target it."""
    from packaging.specifiers import SpecifierSet
    from packaging.version import Version

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    allowed = SpecifierSet(project["project"]["requires-python"])
    job = _load(WORKFLOW)["jobs"]["pythons"]
    (read,) = [s for s in _steps(job) if s.get("id") == "read"]
    output = tmp_path / "github_output"
    proc = subprocess.run(
        ["bash", "-c", read["run"]],
        cwd=ROOT,
        env={
            "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",  # python3 >= 3.11
            "GITHUB_OUTPUT": str(output),
            **read.get("env", {}),
        },
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    key, _, value = output.read_text().strip().partition("=")
    versions = json.loads(value)
    assert key == "versions" and job["outputs"]["versions"] == "${{ steps.read.outputs.versions }}"
    assert all(isinstance(v, str) for v in versions), f"versions as strings: {versions!r}"
    assert all(Version(v) in allowed for v in versions), (versions, str(allowed))
    oldest = Version(versions[0])
    below = Version(f"{oldest.major}.{oldest.minor - 1}")
    assert below not in allowed, f"{below} is allowed by {allowed} but CI starts at {oldest}"
    assert Version(versions[-1]) > oldest, "the newest Python tested is newer than the oldest"
    # the other place pyproject.toml names a Python: ruff's target follows requires-python
    assert project["tool"]["ruff"]["target-version"] == f"py{oldest.major}{oldest.minor}"
    assert not re.search(r"3\.\d+", json.dumps(_load(WORKFLOW)["jobs"]["test"])), (
        "the test job names a Python version of its own"
    )


def test_workflow_matches_github_schema():
    """GitHub's workflow JSON schema, as vendored in check-jsonschema (no network needed)."""
    tool = _tool_or_skip("check-jsonschema", "pip install check-jsonschema")
    proc = _run([tool, "--builtin-schema", "vendor.github-workflows", str(WORKFLOW)])
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_workflow_passes_actionlint():
    tool = _tool_or_skip("actionlint", "its PyPI wrapper downloads it from GitHub")
    proc = _run([tool, "-no-color", str(WORKFLOW)])
    assert proc.returncode == 0, proc.stdout + proc.stderr


# --- .pre-commit-config.yaml ---------------------------------------------------------------


def _hooks() -> dict[str, dict]:
    config = _load(PRE_COMMIT_CONFIG)
    repos = config.get("repos")
    assert isinstance(repos, list) and repos, "no repos in .pre-commit-config.yaml"
    hooks: dict[str, dict] = {}
    for repo in repos:
        # Local hooks with tools pinned from PyPI: installing them needs no hook repository
        # from GitHub (forks behind a proxy, offline mirrors of PyPI).
        assert repo.get("repo") == "local", f"use `repo: local` hooks, not {repo.get('repo')}"
        for hook in repo.get("hooks", []):
            assert hook["id"] not in hooks, f"hook id {hook['id']} appears twice"
            hooks[hook["id"]] = hook
    return hooks


def _command(hook: dict) -> str:
    return " ".join([hook.get("entry", ""), *hook.get("args", [])])


def test_pre_commit_config_has_the_expected_hooks():
    hooks = _hooks()
    expected = {
        "ruff-check": "ruff check",
        "ruff-format": "ruff format",
        "trailing-whitespace": "trailing-whitespace-fixer",
        "end-of-file-fixer": "end-of-file-fixer",
        "check-added-large-files": "check-added-large-files",
    }
    for hook_id, command in expected.items():
        assert hook_id in hooks, f"no {hook_id} hook"
        assert _command(hooks[hook_id]).startswith(command), _command(hooks[hook_id])
    assert "--fix" in _command(hooks["ruff-check"]).split()
    assert "--maxkb=512" in _command(hooks["check-added-large-files"]).split()

    for hook_id, hook in hooks.items():
        if hook.get("language") == "python":
            deps = hook.get("additional_dependencies", [])
            assert deps, f"{hook_id}: no additional_dependencies to install its tool from"
            assert all("==" in d for d in deps), f"{hook_id}: pin its tools exactly: {deps}"

    # The hooks' ruff should be the ruff that `make lint` runs: two ruff versions may format the
    # same file differently. A warning, not a failure: pyproject asks for ruff>=..., so a fresh
    # install may be newer than the pin without anything being wrong with this checkout.
    pins = [d for d in hooks["ruff-check"]["additional_dependencies"] if d.startswith("ruff==")]
    assert pins, "pin ruff in the ruff-check hook (additional_dependencies: [ruff==X.Y.Z])"
    try:
        installed = importlib.metadata.version("ruff")
    except importlib.metadata.PackageNotFoundError:
        installed = None
    if installed is not None and pins[0] != f"ruff=={installed}":
        warnings.warn(
            f".pre-commit-config.yaml pins {pins[0]} but this environment has ruff {installed}:"
            " update the pins (both ruff hooks) to keep `git commit` and `make lint` in step",
            stacklevel=1,
        )


def test_pre_commit_config_validates():
    tool = _tool_or_skip("pre-commit", "pip install pre-commit")
    proc = _run([tool, "validate-config", str(PRE_COMMIT_CONFIG)])
    assert proc.returncode == 0, proc.stdout + proc.stderr


def _snapshot(dest: Path) -> None:
    """The files `git add -A` would commit (tracked and untracked-not-ignored), as they are in
    the working tree, copied into a new git repository at ``dest`` and staged there."""
    listed = _run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"])
    if listed.returncode != 0:
        pytest.skip(f"not a git checkout: {listed.stderr.strip()}")
    for rel in sorted(set(filter(None, listed.stdout.split("\0")))):
        src = ROOT / rel
        if src.is_file() or src.is_symlink():  # deleted-but-tracked files are left out
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel, follow_symlinks=False)
    for cmd in (["git", "init", "-q"], ["git", "add", "-A"]):
        proc = _run(cmd, cwd=dest)
        assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.slow
def test_pre_commit_passes_on_the_working_tree(tmp_path):
    """`pre-commit run --all-files` on a copy of the working tree: the hooks' fixers rewrite the
    copy, never this checkout. About 1 s once the hook environments exist; the first run
    installs them from PyPI (~20 s) and the test skips when that fails (offline)."""
    tool = _tool_or_skip("pre-commit", "pip install pre-commit")
    if shutil.which("git") is None:
        pytest.skip("git is not installed")
    repo = tmp_path / "repo"
    repo.mkdir()
    _snapshot(repo)

    install = _run([tool, "install-hooks"], cwd=repo, timeout=600)
    if install.returncode != 0:
        log = (install.stdout + install.stderr)[-1500:]
        pytest.skip(f"could not install the hook environments (offline?):\n...{log}")

    proc = _run(
        [tool, "run", "--all-files", "--show-diff-on-failure", "--color=never"],
        cwd=repo,
        timeout=300,
    )
    assert proc.returncode == 0, (
        "pre-commit hooks fail on the working tree; `pre-commit run --all-files` fixes what it"
        f" can in place:\n{proc.stdout}{proc.stderr}"
    )
