"""Does a cross-encoder built from all-MiniLM-L6-v2 learn SciFact relevance within a CPU-sized step budget?

MD2PR's first SciFact teacher (1 epoch at 2e-5) did not learn (benchmarks/results/md2pr_teacher_signal_first_teacher.md). This
benchmark separates the causes on a held-out split of SciFact's train queries: the same encoder and loss as
``train_cross_encoder`` (sentence-transformers' ``CrossEncoderTrainer`` with ``BinaryCrossEntropyLoss``, positives
up-weighted), trained on (query, positive, 4 negatives) rows whose negatives are either the retriever's hard ones
(top 30, as MD2PR mines them) or half hard and half random documents, then scored on 100 held-out queries: the share
where the positive beats the 7 hardest mined negatives, next to the bi-encoder's share on the same rows.

Command for benchmarks/results/cross_encoder_learnability.{json,md} (repository root, offline with ../shared):

    HF_HUB_CACHE=../shared/hf-hub HF_HUB_OFFLINE=1 python benchmarks/cross_encoder_learnability.py \\
        --variants hard mixed --max-steps 150
"""

from __future__ import annotations

import argparse
import json
import random
import sys

import numpy as np
import torch
from datasets import Dataset
from results_io import RESULTS, write_results  # benchmarks/ is on sys.path when a benchmark runs
from sentence_transformers import SentenceTransformer
from sentence_transformers.cross_encoder import CrossEncoder, CrossEncoderTrainer, CrossEncoderTrainingArguments
from sentence_transformers.cross_encoder.losses import BinaryCrossEntropyLoss

from asym_st.data.beir import RetrievalDataset, load_beir
from asym_st.data.cache import EmbeddingCache
from asym_st.data.mining import MiningConfig, mine_from_dataset
from asym_st.training.cross_encoder_teacher import constant_prediction_loss, loss_left_constant
from asym_st.training.md2pr import MD2PRRows, retriever_row_scores

BASE = "sentence-transformers/all-MiniLM-L6-v2"
NEGATIVES, HELD_OUT, RANKED = 4, 100, 7


def _rows(args: argparse.Namespace) -> tuple[RetrievalDataset, dict, list[str], list[str]]:
    train = load_beir(args.dataset, split="train")
    retriever = SentenceTransformer(BASE)
    mining = MiningConfig(top_k=30, include_texts=False, show_progress_bar=False)
    candidates = {row["query_id"]: row for row in mine_from_dataset(retriever, train, mining)}
    usable = [q for q, row in candidates.items() if row["positive_ids"] and len(row["candidate_ids"]) >= RANKED]
    random.Random(args.seed).shuffle(usable)
    return train, candidates, usable[HELD_OUT:], usable[:HELD_OUT]


