"""BCE vs CE at equal settings: differences paired by seed and fold, a sign-flip test.

Within a cell (the settings without the loss group) the ``loss=bce`` and ``loss=ce`` runs of
each (seed, fold) form a pair. The pooled test first averages each seed's differences over the
settings, since differences that share a seed (same initialisation and data order) are not
independent. Sign-flip permutation test: exact up to 16 pairs, else Monte Carlo with
p = (k + 1) / (N + 1), never 0.
"""

from __future__ import annotations

import itertools
import math
from collections import defaultdict
from typing import Any

import numpy as np

from xray_loss.identity import repeat_keys
from xray_loss.report.runs import Run, columns, sort_key, value
from xray_loss.report.stats import mean_std


def sign_flip_test(differences: list[float], n_random: int = 20000, seed: int = 0) -> float:
    """Two-sided p-value of a paired sign-flip permutation test.

    Exact (all 2^n sign patterns) for n <= 16; otherwise ``n_random`` random patterns with the
    observed one counted in, p = (k + 1) / (N + 1), so a Monte Carlo p is never 0.
    """
    d = np.asarray(differences, dtype=float)
    n = len(d)
    if n == 0:
        return math.nan
    observed = abs(d.mean())
    if n <= 16:
        flips = np.array(list(itertools.product((-1, 1), repeat=n)))
        return float((np.abs((flips * d).mean(1)) >= observed - 1e-12).mean())
    flips = np.random.default_rng(seed).choice((-1, 1), size=(n_random, n))
    k = int((np.abs((flips * d).mean(1)) >= observed - 1e-12).sum())
    return (k + 1) / (n_random + 1)


def smallest_p(n: int) -> float:
    """The smallest two-sided p an exact sign-flip test over n pairs can reach."""
    return 2.0 / 2**n if n <= 16 else 0.0


def _cell(run: Run) -> tuple:
    """A run's settings without the head (the loss group) and without its repeats."""
    return tuple(
        sorted(
            (k, str(v))
            for k, v in run.settings.items()
            if k != "loss" and not k.startswith("loss.") and k not in repeat_keys()
        )
    )


def paired_loss_tests(runs: list[Run]) -> list[dict[str, Any]]:
    """BCE vs CE test AUROC (CE - BCE) at equal settings, paired by seed and fold.

    Within a cell (the settings without the loss group) the ``loss=bce`` and ``loss=ce`` runs
    of each (seed, fold) form a pair. A cell where several runs of one head share a seed and
    fold (e.g. a swept ``loss.pos_weight``) is not paired, and says so. The pooled row averages
    each (seed, fold)'s differences over the cells, then tests those means.
    """
    plain = [r for r in runs if r.config.get("loss") in ("bce", "ce")]
    cols = [c for c in columns([r.record for r in plain]) if c != "loss" and c[:5] != "loss."]
    cells: dict[tuple, dict[tuple, dict[str, list[Run]]]] = defaultdict(
        lambda: defaultdict(lambda: defaultdict(list))
    )
    for r in plain:
        cells[_cell(r)][(r.seed, str(r.fold))][r.config["loss"]].append(r)
    results, by_repeat = [], defaultdict(list)
    for slots in cells.values():
        first = next(r for slot in slots.values() for group in slot.values() for r in group)
        setting = {c: value(first.record, c) for c in cols}
        paired = {k: s for k, s in slots.items() if s["bce"] and s["ce"]}
        if not paired:
            continue
        if any(len(s["bce"]) > 1 or len(s["ce"]) > 1 for s in paired.values()):
            note = "not paired: several runs of one head share a seed and fold"
            results.append({"setting": setting, "n": 0, "verdict": note})
            continue
        diffs = {k: s["ce"][0].test("auroc") - s["bce"][0].test("auroc") for k, s in paired.items()}
        for k, d in diffs.items():
            by_repeat[k].append(d)
        results.append(_test_row(setting, list(diffs.values())))
    results.sort(key=lambda t: [sort_key(t["setting"][c]) for c in cols])
    tested = [t for t in results if t["n"]]
    if len(tested) > 1:
        means = [float(np.mean(v)) for v in by_repeat.values()]
        row = _test_row({"all settings pooled": ""}, means)
        row["pairs"] = f"{sum(t['n'] for t in tested)} pairs from {len(means)} seed(s)"
        results.append(row)
    return results


def _test_row(setting: dict[str, Any], diffs: list[float]) -> dict[str, Any]:
    p = sign_flip_test(diffs)
    n = len(diffs)
    if smallest_p(n) > 0.05:
        verdict = f"undecidable with {n} seed(s): smallest possible p is {smallest_p(n):.2f}"
    elif p < 0.05:
        verdict = "larger than seed noise (p < 0.05)"
    else:
        verdict = "within seed noise"
    mean, std = mean_std(diffs)
    return {
        "setting": setting,
        "n": n,
        "pairs": f"{n} pair(s)",
        "mean_diff": mean,
        "std_diff": std,
        "p": p,
        "verdict": verdict,
    }
