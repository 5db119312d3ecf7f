"""Metrics against naive reference implementations (plain loops) and hand-made cases."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dqecir.metrics import (
    average_precision_at_k,
    group_average,
    map_at_k,
    recall_at_k,
    recall_subset_at_k,
    subset_ranking,
)

FAST = settings(max_examples=60, deadline=None)

# ---- naive references -------------------------------------------------------------------


def naive_recall(rankings, targets, k):
    hits = 0
    for ranking, target in zip(rankings, targets, strict=True):
        for i in range(min(k, len(ranking))):
            if ranking[i] == target:
                hits += 1
                break
    return 100.0 * hits / len(rankings)


def naive_ap(ranking, gts, k):
    gts = set(gts)
    total = 0.0
    for i in range(min(k, len(ranking))):
        if ranking[i] in gts:
            precision = sum(1 for j in range(i + 1) if ranking[j] in gts) / (i + 1)
            total += precision
    return total / min(k, len(gts))


# ---- strategies ---------------------------------------------------------------------------

IMAGES = [f"im{i}" for i in range(12)]


@st.composite
def ranked_queries(draw):
    n = draw(st.integers(1, 6))
    rankings, targets, gts = [], [], []
    for _ in range(n):
        ranking = draw(st.lists(st.sampled_from(IMAGES), max_size=12, unique=True))
        gt = draw(st.lists(st.sampled_from(IMAGES), min_size=1, max_size=5, unique=True))
        rankings.append(ranking)
        targets.append(gt[0])
        gts.append(gt)
    return rankings, targets, gts


# ---- list versions ----------------------------------------------------------------------------


@FAST
@given(ranked_queries(), st.integers(1, 14))
def test_recall_matches_naive(data, k):
    rankings, targets, _ = data
    assert recall_at_k(rankings, targets, k) == pytest.approx(naive_recall(rankings, targets, k))


@FAST
@given(ranked_queries(), st.integers(1, 14))
def test_map_matches_naive(data, k):
    rankings, _, gts = data
    expected = (
        100.0 * sum(naive_ap(r, g, k) for r, g in zip(rankings, gts, strict=True)) / len(rankings)
    )
    assert map_at_k(rankings, gts, k) == pytest.approx(expected)


def test_recall_hand_made():
    rankings = [["a", "b", "c"], ["c", "a", "b"], ["b", "c", "a"]]
    assert recall_at_k(rankings, ["a", "a", "a"], 1) == pytest.approx(100 / 3)
    assert recall_at_k(rankings, ["a", "a", "a"], 2) == pytest.approx(200 / 3)
    assert recall_at_k(rankings, ["a", "a", "a"], 50) == 100.0
    assert recall_at_k([["a"]], ["z"], 10) == 0.0


def test_ap_hand_made():
    # 2 of 3 ground truths at ranks 1 and 3: (1/1 + 2/3) / min(K, 3)
    ranking = ["g1", "x", "g2", "y", "z"]
    assert average_precision_at_k(ranking, {"g1", "g2", "g3"}, 5) == pytest.approx((1 + 2 / 3) / 3)
    # K = 2 < |GT|: only rank 1 counts, divided by K
    assert average_precision_at_k(ranking, {"g1", "g2", "g3"}, 2) == pytest.approx(1 / 2)
    # one ground truth at rank 4
    assert average_precision_at_k(["a", "b", "c", "g"], ["g"], 10) == pytest.approx(1 / 4)
    assert average_precision_at_k(["g", "h"], ["g", "h"], 10) == 1.0
    assert map_at_k([["g", "h"], ["x", "y"]], [["g", "h"], ["y"]], 10) == pytest.approx(75.0)


def test_metric_argument_errors():
    with pytest.raises(ValueError, match="k must be"):
        recall_at_k([["a"]], ["a"], 0)
    with pytest.raises(ValueError, match="no queries"):
        recall_at_k([], [], 1)
    with pytest.raises(ValueError, match="rankings but"):
        map_at_k([["a"]], [], 1)
    with pytest.raises(ValueError, match="ground truth"):
        average_precision_at_k(["a"], [], 1)


def test_subset_ranking_order_and_absent_members():
    members = ["ref", "m1", "m2", "m3", "m4"]
    ranking = ["x", "m3", "y", "ref", "m1"]
    assert subset_ranking(ranking, members, "ref") == ["m3", "m1", "m2", "m4"]
    # an absent target goes after every other absent member (worst case)
    assert subset_ranking(ranking, members, "ref", target="m2") == ["m3", "m1", "m4", "m2"]
    # a present target keeps its place
    assert subset_ranking(ranking, members, "ref", target="m1") == ["m3", "m1", "m2", "m4"]
    subsets = [subset_ranking(ranking, members, "ref", target=t) for t in ("m3", "m2")]
    assert recall_subset_at_k(subsets, ["m3", "m2"], 1) == 50.0
    assert recall_subset_at_k(subsets, ["m3", "m2"], 3) == 50.0


@FAST
@given(
    st.lists(st.sampled_from(IMAGES), unique=True),
    st.lists(st.sampled_from(IMAGES), min_size=1, max_size=6, unique=True),
)
def test_subset_ranking_properties(ranking, members):
    reference = members[0]
    result = subset_ranking(ranking, members, reference)
    assert sorted(result) == sorted(m for m in members if m != reference)
    present = [r for r in ranking if r in members and r != reference]
    assert result[: len(present)] == present


def test_group_average():
    out = group_average(
        {
            "dress": {"recall@10": 30.0, "num_queries": 3},
            "shirt": {"recall@10": 20.0, "num_queries": 2},
        }
    )
    assert out == {
        "dress/recall@10": 30.0,
        "dress/num_queries": 3.0,
        "shirt/recall@10": 20.0,
        "shirt/num_queries": 2.0,
        "average/recall@10": 25.0,
        "num_queries": 5.0,
    }
    with pytest.raises(ValueError, match="reports"):
        group_average({"dress": {"recall@10": 1.0}, "shirt": {"recall@50": 1.0}})
