"""Trade-off sweep on a tiny teacher: rows, retention/speed-up arithmetic, trained students, JSON and PNG."""

from __future__ import annotations

import pytest

from asym_st import QueryTowerConfig, build_asymmetric_model, save_asymmetric_model
from asym_st.data import EmbeddingCache
from asym_st.evaluation import LatencyConfig, RetrievalEvalConfig
from asym_st.evaluation.tradeoff import TradeoffConfig, TradeoffResult, plot_tradeoff, tradeoff_sweep


def test_sweep_rows_plot_and_round_trip(tiny_teacher_path, tiny_beir, tmp_path):
    student_dir = save_asymmetric_model(
        build_asymmetric_model(str(tiny_teacher_path), QueryTowerConfig(layers=[0, 2])), tmp_path / "student"
    )
    config = TradeoffConfig(
        layers=(1, 2),
        strategies=("first_last", "first_k"),
        evaluation=RetrievalEvalConfig(cache=EmbeddingCache(tmp_path / "cache"), show_progress_bar=False),
        latency=LatencyConfig(batch_sizes=(1,), num_queries=4, warmup_batches=1, repeats=1),
        latency_rounds=2,
    )
    result = tradeoff_sweep(str(tiny_teacher_path), str(tiny_beir), config, students=[str(student_dir)])
    kinds = [(r.kind, r.strategy, r.layers) for r in result.rows]
    assert kinds == [
        ("teacher", None, 4),
        ("untrained", "first_last", 1),
        ("untrained", "first_last", 2),
        ("untrained", "first_k", 1),
        ("untrained", "first_k", 2),
        ("trained", None, 2),
    ]
    teacher = result.rows[0]
    assert teacher.speedup == pytest.approx(1.0) and teacher.p_value == 1.0
    assert result.rows[2].query_layers == [0, 3] and result.rows[4].query_layers == [0, 1]
    assert result.rows[5].query_layers == [0, 2]
    for row in result.rows[1:]:
        if teacher.ndcg_at_10 > 0:
            assert row.retention == pytest.approx(row.ndcg_at_10 / teacher.ndcg_at_10)
        assert row.speedup == pytest.approx(teacher.per_query_p50_ms / row.per_query_p50_ms)
        assert row.cpu_speedup == pytest.approx(teacher.cpu_per_query_p50_ms / row.cpu_per_query_p50_ms)
    assert len(result.teacher_latency_ms) == 2  # one teacher timing per interleaved round
    # Every tower shares the teacher's document tower: one document entry, plus one query entry per query tower
    # (the teacher's own, four untrained ones, the student).
    assert len(list((tmp_path / "cache").glob("*.npy"))) == 1 + 6
    png = plot_tradeoff(result, tmp_path / "plot.png")
    assert png.startswith(b"\x89PNG") and (tmp_path / "plot.png").read_bytes() == png
    assert plot_tradeoff(result, speed="cpu") != png  # a different x axis
    with pytest.raises(ValueError, match="speed must be"):
        plot_tradeoff(result, speed="gpu")
    again = TradeoffResult.from_dict(result.to_dict())
    assert again.rows == result.rows
    assert "| first_last 2L | untrained | first_last | 2 | 0,3 |" in result.to_markdown()


def test_too_many_layers_refused(tiny_teacher_path, tiny_beir, tmp_path):
    config = TradeoffConfig(layers=(9,), evaluation=RetrievalEvalConfig(show_progress_bar=False))
    with pytest.raises(ValueError, match="9-layer tower from a 4-layer teacher"):
        tradeoff_sweep(str(tiny_teacher_path), str(tiny_beir), config)
