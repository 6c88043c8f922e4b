"""Query-encoding latency, measured the way a serving system sees it.

For each batch size we time, per batch, the tokenisation (``model.preprocess``) and the forward pass separately,
on real query texts, after warm-up batches, over several repeats; the median over repeats is reported. Batch 1
gives p50/p95 milliseconds per query (online serving); larger batches give throughput (queries/s). The thread
count, device, CPU and library versions are recorded with every result, because a latency without its hardware
means nothing.

sentence-transformers has no latency benchmark of its own, hence this module; the timed calls are exactly the
ones ``SentenceTransformer.encode`` makes.
"""

from __future__ import annotations

import os
import platform
import statistics
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from sentence_transformers import SentenceTransformer
from sentence_transformers.util import batch_to_device
from tqdm.auto import tqdm

__all__ = ["LatencyConfig", "LatencyResult", "measure_latency", "hardware_description", "latency_report"]


@dataclass
class LatencyConfig:
    """Settings of a latency measurement.

    Args:
        batch_sizes: batch sizes to measure; 1 is online serving, 32 offline throughput.
        num_queries: how many query texts to cycle through per repeat.
        warmup_batches: untimed batches before each measurement (allocators, kernels, caches).
        repeats: full passes over the queries; the median of each statistic over repeats is reported.
        threads: ``torch.set_num_threads`` during the measurement; ``None`` keeps the current setting.
        device: device to run on; ``None`` keeps the model's device.
        route: ``"query"`` or ``"document"`` (which tower of an asymmetric model to time).
    """

    batch_sizes: tuple[int, ...] = (1, 32)
    num_queries: int = 200
    warmup_batches: int = 10
    repeats: int = 5
    threads: int | None = None
    device: str | None = None
    route: str = "query"


@dataclass
class LatencyResult:
    """Latency of one model at one batch size; times are milliseconds per batch unless named per query."""

    model: str
    route: str
    batch_size: int
    p50_ms: float
    p95_ms: float
    tokenize_p50_ms: float
    forward_p50_ms: float
    per_query_p50_ms: float
    queries_per_second: float
    num_queries: int
    repeats: int
    hardware: dict = field(default_factory=dict)
    # CPU time the process spent per query (all its threads): unlike wall time it does not grow when other jobs
    # compete for the cores, so ratios of it stay meaningful on a busy shared machine.
    cpu_per_query_p50_ms: float | None = None

    def to_dict(self) -> dict:
        return asdict(self)


