"""MD2PR recipe: sentence- and word-level distillation from a cross-encoder, with a dynamic false-negative filter
(Li, Hai and Tang, 2023).

Run it as a plain script, under ``accelerate launch`` or under ``torchrun``, with the same config (a cross-encoder is
only trained by a single process: run it plainly once first, or name one with ``--cross_encoder``):

    python recipes/md2pr.py --config recipes/configs/md2pr_scifact.yaml
    accelerate launch --config_file recipes/accelerate/cpu.yaml recipes/md2pr.py --config recipes/configs/md2pr_scifact.yaml
    torchrun --nproc_per_node 2 recipes/md2pr.py --config recipes/configs/md2pr_scifact.yaml

Any config field can be overridden on the command line; the ablations are overrides:
``--word_weight 0 --false_negative_filter false`` (sentence level only), ``--false_negative_filter false``
(+ word level), the config as is (+ the false-negative filter). A public teacher instead of a trained one:
``--cross_encoder cross-encoder/ms-marco-MiniLM-L6-v2``.
"""

from __future__ import annotations

import json
import sys

from asym_st.training import MD2PRConfig, md2pr
from asym_st.training.config_io import parse_recipe_args

CONFIG = MD2PRConfig


if __name__ == "__main__":
    result = md2pr(parse_recipe_args(CONFIG, sys.argv[1:]))
    if result.output_dir is not None:
        print(json.dumps({key: value for key, value in result.details.items() if key != "loss"}, indent=1))
    if result.retention is not None:
        print(result.retention.to_markdown())
