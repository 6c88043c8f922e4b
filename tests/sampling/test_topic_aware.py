import warnings

import numpy as np
import pytest
from accelerate.data_loader import BatchSamplerShard

from asym_st.sampling import BalancedMarginSampler, ClusteringConfig, QueryClusters, TopicAwareBatchSampler
from asym_st.sampling import cluster_queries as cluster

SIZES = [10, 7, 13]  # three clusters, all at least one batch of 4


def _labels(sizes=SIZES, seed=0):
    labels = np.concatenate([[c] * n for c, n in enumerate(sizes)])
    return np.random.default_rng(seed).permutation(labels)


def _sampler(batch_size=4, drop_last=False, seed=0, world_size=1, labels=None, **kwargs):
    labels = _labels() if labels is None else labels
    clusters = QueryClusters.from_labels(labels)
    return TopicAwareBatchSampler(
        list(range(len(labels))),
        batch_size=batch_size,
        drop_last=drop_last,
        seed=seed,
        clusters=clusters,
        world_size=world_size,
        **kwargs,
    ), labels


def test_one_cluster_per_batch_full_batches_and_coverage():
    sampler, labels = _sampler()
    batches = list(sampler)
    assert len(batches) == len(sampler) == 3 + 2 + 4  # ceil(10/4) + ceil(7/4) + ceil(13/4)
    for batch in batches:
        assert len(batch) == 4 and len(set(batch)) == 4
        assert len({labels[i] for i in batch}) == 1
    assert set().union(*map(set, batches)) == set(range(len(labels)))
    # only the filled tails repeat queries: at most batch_size - 1 per cluster
    assert sum(map(len, batches)) - len(labels) == (4 - 10 % 4) + (4 - 7 % 4) + (4 - 13 % 4)


def test_drop_last_has_no_repeats():
    sampler, labels = _sampler(drop_last=True)
    batches = list(sampler)
    assert len(batches) == len(sampler) == 2 + 1 + 3
    flat = [i for batch in batches for i in batch]
    assert len(flat) == len(set(flat))
    assert all(len({labels[i] for i in batch}) == 1 for batch in batches)


def test_seeded_and_epoch_aware():
    first, _ = _sampler(seed=7)
    second, _ = _sampler(seed=7)
    assert list(first) == list(second)  # what two DDP ranks compute independently
    epoch0 = list(first)
    first.set_epoch(1)
    epoch1 = list(first)
    assert epoch1 != epoch0
    first.set_epoch(0)
    assert list(first) == epoch0
    other_seed, _ = _sampler(seed=8)
    assert list(other_seed) != epoch0


