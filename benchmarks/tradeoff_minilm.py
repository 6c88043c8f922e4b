"""Trade-off sweep: retention of nDCG@10 vs query speed-up for query towers of all-MiniLM-L6-v2 (1..6 layers).

Untrained towers (``first_last``, QED's initialisation, and ``first_k``), plus any distilled student folders given
with --students, on SciFact test. The teacher is the frozen document tower of every tower, so the corpus
embeddings come from the shared embedding cache and only queries are encoded. Speed-up: teacher per-query p50
at batch 1 over the tower's (``measure_latency`` on SciFact's real query texts, warm-up, median), in wall time and
in process CPU time; all models are timed in interleaved rounds (see ``asym_st.evaluation.tradeoff``).

Command (from the repository root, offline with ../shared):

    HF_HUB_CACHE=../shared/hf-hub HF_HUB_OFFLINE=1 python benchmarks/tradeoff_minilm.py \
        --strategies first_last,first_k --plot-speed cpu [--students DISTILLED_DIR ...]

Writes benchmarks/results/tradeoff_minilm.{json,md,png}.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from asym_st.data import load_beir
from asym_st.evaluation import LatencyConfig, RetrievalEvalConfig, TradeoffConfig, plot_tradeoff, tradeoff_sweep
from asym_st.utils import atomic_write_json, atomic_write_text

RESULTS = Path(__file__).parent / "results"
SHARED = Path(__file__).resolve().parents[2] / "shared"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--teacher", default="sentence-transformers/all-MiniLM-L6-v2")
    parser.add_argument("--dataset", default=str(SHARED / "data" / "beir" / "scifact"))
    parser.add_argument("--strategies", default="first_last,first_k")
    parser.add_argument("--layers", default=None, help="comma-separated depths (default 1..L)")
    parser.add_argument("--students", nargs="*", default=[], help="distilled student folders to add")
    parser.add_argument("--latency-queries", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=3, help="interleaved timing rounds over all models")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--plot-speed", choices=["wall", "cpu"], default="wall", help="speed-up on the plot's x axis")
    parser.add_argument("--name", default="tradeoff_minilm")
    args = parser.parse_args()

    config = TradeoffConfig(
        layers=[int(x) for x in args.layers.split(",")] if args.layers else None,
        strategies=tuple(args.strategies.split(",")),
        evaluation=RetrievalEvalConfig(),
        latency=LatencyConfig(
            batch_sizes=(1,),
            num_queries=args.latency_queries,
            warmup_batches=10,
            repeats=1,
            threads=args.threads,
            device="cpu",
        ),
        latency_rounds=args.rounds,
        latency_queries=args.latency_queries,
    )
    dataset = load_beir(args.dataset, split="test")
    result = tradeoff_sweep(args.teacher, dataset, config, students=args.students, teacher_name=args.teacher)
    command = "python " + " ".join(shlex.quote(a) for a in sys.argv)
    atomic_write_json(
        RESULTS / f"{args.name}.json", {"command": command, "plot_speed": args.plot_speed, **result.to_dict()}
    )
    plot_tradeoff(result, RESULTS / f"{args.name}.png", speed=args.plot_speed)
    hw = result.hardware
    header = [
        f"# Quality vs speed: query towers of {args.teacher} on {result.dataset} ({result.split})",
        "",
        f"Command: `{command}`  ",
        f"Hardware: {hw.get('cpu')}, device {hw.get('device')}, {hw.get('torch_threads')} torch threads, "
        f"load average {hw.get('load_average_1m')} during the first timing round (shared machine), "
        f"torch {hw.get('torch')}  ",
        "Teacher per-query p50 at batch 1 (wall), per timing round: "
        + " / ".join(f"{ms:.2f} ms" for ms in result.teacher_latency_ms)
        + f"  \nPlot x axis: speed-up in {'process CPU time' if args.plot_speed == 'cpu' else 'wall time'}.",
        "",
        f"![trade-off]({args.name}.png)",
        "",
    ]
    atomic_write_text(RESULTS / f"{args.name}.md", "\n".join(header) + result.to_markdown())
    print(result.to_markdown())


if __name__ == "__main__":
    main()
