"""Small BEIR folders for the benchmarks' ``--smoke`` runs (tiny copies of the real collections)."""

from __future__ import annotations

import json
from pathlib import Path


def write_beir(folder: Path, corpus: dict, queries: dict, qrels_by_split: dict) -> None:
    """Write a BEIR folder: ``corpus`` id → text, ``queries`` id → text, ``qrels_by_split`` split → qrels."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "corpus.jsonl").write_text(
        "".join(json.dumps({"_id": d, "title": "", "text": t}) + "\n" for d, t in corpus.items())
    )
    (folder / "queries.jsonl").write_text("".join(json.dumps({"_id": q, "text": t}) + "\n" for q, t in queries.items()))
    (folder / "qrels").mkdir(exist_ok=True)
    for split, qrels in qrels_by_split.items():
        rows = [f"{q}\t{d}\t{s}" for q, judged in qrels.items() for d, s in judged.items()]
        (folder / "qrels" / f"{split}.tsv").write_text("query-id\tcorpus-id\tscore\n" + "\n".join(rows) + "\n")
