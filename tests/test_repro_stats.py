"""The paired statistics and the verdict rule of the paper reproductions (benchmarks/_repro.py)."""

import math

import pytest
from scipy import stats

from benchmarks._repro import Rule, combine, final_verdict, paired, paired_claim, paired_verdict

SEEDS = [0, 1, 2, 3, 4]


def test_paired_interval_is_the_student_t_interval_of_the_differences():
    a = [0.91, 0.93, 0.95, 0.92, 0.97]
    b = [0.90, 0.90, 0.93, 0.92, 0.94]
    p = paired(a, b, SEEDS)
    d = [x - y for x, y in zip(a, b, strict=True)]
    lo, hi = stats.t.interval(0.95, len(d) - 1, loc=sum(d) / len(d), scale=stats.sem(d))
    assert p["diff"] == pytest.approx(sum(d) / 5)
    assert (p["lo"], p["hi"]) == (pytest.approx(lo), pytest.approx(hi))
    assert (p["mean_a"], p["mean_b"], p["positive"]) == (pytest.approx(0.936), pytest.approx(0.918), 4)


def test_pairing_removes_the_shared_seed_effect():
    # a large common seed effect, a small consistent gain: unpaired std would hide it
    base = [0.89, 0.93, 0.88, 0.95, 0.91]
    p = paired([v + 0.01 for v in base], base, SEEDS)
    assert p["lo"] > 0
    assert paired_verdict(p, Rule("gain")) is True


def test_verdict_rule_yes_partly_no():
    up = paired([1.1, 1.2, 1.15, 1.12, 1.18], 1.0, SEEDS)  # +0.15, interval excludes 0
    assert paired_verdict(up, Rule("x", paper_effect=0.2)) is True
    assert paired_verdict(up, Rule("x", paper_effect=2.0)) == "partly"  # far smaller than the paper's
    noisy = paired([1.5, -0.5, 1.2, -0.2, 0.9], 0.0, SEEDS)  # mean +0.58, interval contains 0
    assert noisy["lo"] < 0 < noisy["diff"]
    assert paired_verdict(noisy, Rule("x", paper_effect=0.5)) == "partly"
    assert paired_verdict(noisy, Rule("x")) is False
    down = paired([0.9, 0.8, 0.85, 0.88, 0.82], 1.0, SEEDS)
    assert paired_verdict(down, Rule("x", paper_effect=0.1)) is False


def test_non_finite_pairs_are_dropped_and_counted():
    p = paired([1.0, math.nan, 3.0, None, 5.0], [0.0, 0.0, 1.0, 1.0, 2.0], SEEDS)
    assert (p["n"], p["dropped"], p["seeds"]) == (3, 2, [0, 2, 4])


def test_combine_and_hidden_seed_rule():
    assert combine([True, True]) is True
    assert combine([False, False]) is False
    assert combine([True, False]) == "partly"
    assert final_verdict(True, True) == "yes"
    assert final_verdict(True, False) == "partly"
    assert final_verdict("partly", False) == "no"
    assert final_verdict(True, "partly") == "partly"
    assert final_verdict(True, None) == "yes"


def test_paired_claim_quotes_its_rule_and_statistics():
    row = paired_claim(
        "x", "claim", "paper", [("A vs B", [2.0] * 5, [1.0, 1.1, 0.9, 1.0, 1.05], Rule("A - B", 0.5))], SEEDS
    )
    assert row["agrees"] is True
    assert "A - B > 0" in row["rule"] and "0.5" in row["rule"]
    assert row["paired"][0]["n"] == 5
    with pytest.raises(ValueError, match="positive"):
        Rule("x", paper_effect=-1.0)
