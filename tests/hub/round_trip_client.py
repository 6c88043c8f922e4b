"""The client side of the Hub round trip, run in its own process by test_round_trip.py.

huggingface_hub reads HF_ENDPOINT and the offline switch once, at import, and ``SentenceTransformer("org/name")``
has no endpoint argument; tests/conftest.py makes the test process offline. So the round trip runs here, in a fresh
interpreter whose environment points at the local Hub (HF_ENDPOINT, HF_HUB_OFFLINE=0, a temporary HF_HUB_CACHE,
the server's test token, HF_HUB_DISABLE_XET=1), exactly as a user's shell would.

Usage: python -m tests.hub.round_trip_client '{"model_dir": ..., "repo": ..., "texts": [...]}'
Prints one line ``RESULT {json}``.
"""

from __future__ import annotations

import contextlib
import io
import json
import sys
import time


def main(arguments: dict) -> dict:
    from huggingface_hub import ModelCard
    from huggingface_hub.repocard_data import model_index_to_eval_results

    from asym_st.cli import main as cli

    printed = io.StringIO()
    start = time.perf_counter()
    with contextlib.redirect_stdout(printed):
        code = cli(["push", arguments["model_dir"], "--repo", arguments["repo"], "--towers", "asymmetric,query"])
    out = {"push_exit_code": code, "push_report": json.loads(printed.getvalue()) if code == 0 else printed.getvalue()}
    out["push_seconds"] = round(time.perf_counter() - start, 2)
    if code != 0:
        return out

    from sentence_transformers import SentenceTransformer

    texts = arguments["texts"]
    start = time.perf_counter()
    model = SentenceTransformer(arguments["repo"], device="cpu")  # downloads from HF_ENDPOINT
    out["download_and_load_seconds"] = round(time.perf_counter() - start, 2)
    query_tower = SentenceTransformer(arguments["repo"] + "-query", device="cpu")
    card = ModelCard.load(arguments["repo"])
    metadata = card.data.to_dict()
    model_name, results = (
        model_index_to_eval_results(metadata["model-index"]) if "model-index" in metadata else (None, [])
    )
    out.update(
        query=model.encode_query(texts).tolist(),
        document=model.encode_document(texts).tolist(),
        plain=model.encode(texts).tolist(),
        query_tower=query_tower.encode_query(texts).tolist(),
        routes=sorted(model[0].sub_modules.keys()) if hasattr(model[0], "sub_modules") else None,
        card_metadata={k: v for k, v in metadata.items() if k != "model-index"},
        card_results=[(r.dataset_type, r.dataset_split, r.metric_type, r.metric_value, r.source_url) for r in results],
        card_model_name=model_name,
        card_text=card.text,
        query_card_text=ModelCard.load(arguments["repo"] + "-query").text,
    )
    return out


if __name__ == "__main__":
    print("RESULT " + json.dumps(main(json.loads(sys.argv[1]))))
