"""Encode a corpus with a model's document tower into the embedding cache: sharded, resumable, multi-process.

The offline half of an asymmetric retriever (the index). One process, or one per device under ``accelerate launch``
/ ``torchrun``; a killed run keeps its finished shards and the next run encodes only the rest:

    python recipes/encode_corpus.py --model sentence-transformers/all-MiniLM-L6-v2 \\
        --corpus ../shared/data/beir/trec-dl-2019-passage
    accelerate launch --config_file recipes/accelerate/cpu.yaml recipes/encode_corpus.py \\
        --model sentence-transformers/all-MiniLM-L6-v2 --corpus ../shared/data/beir/trec-dl-2019-passage
    accelerate launch --config_file recipes/accelerate/multi_gpu.yaml recipes/encode_corpus.py --config FILE.yaml

Evaluations and mining of the same document tower on the same corpus then read the vectors from the cache.
"""

from __future__ import annotations

import logging
import sys

from asym_st.indexing import CorpusEncodingConfig, encode_corpus
from asym_st.training.config_io import parse_recipe_args
from asym_st.training.trainer_setup import distributed_state

CONFIG = CorpusEncodingConfig


if __name__ == "__main__":
    logging.basicConfig(format="%(asctime)s %(name)s: %(message)s", level=logging.INFO)
    vectors = encode_corpus(parse_recipe_args(CONFIG, sys.argv[1:]))
    if distributed_state().is_main_process:
        print(f"{vectors.shape[0]} documents × {vectors.shape[1]} dimensions")
