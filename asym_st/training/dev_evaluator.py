"""A sentence-transformers evaluator that logs retrieval quality on a dev split during training."""

from __future__ import annotations

from pathlib import Path

from sentence_transformers.base.evaluation.evaluator import BaseEvaluator

from asym_st.data.beir import RetrievalDataset
from asym_st.data.cache import EmbeddingCache
from asym_st.evaluation.retrieval import RetrievalEvalConfig, evaluate_retrieval

__all__ = ["RetrievalDevEvaluator"]


class RetrievalDevEvaluator(BaseEvaluator):
    """Evaluates the model's retrieval on a (sub-sampled) dev collection; primary metric nDCG@10.

    sentence-transformers' ``InformationRetrievalEvaluator`` re-encodes the corpus at every evaluation; here the
    document tower is frozen, so document embeddings come from the cache and each evaluation only encodes the
    dev queries with the current query tower (not cached: they change with every evaluation).

    Args:
        dataset: the dev collection (sub-sample it first: ``dataset.subsample(200, 2000)``).
        batch_size: encoding batch size.
        cache_dir: embedding cache root (default: the shared cache).
        name: the prefix of the logged metrics.
    """

    def __init__(
        self, dataset: RetrievalDataset, batch_size: int = 64, cache_dir: str | None = None, name: str = "dev"
    ):
        super().__init__()
        self.dataset = dataset
        self.name = name
        self.config = RetrievalEvalConfig(
            batch_size=batch_size,
            cache=EmbeddingCache(Path(cache_dir) / "embeddings" if cache_dir else None),
            show_progress_bar=False,
            cache_queries=False,  # the query tower changes at every evaluation: its embeddings are not reused
        )
        self.primary_metric = "ndcg_at_10"

    def __call__(self, model, output_path: str | None = None, epoch: int = -1, steps: int = -1) -> dict[str, float]:
        result = evaluate_retrieval(model, self.dataset, self.config, name=self.name)
        metrics = self.prefix_name_to_metrics(dict(result.metrics), self.name)
        self.store_metrics_in_model_card_data(model, metrics, epoch, steps)
        return metrics