def hardware_description(device: torch.device | str) -> dict:
    """Where a measurement ran: device, CPU model, threads, library versions."""
    device = torch.device(device)
    info = {
        "device": str(device),
        "torch_threads": torch.get_num_threads(),
        "cpu": _cpu_model(),
        "python": platform.python_version(),
        "torch": torch.__version__,
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    if hasattr(os, "getloadavg"):
        # On a shared machine other jobs inflate latencies; the load at measurement time says by how much.
        info["cpu_count"] = os.cpu_count()
        info["load_average_1m"] = round(os.getloadavg()[0], 2)
    return info


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _time_batch(
    model: SentenceTransformer, batch: list[str], task: str, prompt: str | None
) -> tuple[float, float, float]:
    """Wall seconds spent tokenising and in the forward pass for one batch (the same calls ``encode`` makes), and
    the process CPU seconds of both."""
    device = model.device
    cpu_start = time.process_time()
    start = time.perf_counter()
    features = model.preprocess(batch, prompt=prompt, task=task)
    features = batch_to_device(features, device)
    tokenized = time.perf_counter()
    with torch.inference_mode():
        model(features, task=task)
    _synchronize(device)
    return tokenized - start, time.perf_counter() - tokenized, time.process_time() - cpu_start


def _batches(texts: Sequence[str], batch_size: int) -> list[list[str]]:
    return [list(texts[i : i + batch_size]) for i in range(0, len(texts), batch_size)]


def measure_latency(
    model: SentenceTransformer,
    queries: Sequence[str],
    config: LatencyConfig | None = None,
    name: str | None = None,
    show_progress_bar: bool = True,
) -> list[LatencyResult]:
    """Measure encoding latency of one route of ``model`` on real ``queries``; one result per batch size.

    Example::

        from asym_st.evaluation.latency import LatencyConfig, measure_latency
        results = measure_latency(model, queries, LatencyConfig(batch_sizes=(1, 32), repeats=3))
        print(results[0].per_query_p50_ms, results[1].queries_per_second)
    """
    config = config or LatencyConfig()
    if not queries:
        raise ValueError("measure_latency needs at least one query text.")
    texts = [queries[i % len(queries)] for i in range(config.num_queries)]
    previous_threads = torch.get_num_threads()
    if config.threads:
        torch.set_num_threads(config.threads)
    if config.device:
        model.to(config.device)
    model.eval()
    prompt = model.prompts.get(config.route) or None
    results = []
    try:
        for batch_size in config.batch_sizes:
            results.append(_measure_batch_size(model, texts, batch_size, config, prompt, name, show_progress_bar))
    finally:
        torch.set_num_threads(previous_threads)
    return results


def _measure_batch_size(model, texts, batch_size, config, prompt, name, show_progress_bar) -> LatencyResult:
    batches = _batches(texts, batch_size)
    for batch in (batches * (config.warmup_batches // max(len(batches), 1) + 1))[: config.warmup_batches]:
        _time_batch(model, batch, config.route, prompt)
    p50s, p95s, tok50s, fwd50s, throughputs, cpu50s = [], [], [], [], [], []
    progress = tqdm(total=config.repeats * len(batches), desc=f"latency b={batch_size}", disable=not show_progress_bar)
    for _ in range(config.repeats):
        tokenize_times, forward_times, cpu_times = [], [], []
        for batch in batches:
            tokenize_seconds, forward_seconds, cpu_seconds = _time_batch(model, batch, config.route, prompt)
            tokenize_times.append(tokenize_seconds)
            forward_times.append(forward_seconds)
            cpu_times.append(cpu_seconds)
            progress.update()
        totals = np.add(tokenize_times, forward_times) * 1000.0
        p50s.append(float(np.percentile(totals, 50)))
        p95s.append(float(np.percentile(totals, 95)))
        tok50s.append(float(np.percentile(tokenize_times, 50)) * 1000.0)
        fwd50s.append(float(np.percentile(forward_times, 50)) * 1000.0)
        cpu50s.append(float(np.percentile(cpu_times, 50)) * 1000.0)
        throughputs.append(len(texts) / (float(np.sum(totals)) / 1000.0))
    progress.close()
    p50 = statistics.median(p50s)
    return LatencyResult(
        model=name or str(model.model_card_data.base_model or type(model).__name__),
        route=config.route,
        batch_size=batch_size,
        p50_ms=round(p50, 3),
        p95_ms=round(statistics.median(p95s), 3),
        tokenize_p50_ms=round(statistics.median(tok50s), 3),
        forward_p50_ms=round(statistics.median(fwd50s), 3),
        per_query_p50_ms=round(p50 / batch_size, 4),
        queries_per_second=round(statistics.median(throughputs), 2),
        num_queries=len(texts),
        repeats=config.repeats,
        hardware=hardware_description(model.device),
        cpu_per_query_p50_ms=round(statistics.median(cpu50s) / batch_size, 4),
    )


def latency_report(query_tower: Sequence[LatencyResult], teacher: Sequence[LatencyResult]) -> dict:
    """The ``eval/latency.json`` payload: both measurements and the speed-up per batch size.

    The speed-up is the teacher's median per-query wall time over the query tower's, at each batch size that both
    measured (``{"1": 3.1, "32": 2.8}``); above 1 means the query tower is faster. ``cpu_speedup`` is the same
    ratio in process CPU time.
    """
    teacher_by_batch = {r.batch_size: r for r in teacher}
    speedup = {
        str(r.batch_size): round(teacher_by_batch[r.batch_size].per_query_p50_ms / r.per_query_p50_ms, 3)
        for r in query_tower
        if r.batch_size in teacher_by_batch and r.per_query_p50_ms > 0
    }
    cpu_speedup = {
        str(r.batch_size): round(teacher_by_batch[r.batch_size].cpu_per_query_p50_ms / r.cpu_per_query_p50_ms, 3)
        for r in query_tower
        if r.batch_size in teacher_by_batch
        and r.cpu_per_query_p50_ms
        and teacher_by_batch[r.batch_size].cpu_per_query_p50_ms
    }
    report = {"results": [r.to_dict() for r in (*query_tower, *teacher)], "speedup": speedup}
    if cpu_speedup:
        report["cpu_speedup"] = cpu_speedup  # the same ratio in process CPU time (robust on a busy machine)
    return report
