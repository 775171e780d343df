"""The CPU allocator setting: the small CNN's training step with glibc's default malloc
thresholds vs thresholds raised to 1 GiB, set in the process (``mallopt``) or by the
environment (``GLIBC_TUNABLES``; ``MALLOC_*_``, its older aliases).

glibc serves large blocks with mmap and unmaps them on free, so a CPU step that frees its
convolution activations and asks for them again pays page faults for them every step. Each
measurement is a fresh process (the environment form is read when a process starts); the forms
run interleaved, round after round, and the medians over rounds are reported, to damp the noise
of a shared machine; CPU time per step (the process's threads together) is the figure the
other work on a shared machine disturbs least. Minor page faults per step show whether a
setting took effect.

    python bench/allocator.py                  # 64 px (the default) and 128 px, 5 rounds
    python bench/allocator.py --sizes 128 --rounds 3
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

THRESHOLD = 1 << 30  # 1 GiB
ALIASES = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")
TUNABLES = f"glibc.malloc.mmap_threshold={THRESHOLD}:glibc.malloc.trim_threshold={THRESHOLD}"
FORMS: dict[str, dict[str, str]] = {
    "default": {},
    "mallopt": {},  # in the process, before the model is built
    "GLIBC_TUNABLES": {"GLIBC_TUNABLES": TUNABLES},
    "MALLOC_*_": dict.fromkeys(ALIASES, str(THRESHOLD)),
}


def mallopt_thresholds() -> bool:
    """Raise glibc's mmap and trim thresholds from inside the process."""
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    m_trim_threshold, m_mmap_threshold = -1, -3
    return (
        libc.mallopt(m_mmap_threshold, THRESHOLD) == 1
        and libc.mallopt(m_trim_threshold, THRESHOLD) == 1
    )


def child(form: str, size: int, batch: int, steps: int) -> dict[str, float]:
    """One fresh process: ``steps`` timed training steps of the default small CNN + BCE head
    (Adam) on phantom batches at ``size`` px, after 5 warm-up steps."""
    if form == "mallopt" and not mallopt_thresholds():
        raise SystemExit("mallopt refused the thresholds")
    import torch
    from hydra.utils import instantiate

    from bench.overhead import compose_cfg
    from xray_loss.config import register_resolvers
    from xray_loss.data.phantom import generate_phantoms

    register_resolvers()
    torch.manual_seed(0)
    cfg = compose_cfg("small_cnn", size, Path(tempfile.gettempdir()), batch)
    module = instantiate(cfg.module, _recursive_=False, _convert_="all")
    backbone, head = module.backbone.train(), module.head.train()
    params = [*backbone.parameters(), *head.parameters()]
    optimizer = torch.optim.Adam(params, lr=float(cfg.lr))
    images, labels = generate_phantoms(4 * batch, size, seed=0)
    mean, std = float(cfg.model.mean), float(cfg.model.std)
    times, cpu, faults = [], [], []
    for step in range(5 + steps):
        i = (step % 4) * batch
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        start, start_cpu = time.perf_counter(), time.process_time()
        x = (images[i : i + batch].float() / 255.0 - mean) / std
        loss = head.loss(head(backbone(x)), labels[i : i + batch])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if step >= 5:
            times.append(time.perf_counter() - start)
            cpu.append(time.process_time() - start_cpu)
            faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    return {
        "ms": 1000 * statistics.median(times),
        "cpu_ms": 1000 * statistics.median(cpu),
        "faults": statistics.median(faults),
        "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "threads": torch.get_num_threads(),
    }


def measure(form: str, size: int, batch: int, steps: int) -> dict[str, float]:
    env = {k: v for k, v in os.environ.items() if k not in ("GLIBC_TUNABLES", *ALIASES)}
    env.update(FORMS[form])
    args = ["--child", form, "--sizes", str(size), "--batch-size", str(batch)]
    proc = subprocess.run(
        [sys.executable, __file__, *args, "--steps", str(steps)],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        raise SystemExit(f"{form} at {size} px failed:\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", nargs="+", type=int, default=[64, 128])
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds of all forms")
    parser.add_argument("--steps", type=int, default=20, help="timed steps per process")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--forms", nargs="+", default=list(FORMS), choices=list(FORMS))
    parser.add_argument("--child", choices=list(FORMS), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.sizes[0], args.batch_size, args.steps)))
        return

    from bench.common import machine

    print(machine())
    print(
        f"small CNN (default widths) + BCE head, Adam, batch {args.batch_size}; one fresh process "
        f"per measurement, {args.steps} timed steps each (their median); median over {args.rounds} "
        f"interleaved rounds, best round; CPU time: all threads of the process"
    )
    results: dict[tuple[int, str], list[dict[str, float]]] = {}
    for r in range(args.rounds):
        for size in args.sizes:
            # rotate the order each round: no form always runs first or last
            order = args.forms[r % len(args.forms) :] + args.forms[: r % len(args.forms)]
            for form in order:
                got = measure(form, size, args.batch_size, args.steps)
                results.setdefault((size, form), []).append(got)
                print(f"round {r + 1}: {size} px {form}: {got}", file=sys.stderr, flush=True)
    print(
        f"{'px':>4s} {'setting':15s} {'wall ms/step':>12s} {'best':>7s} {'vs default':>10s} "
        f"{'CPU ms/step':>11s} {'vs default':>10s} {'faults/step':>11s} {'peak RSS MB':>11s}"
    )
    for size in args.sizes:
        base = results[(size, args.forms[0])]
        base_ms = statistics.median(m["ms"] for m in base)
        base_cpu = statistics.median(m["cpu_ms"] for m in base)
        for form in args.forms:
            runs = results[(size, form)]
            ms = statistics.median(m["ms"] for m in runs)
            cpu = statistics.median(m["cpu_ms"] for m in runs)
            print(
                f"{size:4d} {form:15s} {ms:12.1f} {min(m['ms'] for m in runs):7.1f} "
                f"{base_ms / ms:9.2f}x {cpu:11.1f} {base_cpu / cpu:9.2f}x "
                f"{statistics.median(m['faults'] for m in runs):11.0f} "
                f"{statistics.median(m['rss_mb'] for m in runs):11.0f}",
                flush=True,
            )
    print(f"torch threads per process: {results[(args.sizes[0], args.forms[0])][0]['threads']}")


if __name__ == "__main__":
    main()
