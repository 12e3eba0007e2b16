"""The Pareto front of (mIoU, cost) and the pick rules that choose from it (``contract.pareto``), pure.
Two-objective studies and the commands that pick: tests/test_objectives.py."""

from __future__ import annotations

import math

import pytest
from test_objectives import VALUES

from contract.pareto import Pick, PickError, PickRule, Point, front


def test_front_keeps_what_nothing_beats_on_both_and_equal_points():
    points = [Point(n, m, c) for n, (m, c) in enumerate(VALUES)] + [Point(5, 0.60, 100.0), Point(6, math.nan, 1.0)]
    assert [p.number for p in front(points)] == [2, 5, 1, 0]  # by cost; 2 and 5 are equal: both kept
    assert front([]) == []
    # The same as the quadratic definition, on random points with many ties.
    import random

    rng = random.Random(0)
    many = [Point(i, rng.choice([0.1, 0.2, 0.3, 0.4]), rng.choice([1.0, 2.0, 3.0])) for i in range(60)]
    slow = [
        p
        for p in many
        if not any(q.miou >= p.miou and q.cost <= p.cost and (q.miou > p.miou or q.cost < p.cost) for q in many)
    ]
    assert sorted(p.number for p in front(many)) == sorted(p.number for p in slow)


def test_pick_rules_choose_from_the_front():
    points = [Point(n, m, c) for n, (m, c) in enumerate(VALUES)]
    assert Pick.parse("best-miou").choose(points).number == 0  # 0.70; ties with 4 -> the smaller cost
    assert Pick.parse("smallest-within 0.01").choose(points).number == 1  # 0.695 >= 0.69, 200 params
    assert Pick.parse("smallest-within 0.2").choose(points).number == 2
    assert Pick.parse("smallest-within 0").choose(points).number == 0
    assert Pick().choose([]) is None


@pytest.mark.parametrize(
    "text, rule, within",
    [
        ("best-miou", PickRule.BEST_MIOU, None),
        ("  BEST-MIOU ", PickRule.BEST_MIOU, None),
        ("smallest-within 0.01", PickRule.SMALLEST_WITHIN, 0.01),
        ("smallest-within=0.01", PickRule.SMALLEST_WITHIN, 0.01),
        ("smallest-within 0", PickRule.SMALLEST_WITHIN, 0.0),
    ],
)
def test_pick_parses_both_spellings(text, rule, within):
    pick = Pick.parse(text)
    assert (pick.rule, pick.within) == (rule, within)
    assert Pick.parse(str(pick)) == pick


@pytest.mark.parametrize(
    "text",
    [
        "",
        "best",
        "smallest-within",
        "smallest-within -0.1",
        "smallest-within nan",
        "smallest-within inf",
        "smallest-within 0.01 0.02",
        "smallest-within x",
    ],
)
def test_pick_refuses_anything_else_in_one_message(text):
    with pytest.raises(PickError, match="is not a pick rule: use best-miou or 'smallest-within D'"):
        Pick.parse(text)
