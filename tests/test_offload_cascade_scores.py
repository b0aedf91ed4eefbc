"""Confidence scores and the policy that calls an answer hard."""

from __future__ import annotations

import numpy as np
import pytest

from edge_agent.offload.scores import SCORES, Policy, confidence

ONE_HOT = [0.0, 1.0, 0.0, 0.0]
UNIFORM = [0.25, 0.25, 0.25, 0.25]
SPLIT = [0.5, 0.5, 0.0, 0.0]


@pytest.mark.parametrize(
    ("score", "expected"),
    [
        ("max_probability", [1.0, 0.25, 0.5]),
        ("margin", [1.0, 0.0, 0.0]),
        ("entropy", [1.0, 0.0, 0.5]),
    ],
)
def test_each_score_ranks_a_sure_answer_above_an_unsure_one(
    score: str, expected: list[float]
) -> None:
    got = confidence(np.array([ONE_HOT, UNIFORM, SPLIT]), score)
    np.testing.assert_allclose(got, expected, atol=1e-6)


def test_the_policy_offloads_below_its_threshold_only() -> None:
    policy = Policy("max_probability", 0.6)
    hard = policy.is_hard(np.array([ONE_HOT, UNIFORM, SPLIT, [0.0, 0.6, 0.4, 0.0]]))
    assert hard.tolist() == [False, True, True, False]


@pytest.mark.parametrize("score", SCORES)
def test_scores_stay_in_zero_to_one_on_random_rows(score: str) -> None:
    rows = np.random.default_rng(0).dirichlet(np.ones(10), size=500)
    got = confidence(rows, score)
    assert got.shape == (500,) and got.min() >= 0.0 and got.max() <= 1.0


def test_bad_arguments_name_what_was_wrong() -> None:
    with pytest.raises(ValueError, match="unknown score 'surprise'"):
        Policy("surprise", 0.5)
    with pytest.raises(ValueError, match=r"threshold 1.5 is not in \[0, 1\]"):
        Policy("margin", 1.5)
    with pytest.raises(ValueError, match=r"\(n, classes>=2\), got \(3,\)"):
        confidence(np.array([0.1, 0.2, 0.7]), "margin")
