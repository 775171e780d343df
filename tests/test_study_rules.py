"""Every judging sentence of the BCE vs CE page comes from a rule on the numbers it cites:
move the numbers and the sentence changes (studies/bce_vs_ce/rules.py)."""

from __future__ import annotations

import math

from studies.bce_vs_ce import rules
from studies.bce_vs_ce.measures import Measure, family, paired, power, seeds_needed

NLL = Measure("test NLL", lambda r: math.nan, margin=0.01)


def said(diffs: list[float], others: list[list[float]] = ()) -> str:
    """The verdict of CE minus BCE = diffs, Holm-adjusted with the other comparisons."""
    tests = family([paired([(0.0, d) for d in x], NLL, "t") for x in [diffs, *others]])
    return rules.verdict(tests[0], "CE higher", "CE lower")


def test_a_difference_needs_holm_an_equivalence_needs_tost_else_not_resolved():
    clear = [0.020, 0.022, 0.018, 0.021, 0.019]
    assert said(clear).startswith("CE higher (Holm-adjusted p = ")
    assert said([-d for d in clear]).startswith("CE lower (")
    tiny = [0.001, -0.001, 0.0005, -0.0005, 0.0002]
    assert said(tiny).startswith("no difference beyond ±0.01 (TOST p = ")
    noisy = [0.03, -0.02, 0.04, -0.01, 0.02]
    assert said(noisy).startswith("not resolved with 5 seeds (")
    # the same numbers in a family: Holm turns a lone p = 0.03 into "not resolved"
    borderline = [0.025, 0.002, 0.015, 0.0, 0.02, 0.01]
    assert said(borderline).startswith("CE higher")
    assert said(borderline, [[0.0, 0.01, -0.01]] * 3).startswith("not resolved with 6 seeds")
    # a wider margin makes the noisy pairs equivalent
    wide = Measure("test NLL", NLL.of, margin=0.2)
    c = family([paired([(0.0, d) for d in noisy], wide, "t")])[0]
    assert rules.verdict(c, "CE higher", "CE lower").startswith("no difference beyond ±0.2")
    assert said([0.02]).startswith("not resolved: 1 seed pair(s)")
    c = family([paired([(0.0, 1.0), (math.nan, 2.0)], NLL, "t")])[0]
    assert rules.verdict(c, "a", "b").startswith("not tested: 1 of 2 seed pair(s) have no value")


def test_the_homeworks_claims_flip_with_the_runs_that_reached_the_level():
    assert rules.reach_claim(3, 3) is True and rules.reach_claim(0, 3) is False
    assert rules.reach_claim(2, 3) is None and rules.reach_claim(1, 1) is None
    assert rules.claim("BCE reached 0.99", True).endswith("the records support it.")
    assert rules.claim("BCE reached 0.99", False).endswith("the records contradict it.")
    assert rules.claim("BCE reached 0.99", None).endswith("the records do not settle it.")
    assert rules.reached("bce", "x", [5, 9, math.nan], 3).startswith("BCE: 2 of 3 runs reached x")
    assert rules.reached("ce", "x", [5, 9], 2).startswith("CE: every run reached x")
    assert rules.reached("ce", "x", [math.nan], 1).startswith("CE: no run reached x")

    def later(diffs):
        return rules.later_claim(family([paired([(0, d) for d in diffs], NLL, "t")])[0])

    assert later([10, 12, 9, 11]) is True  # CE later, beyond seed noise
    assert later([-10, -12, -9, -11]) is False
    assert later([0.001, -0.001, 0.002, -0.002]) is False  # equivalent within the margin
    assert later([30, -25, 20, -28]) is None


def test_incomplete_cells_and_power_are_said_plainly():
    assert rules.seeds_done(0, 10, "CE").endswith("no runs yet (0 of 10 seeds).")
    assert "4 of 10 seeds done; the numbers below are provisional" in rules.seeds_done(4, 10, "CE")
    assert rules.seeds_done(10, 10, "CE") == "CE: 10 of 10 seeds done."
    sd = 0.008
    needed = seeds_needed(0.01, sd)
    assert power(needed, 0.01, sd) >= 0.8 > power(needed - 1, 0.01, sd)
    assert "(enough)" in rules.power_sentence(sd, 3, 0.01, needed, needed, 0.009)
    assert "(fewer than that)" in rules.power_sentence(sd, 3, 0.01, needed, needed - 1, 0.011)
    assert "no difference is detectable yet" in rules.power_sentence(sd, 3, 0.01, needed, 1, 0)
    assert "power not computed" in rules.power_sentence(math.nan, 1, 0.01, 0, 5, 0)
