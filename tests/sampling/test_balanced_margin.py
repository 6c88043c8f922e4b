import numpy as np
import pytest
from datasets import Dataset

from asym_st.sampling import BalancedMarginSampler, MarginPairsConfig, build_margin_pairs


def test_equal_width_bins_by_hand():
    # q0: margins 0 .. 1 -> width 0.1; q1: its own range 10 .. 12 -> width 0.2
    margins = [0.0, 0.05, 0.5, 1.0, 10.0, 10.39, 12.0]
    sampler = BalancedMarginSampler(["q0"] * 4 + ["q1"] * 3, margins, num_bins=10)
    assert sampler.query_ids == ["q0", "q1"]
    assert sampler.row_bin.tolist() == [0, 0, 5, 9, 0, 1, 9]
    assert {b: rows.tolist() for b, rows in sampler.bins_of(0).items()} == {0: [0, 1], 5: [2], 9: [3]}
    assert {b: rows.tolist() for b, rows in sampler.bins_of(1).items()} == {0: [4], 1: [5], 9: [6]}
    assert sampler.rows_of(1).tolist() == [4, 5, 6]


def test_equal_margins_make_one_bin():
    sampler = BalancedMarginSampler(["q"] * 3, [2.0, 2.0, 2.0], num_bins=10)
    assert sampler.row_bin.tolist() == [0, 0, 0]
    assert list(sampler.bins_of(0)) == [0]


def test_balancing_favours_rare_margins_and_one_bin_is_uniform():
    # 99 easy pairs (margin 9..10, last bin) and one hard pair (margin 0, first bin)
    margins = [0.0] + list(np.linspace(9.0, 10.0, 99))
    rng = np.random.default_rng(0)
    balanced = BalancedMarginSampler(["q"] * 100, margins, num_bins=10)
    draws = np.array([balanced.sample([0], rng)[0] for _ in range(4000)])
    assert 0.45 < np.mean(draws == 0) < 0.55  # one of two non-empty bins
    uniform = BalancedMarginSampler(["q"] * 100, margins, num_bins=1)
    draws = np.array([uniform.sample([0], rng)[0] for _ in range(4000)])
    assert np.mean(draws == 0) < 0.03  # ~1 %
    assert len(np.unique(draws)) > 90


def test_sample_epoch_gives_one_own_row_per_query_and_is_seeded():
    row_queries = ["a", "b", "a", "c", "b", "a"]
    sampler = BalancedMarginSampler(row_queries, [1.0, 2.0, 3.0, 4.0, 5.0, 6.0])
    rows = sampler.sample_epoch(np.random.default_rng(3))
    assert len(rows) == 3
    assert [row_queries[row] for row in rows] == ["a", "b", "c"]
    again = sampler.sample_epoch(np.random.default_rng(3))
    assert rows.tolist() == again.tolist()


@pytest.mark.parametrize(
    ("row_queries", "margins", "num_bins", "message"),
    [
        (["q", "q"], [1.0, float("nan")], 10, "non-finite"),
        (["q"], [1.0, 2.0], 10, "one of each"),
        (["q"], [1.0], 0, "positive integer"),
        ([], [], 10, "No pair rows"),
    ],
)
def test_bad_sampler_inputs(row_queries, margins, num_bins, message):
    with pytest.raises(ValueError, match=message):
        BalancedMarginSampler(row_queries, margins, num_bins=num_bins)


def _scored():
    return Dataset.from_dict(
        {
            "query_id": ["q1", "q2", "q3", "q4"],
            "positive_ids": [["p1"], ["p2"], [], ["p4", "p5"]],
            "candidate_ids": [["n1", "n2"], [], ["n3"], ["n4", "n5", "n6"]],
            "positive_scores": [[5.0], [1.0], [], [4.0, 2.0]],
            "candidate_scores": [[3.0, 6.0], [], [0.5], [1.0, 3.0, 0.0]],
        }
    )


def test_margin_pairs_by_hand_skip_and_count():
    pairs = build_margin_pairs(_scored())
    data = pairs.dataset
    assert data.column_names == ["query_id", "positive_id", "negative_id", "label"]
    rows = list(zip(data["query_id"], data["positive_id"], data["negative_id"], data["label"], strict=True))
    assert rows[:2] == [("q1", "p1", "n1", 2.0), ("q1", "p1", "n2", -1.0)]
    assert len(rows) == 2 + 6
    assert ("q4", "p5", "n5", -1.0) in rows
    assert pairs.skipped_no_negatives == ["q2"]
    assert pairs.skipped_no_positives == ["q3"]
    assert pairs.num_queries == 2


def test_margin_pairs_caps_and_scale():
    pairs = build_margin_pairs(
        _scored(), MarginPairsConfig(max_positives_per_query=1, max_negatives_per_query=2, label_scale=0.5)
    )
    q4 = [(p, n, label) for q, p, n, label in zip(*pairs.dataset[:].values(), strict=True) if q == "q4"]
    assert q4 == [("p4", "n4", 1.5), ("p4", "n5", 0.5)]
    sampler = pairs.sampler(num_bins=10)
    assert sampler.num_rows == len(pairs.dataset) and sampler.query_ids == ["q1", "q4"]


def test_margin_pairs_bad_inputs():
    with pytest.raises(ValueError, match="lacks column"):
        build_margin_pairs(_scored().remove_columns("candidate_scores"))
    broken = Dataset.from_dict(
        {
            "query_id": ["q"],
            "positive_ids": [["p"]],
            "candidate_ids": [["n1", "n2"]],
            "positive_scores": [[1.0]],
            "candidate_scores": [[0.0]],
        }
    )
    with pytest.raises(ValueError, match="'q': candidate_ids has 2 entries but candidate_scores has 1"):
        build_margin_pairs(broken)
    only_skipped = _scored().select([1, 2])
    with pytest.raises(ValueError, match="No \\(positive, negative\\) pair"):
        build_margin_pairs(only_skipped)
    with pytest.raises(ValueError, match="positive integer"):
        MarginPairsConfig(max_negatives_per_query=0)


def test_with_texts_resolves_lazily_and_checks_ids():
    pairs = build_margin_pairs(_scored())
    queries = {"q1": "query one", "q4": "query four"}
    corpus = {pid: f"text of {pid}" for pid in ["p1", "p4", "p5", "n1", "n2", "n4", "n5", "n6"]}
    train = pairs.with_texts(queries, corpus)
    assert len(train) == len(pairs.dataset)
    row = train[1]
    assert row == {"query": "query one", "positive": "text of p1", "negative": "text of n2", "label": -1.0}
    del corpus["n6"]
    with pytest.raises(KeyError, match="n6"):
        pairs.with_texts(queries, corpus)