def _pairs(variant: str, train: RetrievalDataset, candidates: dict, queries: list[str], seed: int) -> Dataset:
    rng, documents = random.Random(seed), list(train.corpus)
    rows = {"query": [], "passage": [], "label": []}
    for query_id in queries:
        hard = rng.sample(candidates[query_id]["candidate_ids"], NEGATIVES)
        negatives = hard if variant == "hard" else hard[: NEGATIVES // 2] + rng.sample(documents, NEGATIVES // 2)
        for doc_id, label in [(candidates[query_id]["positive_ids"][0], 1.0)] + [(d, 0.0) for d in negatives]:
            rows["query"].append(train.queries[query_id])
            rows["passage"].append(train.corpus[doc_id])
            rows["label"].append(label)
    return Dataset.from_dict(rows)


def _ranked(candidates: dict, query_id: str) -> list[str]:
    return [candidates[query_id]["positive_ids"][0], *candidates[query_id]["candidate_ids"][:RANKED]]


def _cross_encoder_top1(model: CrossEncoder, train: RetrievalDataset, candidates: dict, held_out: list[str]) -> float:
    hits = 0
    for query_id in held_out:
        pairs = [(train.queries[query_id], train.corpus[d]) for d in _ranked(candidates, query_id)]
        hits += int(np.argmax(model.predict(pairs, show_progress_bar=False)) == 0)
    return hits / len(held_out)


def _bi_encoder_top1(train: RetrievalDataset, candidates: dict, held_out: list[str]) -> float:
    """The retriever's top-1 on the same rows, scored by MD2PR's own row scorer from the embeddings mining cached."""
    pairs = [(query_id, doc_id) for query_id in held_out for doc_id in _ranked(candidates, query_id)]
    columns = np.arange(len(pairs)).reshape(len(held_out), RANKED + 1)
    rows = MD2PRRows(query_ids=list(held_out), pairs=pairs, columns=columns)
    scores = retriever_row_scores(rows, SentenceTransformer(BASE), train, EmbeddingCache())
    return float(np.mean(scores.argmax(axis=1) == 0))


def run_variant(variant: str, args: argparse.Namespace, train, candidates, fit, held_out, workdir: str) -> dict:
    pairs = _pairs(variant, train, candidates, fit, args.seed)
    positives = int(sum(pairs["label"]))
    pos_weight = (len(pairs) - positives) / positives
    torch.manual_seed(args.seed)
    model = CrossEncoder(BASE, num_labels=1, max_length=args.max_length)
    trainer = CrossEncoderTrainer(
        model=model,
        args=CrossEncoderTrainingArguments(
            output_dir=f"{workdir}/{variant}",
            max_steps=args.max_steps,
            per_device_train_batch_size=16,
            learning_rate=args.learning_rate,
            warmup_steps=0.1,
            logging_steps=25,
            save_strategy="no",
            report_to="none",
            seed=args.seed,
            use_cpu=not torch.cuda.is_available(),
        ),
        train_dataset=pairs,
        loss=BinaryCrossEntropyLoss(model, pos_weight=torch.tensor(pos_weight)),
    )
    trainer.train()
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    return {
        "variant": variant,
        "pairs": len(pairs),
        "logged_losses": losses,
        "constant_prediction_loss": constant_prediction_loss(positives, len(pairs), pos_weight),
        "held_out_top1": _cross_encoder_top1(model, train, candidates, held_out),
    }


def to_markdown(result: dict) -> str:
    lines = [
        f"# Cross-encoder learnability on SciFact train ({BASE}, {result['max_steps']} steps of 16, lr "
        f"{result['learning_rate']}, {result['max_length']} tokens)",
        "",
        f"Command: `{result['command']}`",
        "",
        f"Held-out: {HELD_OUT} SciFact train queries; top-1 = share where the positive outscores the {RANKED} hardest "
        f"mined negatives (chance {1 / (RANKED + 1):.1%}). Bi-encoder on the same rows: "
        f"{result['bi_encoder_top1']:.1%}.",
        "",
        "| negatives | training pairs | logged loss (every 25 steps) | constant prediction | held-out top-1 |",
        "|---|---:|---|---:|---:|",
    ]
    for row in result["variants"]:
        losses = ", ".join(f"{x:.3f}" for x in row["logged_losses"])
        lines.append(
            f"| {row['variant']} | {row['pairs']} | {losses} | {row['constant_prediction_loss']:.3f} | "
            f"{row['held_out_top1']:.1%} |"
        )
    lines += ["", "## Reading", ""]
    for row in result["variants"]:
        learned = loss_left_constant(row["logged_losses"], row["constant_prediction_loss"])
        better = row["held_out_top1"] > result["bi_encoder_top1"]
        lines.append(
            f"- {row['variant']}: the loss {'left' if learned else 'stayed at'} the constant-prediction value; the "
            f"cross-encoder ranks held-out positives first {'more' if better else 'less'} often than the bi-encoder "
            f"({row['held_out_top1']:.1%} vs {result['bi_encoder_top1']:.1%})."
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="../shared/data/beir/scifact")
    parser.add_argument("--variants", nargs="+", default=["hard", "mixed"], choices=["hard", "mixed"])
    parser.add_argument("--max-steps", type=int, default=150)
    parser.add_argument("--learning-rate", type=float, default=7e-5)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workdir", default="outputs/cross-encoder-learnability")
    parser.add_argument("--name", default="cross_encoder_learnability")
    parser.add_argument("--markdown-only", action="store_true", help="rewrite the markdown from the JSON")
    args = parser.parse_args()
    if args.markdown_only:
        result = json.loads((RESULTS / f"{args.name}.json").read_text(encoding="utf-8"))
        write_results(args.name, result, to_markdown(result))
        return
    train, candidates, fit, held_out = _rows(args)
    result = {
        "command": "python benchmarks/cross_encoder_learnability.py " + " ".join(sys.argv[1:]),
        "max_steps": args.max_steps,
        "learning_rate": args.learning_rate,
        "max_length": args.max_length,
        "bi_encoder_top1": _bi_encoder_top1(train, candidates, held_out),
        "variants": [run_variant(v, args, train, candidates, fit, held_out, args.workdir) for v in args.variants],
    }
    write_results(args.name, result, to_markdown(result))
    print(to_markdown(result))


if __name__ == "__main__":
    main()
