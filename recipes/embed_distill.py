"""EmbedDistill recipe: embedding + score matching into a small query tower, with generated queries (Kim et al., 2023).

Run it as a plain script, under ``accelerate launch`` or under ``torchrun``, with the same config:

    python recipes/embed_distill.py --config recipes/configs/embed_distill_minilm.yaml
    accelerate launch --config_file recipes/accelerate/cpu.yaml recipes/embed_distill.py --config recipes/configs/embed_distill_minilm.yaml
    torchrun --nproc_per_node 2 recipes/embed_distill.py --config recipes/configs/embed_distill_minilm.yaml

Any config field can be overridden on the command line, e.g. ``--score_weight 0 --output_dir out`` (QED with the
EmbedDistill distance) or ``--query_generator doc2query/msmarco-t5-base-v1 --queries_per_passage 3``.
"""

from __future__ import annotations

import sys

from asym_st.training import EmbedDistillConfig, embed_distill
from asym_st.training.config_io import parse_recipe_args

CONFIG = EmbedDistillConfig


if __name__ == "__main__":
    result = embed_distill(parse_recipe_args(CONFIG, sys.argv[1:]))
    if result.retention is not None:
        print(result.retention.to_markdown())
