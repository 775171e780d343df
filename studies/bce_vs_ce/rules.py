"""Every judging sentence of the page, each chosen by a small rule on the numbers it cites
(``tests/test_study_rules.py`` moves the numbers and sees the sentence change). No sentence
that judges is written anywhere else.
"""

from __future__ import annotations

import math

from studies.bce_vs_ce.measures import ALPHA, Comparison

HEADS = {"bce": "BCE", "ce": "CE"}


def fmt(value: float, digits: int = 4, sign: bool = False) -> str:
    if math.isnan(value):
        return "-"
    return f"{value:+.{digits}f}" if sign else f"{value:.{digits}f}"


def interval(c: Comparison) -> str:
    """``+0.0012 [-0.0040, +0.0064]``: the mean paired difference and its 95% t-interval."""
    d = c.measure.digits
    if c.missing:
        return f"{c.missing} of {c.n} pair(s) without a value"
    if c.n < 2:
        return f"{fmt(c.mean, d, True)} ({c.n} pair: no interval)" if c.n else "no pairs"
    return f"{fmt(c.mean, d, True)} [{fmt(c.low, d, True)}, {fmt(c.high, d, True)}]"


def verdict(c: Comparison, higher: str, lower: str) -> str:
    """What one paired comparison shows: a difference only if its Holm-adjusted p < ALPHA;
    no difference only if TOST says equivalent within the stated margin; otherwise not
    resolved, with the number of seeds. ``higher``/``lower``: how the page words the sign."""
    if c.missing:
        return (
            f"not tested: {c.missing} of {c.n} seed pair(s) have no value (a level never "
            "reached, or an epoch never trained)"
        )
    if c.n < 2:
        return f"not resolved: {c.n} seed pair(s), a test needs 2 or more"
    if c.p_holm < ALPHA:
        return f"{higher if c.mean > 0 else lower} (Holm-adjusted p = {c.p_holm:.3g})"
    if c.p_tost < ALPHA:
        return f"no difference beyond ±{c.measure.margin:g} (TOST p = {c.p_tost:.3g})"
    return (
        f"not resolved with {c.n} seeds (Holm-adjusted p = {c.p_holm:.3g}; "
        f"not equivalent within ±{c.measure.margin:g}, TOST p = {c.p_tost:.3g})"
    )


def seeds_done(done: int, designed: int, what: str) -> str:
    """``k of 10 seeds done`` for a cell of the design, said plainly when short."""
    if done == 0:
        return f"{what}: no runs yet (0 of {designed} seeds)."
    if done < designed:
        return f"{what}: {done} of {designed} seeds done; the numbers below are provisional."
    return f"{what}: {done} of {designed} seeds done."


def reached(head: str, what: str, epochs: list[float], total: int) -> str:
    """Whether a head's runs reached a level (the homework's "reached 99%"): all, none, or
    some of them, with the epochs where they did."""
    hit = sorted(int(e) for e in epochs if not math.isnan(e))
    if total == 0:
        return f"{HEADS[head]}: no runs yet."
    if not hit:
        return f"{HEADS[head]}: no run reached {what} (0 of {total})."
    where = f"first at epoch {hit[0]}, median {float(_median(hit)):g}"
    if len(hit) == total:
        return f"{HEADS[head]}: every run reached {what} ({total} of {total}; {where})."
    return f"{HEADS[head]}: {len(hit)} of {total} runs reached {what} ({where}), the rest not."


def _median(values: list[int]) -> float:
    values = sorted(values)
    mid = len(values) // 2
    return values[mid] if len(values) % 2 else (values[mid - 1] + values[mid]) / 2


def claim(claimed: str, supports: bool | None) -> str:
    """The homework's claim against the records: supported, contradicted, or not settled."""
    if supports is None:
        return f"*{claimed}*: the records do not settle it."
    return f"*{claimed}*: the records {'support' if supports else 'contradict'} it."


def reach_claim(bce_hits: int, bce_total: int) -> bool | None:
    """ "BCE reached it": supported when every BCE run did, contradicted when none did; not
    settled by fewer than 2 runs or when only some did."""
    if bce_total < 2 or 0 < bce_hits < bce_total:
        return None
    return bce_hits == bce_total


def later_claim(c: Comparison) -> bool | None:
    """ "CE needed more epochs" (CE minus BCE epochs > 0): supported by a Holm-significant
    positive difference, contradicted by a significant negative one or by equivalence."""
    if not c.tested:
        return None
    if c.p_holm < ALPHA:
        return c.mean > 0
    if c.p_tost < ALPHA:
        return False
    return None


def power_sentence(
    sd: float, pairs: int, difference: float, needed: int, have: int, smallest: float
) -> str:
    """What the study could detect, from the pilot's SD and the seeds the records have."""
    if not sd > 0 or pairs < 2:
        return "The pilot gives no seed SD of the paired difference: power not computed."
    text = (
        f"With a seed SD of {sd:.4f} ({pairs} pilot pairs), {needed} seeds give 80% power to "
        f"detect a test-NLL difference of {difference:g} at two-sided alpha {ALPHA:g}. "
    )
    if have < 2:
        return text + f"The records hold {have} primary pair(s): no difference is detectable yet."
    enough = "enough" if have >= needed else "fewer than that"
    return text + (
        f"The records hold {have} primary pairs ({enough}): the smallest difference they "
        f"detect with 80% power is {smallest:.4f}."
    )
