"""BCE vs CE at equal settings: differences paired by seed and fold, a sign-flip test.

Within a cell (the settings without the loss group) the ``loss=bce`` and ``loss=ce`` runs of
each (seed, fold) form a pair. The pooled test first averages each seed's differences over the
settings, since differences that share a seed (same initialisation and data order) are not
independent. Sign-flip permutation test: exact up to 16 pairs, else Monte Carlo with
p = (k + 1) / (N + 1), never 0. The cells' p-values are Holm-adjusted across the cells (the
verdicts use them); a NaN difference is refused, naming its cell; with a ``margin`` a cell
within seed noise is also tested for equivalence (TOST), the only way to claim "no
difference".
"""

from __future__ import annotations

import itertools
import math
from collections import defaultdict
from typing import Any

import numpy as np

from xray_loss.identity import repeat_keys
from xray_loss.report.runs import Run, columns, sort_key, value
from xray_loss.report.stats import finite, holm, mean_std, tost


def sign_flip_test(
    differences: list[float], n_random: int = 20000, seed: int = 0, cell: str = "the differences"
) -> float:
    """Two-sided p-value of a paired sign-flip permutation test.

    Exact (all 2^n sign patterns) for n <= 16; otherwise ``n_random`` random patterns with the
    observed one counted in, p = (k + 1) / (N + 1), so a Monte Carlo p is never 0. A NaN
    difference is refused (:func:`report.stats.finite`, naming ``cell``).
    """
    d = finite(differences, cell)
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


def paired_loss_tests(runs: list[Run], margin: float | None = None) -> list[dict[str, Any]]:
    """BCE vs CE test AUROC (CE - BCE) at equal settings, paired by seed and fold.

    Within a cell (the settings without the loss group) the ``loss=bce`` and ``loss=ce`` runs
    of each (seed, fold) form a pair. A cell where several runs of one head share a seed and
    fold (e.g. a swept ``loss.pos_weight``) is not paired, and says so. The pooled row averages
    each (seed, fold)'s differences over the cells, then tests those means. ``p_holm``: the
    cells' p-values adjusted across the cells (the pooled row is one test of its own);
    ``margin``: the AUROC difference that counts as none, for the equivalence test (TOST).
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
        missing = [
            f"seed {seed}" + ("" if fold == "None" else f" fold {fold}")
            for (seed, fold), d in diffs.items()
            if math.isnan(d)
        ]
        where = ", ".join(f"{c}={setting[c]}" for c in cols) or "the one setting"
        finite(list(diffs.values()), f"BCE vs CE test AUROC at {where} ({', '.join(missing)})")
        for k, d in diffs.items():
            by_repeat[k].append(d)
        results.append(_test_row(setting, list(diffs.values()), margin))
    results.sort(key=lambda t: [sort_key(t["setting"][c]) for c in cols])
    tested = [t for t in results if t["n"]]
    for t, adjusted in zip(tested, holm([t["p"] for t in tested]), strict=True):
        t["p_holm"] = adjusted
        t["verdict"] = _verdict(t, adjusted, len(tested), margin)
    if len(tested) > 1:
        means = [float(np.mean(v)) for v in by_repeat.values()]
        row = _test_row({"all settings pooled": ""}, means, margin)
        row["verdict"] = _verdict(row, row["p"], 1, margin)
        row["pairs"] = f"{sum(t['n'] for t in tested)} pairs from {len(means)} seed(s)"
        results.append(row)
    return results


def _test_row(setting: dict[str, Any], diffs: list[float], margin: float | None) -> dict[str, Any]:
    mean, std = mean_std(diffs)
    row = {
        "setting": setting,
        "n": len(diffs),
        "pairs": f"{len(diffs)} pair(s)",
        "mean_diff": mean,
        "std_diff": std,
        "p": sign_flip_test(diffs),
    }
    if margin is not None:
        row["margin"] = margin
        row["p_tost"] = tost(diffs, margin, f"BCE vs CE test AUROC at {setting}")
    return row


def _verdict(row: dict[str, Any], p: float, cells: int, margin: float | None) -> str:
    """What a row's (adjusted, across ``cells``) p says: a difference, equivalence within the
    margin (TOST), or neither."""
    n = row["n"]
    family = f"Holm-adjusted over {cells} cells, " if cells > 1 else ""
    if p < 0.05:
        return f"larger than seed noise ({family}p = {p:.3f})"
    if margin is not None and row["p_tost"] < 0.05:
        return f"equivalent within ±{margin:g} (TOST p = {row['p_tost']:.3f})"
    if smallest_p(n) > 0.05:
        return f"undecidable with {n} seed(s): smallest possible p is {smallest_p(n):.2f}"
    no_claim = "" if margin is None else f", not shown equivalent within ±{margin:g}"
    return f"within seed noise ({family}p = {p:.3f}{no_claim})"
