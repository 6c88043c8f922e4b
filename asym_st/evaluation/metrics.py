"""Retrieval metrics through pytrec_eval (the trec_eval C code), never hand-rolled.

Four numbers per query, the ones the BEIR / MTEB leaderboards report: nDCG@10 (graded gains), Recall@100, MRR@10
and MAP (over the retrieved list, i.e. the top ``top_k`` documents). trec_eval's ``recip_rank`` has no cut-off,
so MRR@10 is ``recip_rank`` of the run truncated to its ten best documents, ranked the way trec_eval ranks
(score descending, ties broken by document id descending).
"""

from __future__ import annotations

from collections.abc import Mapping

import pytrec_eval

__all__ = ["METRIC_NAMES", "compute_metrics", "truncate_run"]

METRIC_NAMES = ("ndcg_at_10", "recall_at_100", "mrr_at_10", "map")

Run = Mapping[str, Mapping[str, float]]
Qrels = Mapping[str, Mapping[str, int]]


def truncate_run(run: Run, k: int) -> dict[str, dict[str, float]]:
    """Keep each query's ``k`` best documents, in trec_eval's order (score, then document id, descending)."""
    return {
        query_id: dict(sorted(scores.items(), key=lambda item: (item[1], item[0]), reverse=True)[:k])
        for query_id, scores in run.items()
    }


def compute_metrics(
    qrels: Qrels, run: Run, relevance_level: int = 1
) -> tuple[dict[str, float], dict[str, dict[str, float]]]:
    """Mean and per-query nDCG@10, Recall@100, MRR@10 and MAP.

    Args:
        qrels: ``{query_id: {doc_id: grade}}``; every query here counts, also one that retrieved nothing (it
            scores 0, as in trec_eval with ``-c``), so a model cannot gain by failing on hard queries.
        run: ``{query_id: {doc_id: score}}``, the retrieved documents (e.g. the top 100).
        relevance_level: the smallest grade that counts as relevant for the binary metrics (Recall, MRR, MAP);
            nDCG always uses the graded gains. TREC-DL convention: 2.

    Returns:
        ``(means, per_query)`` with keys :data:`METRIC_NAMES`; fractions in [0, 1].
    """
    if not qrels:
        raise ValueError("compute_metrics: qrels are empty, there is nothing to evaluate.")
    qrels = {q: {d: int(g) for d, g in docs.items()} for q, docs in qrels.items()}
    # A query without any retrieved document is still evaluated (all zeros), not dropped by trec_eval.
    run = {q: dict(run.get(q, {})) for q in qrels}
    empty = [q for q, docs in run.items() if not docs]
    full = pytrec_eval.RelevanceEvaluator(
        qrels, {"ndcg_cut.10", "recall.100", "map"}, relevance_level=relevance_level
    ).evaluate({q: d for q, d in run.items() if d})
    top10 = pytrec_eval.RelevanceEvaluator(qrels, {"recip_rank"}, relevance_level=relevance_level).evaluate(
        truncate_run({q: d for q, d in run.items() if d}, 10)
    )
    per_query = {}
    for query_id in qrels:
        if query_id in empty:
            per_query[query_id] = dict.fromkeys(METRIC_NAMES, 0.0)
            continue
        scores = full[query_id]
        per_query[query_id] = {
            "ndcg_at_10": scores["ndcg_cut_10"],
            "recall_at_100": scores["recall_100"],
            "mrr_at_10": top10[query_id]["recip_rank"],
            "map": scores["map"],
        }
    means = {name: sum(row[name] for row in per_query.values()) / len(per_query) for name in METRIC_NAMES}
    return means, per_query