@pytest.mark.parametrize("world_size", [2, 3])
def test_ddp_ranks_get_disjoint_batches(world_size):
    # accelerate wraps the Trainer's batch sampler in BatchSamplerShard (even_batches=False for training)
    sampler, labels = _sampler(world_size=world_size)
    assert len(sampler) % world_size == 0
    global_batches = list(sampler)
    per_rank = []
    for rank in range(world_size):
        replica, _ = _sampler(world_size=world_size)  # each rank builds its own sampler
        shard = BatchSamplerShard(replica, num_processes=world_size, process_index=rank, even_batches=False)
        per_rank.append(list(shard))
        assert len(per_rank[-1]) == len(shard) == len(sampler) // world_size
    # every global batch goes to exactly one rank, in round-robin order
    assert [per_rank[i % world_size][i // world_size] for i in range(len(global_batches))] == global_batches
    positions = [{tuple(b) for b in batches} for batches in per_rank]
    for a in range(world_size):
        for b in range(a + 1, world_size):
            assert not positions[a] & positions[b]
    for batches in per_rank:
        assert all(len({labels[i] for i in batch}) == 1 for batch in batches)
    # coverage over all ranks together
    assert set().union(*(set(i for b in batches for i in b) for batches in per_rank)) == set(range(len(labels)))


def test_small_clusters_are_merged_into_the_nearest_centroid():
    labels = _labels([2, 10, 10])
    centroids = np.array([[0.0, 1.0], [1.0, 0.0], [0.0, 0.9]], dtype=np.float32)  # cluster 0 is next to 2
    clusters = QueryClusters(list(range(len(labels))), labels, centroids)
    sampler = TopicAwareBatchSampler(list(range(len(labels))), 4, seed=0, clusters=clusters, world_size=1)
    assert sampler.clusters.num_clusters == 2
    for batch in sampler:
        assert len(batch) == 4
        original = {labels[i] for i in batch}
        assert original in ({1}, {0, 2}, {2}, {0})


def test_small_clusters_without_centroids_are_an_error():
    with pytest.raises(ValueError, match="fewer than 4 queries"):
        _sampler(labels=_labels([2, 10, 10]))


def test_fewer_queries_than_a_batch():
    sampler, labels = _sampler(batch_size=8, labels=_labels([3, 2]))
    assert len(sampler) == 1 and sorted(list(sampler)[0]) == list(range(5))
    with pytest.raises(ValueError, match="fewer than one batch"):
        _sampler(batch_size=8, labels=_labels([3, 2]), drop_last=True)


def test_wrong_dataset_length_is_an_error():
    clusters = QueryClusters.from_labels(_labels())
    with pytest.raises(ValueError, match="row i must be query"):
        TopicAwareBatchSampler(list(range(5)), 4, clusters=clusters, world_size=1)


def test_with_balanced_pairs_one_pair_per_query_per_batch():
    # 30 queries with 1-4 pair rows each
    rng = np.random.default_rng(0)
    labels = _labels()
    query_ids = [f"q{i}" for i in range(len(labels))]
    row_queries = [q for q in query_ids for _ in range(rng.integers(1, 5))]
    margins = rng.normal(size=len(row_queries))
    pairs = BalancedMarginSampler(row_queries, margins, num_bins=10)
    clusters = QueryClusters(query_ids, labels)
    sampler = TopicAwareBatchSampler(
        list(range(len(row_queries))), 4, seed=1, clusters=clusters, pairs=pairs, world_size=1
    )
    cluster_of = dict(zip(query_ids, labels, strict=True))
    seen = set()
    for batch in sampler:
        queries = [row_queries[row] for row in batch]
        assert len(set(queries)) == 4  # one pair per query
        assert len({cluster_of[q] for q in queries}) == 1
        seen.update(queries)
    assert seen == set(query_ids)
    with pytest.raises(ValueError, match="describes"):
        TopicAwareBatchSampler(list(range(3)), 4, clusters=clusters, pairs=pairs, world_size=1)
    missing = QueryClusters(query_ids[:-1], labels[:-1])
    with pytest.raises(KeyError, match="have no cluster"):
        TopicAwareBatchSampler(list(range(len(row_queries))), 4, clusters=missing, pairs=pairs, world_size=1)


def _blobs(per_blob=20, seed=0):
    rng = np.random.default_rng(seed)
    centres = np.array([[5.0, 0, 0], [0, 5.0, 0], [0, 0, 5.0]])
    points = np.concatenate([centre + 0.1 * rng.normal(size=(per_blob, 3)) for centre in centres])
    return points.astype(np.float32), np.repeat(np.arange(3), per_blob)


def test_kmeans_recovers_blobs_and_is_seeded():
    points, truth = _blobs()
    clusters = cluster(points, [f"q{i}" for i in range(len(points))], ClusteringConfig(num_clusters=3, seed=1))
    assert clusters.num_clusters == 3 and clusters.centroids.shape == (3, 3)
    for blob in range(3):
        assert len(set(clusters.labels[truth == blob])) == 1
    again = cluster(points, [f"q{i}" for i in range(len(points))], ClusteringConfig(num_clusters=3, seed=1))
    assert again.labels.tolist() == clusters.labels.tolist()


def test_fewer_queries_than_clusters_reduce_or_error():
    points, _ = _blobs(per_blob=2)
    with pytest.warns(UserWarning, match="6 queries are fewer than the 10 clusters"):
        clusters = cluster(points, config=ClusteringConfig(num_clusters=10))
    assert 1 <= clusters.num_clusters <= 6
    with pytest.raises(ValueError, match="fewer than the 10 clusters"):
        cluster(points, config=ClusteringConfig(num_clusters=10, too_few_queries="error"))


def test_min_cluster_size_merges_and_persistence_round_trips(tmp_path):
    points, _ = _blobs()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # enough queries: no warning
        clusters = cluster(points, [f"q{i}" for i in range(60)], ClusteringConfig(num_clusters=12, min_cluster_size=15))
    assert clusters.sizes().min() >= 15 and clusters.merged > 0
    path = clusters.save(tmp_path / "clusters.npz")
    loaded = QueryClusters.load(path)
    assert loaded.query_ids == clusters.query_ids
    assert loaded.labels.tolist() == clusters.labels.tolist()
    np.testing.assert_array_equal(loaded.centroids, clusters.centroids)
    (tmp_path / "bad.npz").write_bytes(b"not an npz")
    with pytest.raises(ValueError, match="bad.npz"):
        QueryClusters.load(tmp_path / "bad.npz")


def test_trainer_builds_it_from_training_args(tiny_teacher_path, tmp_path):
    from datasets import Dataset
    from sentence_transformers import (
        SentenceTransformer,
        SentenceTransformerTrainer,
        SentenceTransformerTrainingArguments,
    )
    from sentence_transformers.sentence_transformer.losses import MarginMSELoss

    labels = _labels()
    dataset = Dataset.from_dict(
        {
            "query": [f"query {i}" for i in range(30)],
            "positive": [f"positive {i}" for i in range(30)],
            "negative": [f"negative {i}" for i in range(30)],
            "label": [0.5] * 30,
        }
    )
    clusters = QueryClusters.from_labels(labels)
    args = SentenceTransformerTrainingArguments(
        output_dir=str(tmp_path),
        per_device_train_batch_size=4,
        batch_sampler=TopicAwareBatchSampler.factory(clusters),
        seed=3,
        report_to=[],
    )
    model = SentenceTransformer(str(tiny_teacher_path))
    trainer = SentenceTransformerTrainer(model=model, args=args, train_dataset=dataset, loss=MarginMSELoss(model))
    batch_sampler = trainer.get_train_dataloader().batch_sampler
    inner = getattr(batch_sampler, "batch_sampler", batch_sampler)
    assert isinstance(inner, TopicAwareBatchSampler) and inner.seed == 3
    assert all(len({labels[i] for i in batch}) == 1 for batch in inner)
    # an evaluation set of another size gets plain sequential batches
    factory = args.batch_sampler
    fallback = factory(dataset.select(range(10)), batch_size=4, drop_last=False)
    assert not isinstance(fallback, TopicAwareBatchSampler)
    assert [i for batch in fallback for i in batch] == list(range(10))


def _ddp_worker(rank, world_size, store, out_dir):
    import json

    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world_size)
    try:
        clusters = QueryClusters.from_labels(_labels())
        sampler = TopicAwareBatchSampler(list(range(30)), 4, seed=5, clusters=clusters)  # world size from dist
        shard = BatchSamplerShard(sampler, num_processes=world_size, process_index=rank, even_batches=False)
        result = {"world_size": sampler.world_size, "length": len(sampler), "batches": list(shard)}
        try:  # a rank with other settings would break disjointness: every rank refuses
            TopicAwareBatchSampler(list(range(30)), 4, seed=rank, clusters=clusters)
        except RuntimeError as error:
            result["mismatch"] = str(error)
        (out_dir / f"{rank}.json").write_text(json.dumps(result))
    finally:
        dist.destroy_process_group()


def test_real_ddp_ranks_agree_and_get_disjoint_batches(tmp_path):
    import json

    import torch.multiprocessing as mp

    # fork: the children reuse the imported modules (spawn would re-import torch & co., ~20 s per rank here)
    mp.start_processes(_ddp_worker, args=(2, tmp_path / "store", tmp_path), nprocs=2, start_method="fork")
    results = [json.loads((tmp_path / f"{rank}.json").read_text()) for rank in range(2)]
    assert all(r["world_size"] == 2 and r["length"] % 2 == 0 for r in results)
    batches = [{tuple(b) for b in r["batches"]} for r in results]
    assert len(batches[0]) == len(batches[1]) == results[0]["length"] // 2
    assert not batches[0] & batches[1]
    assert set().union(*(set(i for b in r["batches"] for i in b) for r in results)) == set(range(30))
    assert all("differs across DDP ranks" in r.get("mismatch", "") for r in results)
