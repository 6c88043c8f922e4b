"""QED recipe: distill a teacher into a few-layer query tower (Wang & Lyu, SustaiNLP 2023).

Run it as a plain script, under ``accelerate launch`` or under ``torchrun``, with the same config:

    python recipes/qed.py --config recipes/configs/qed_minilm.yaml
    accelerate launch --config_file recipes/accelerate/cpu.yaml recipes/qed.py --config recipes/configs/qed_minilm.yaml
    accelerate launch --config_file recipes/accelerate/multi_gpu.yaml recipes/qed.py --config recipes/configs/qed_mpnet.yaml
    torchrun --nproc_per_node 2 recipes/qed.py --config recipes/configs/qed_minilm.yaml

Any config field can be overridden on the command line, e.g. ``--learning_rate 5e-5 --output_dir out``.
"""

from __future__ import annotations

import sys

from asym_st.training import QEDConfig, distill_query_tower
from asym_st.training.config_io import parse_recipe_args

CONFIG = QEDConfig


if __name__ == "__main__":
    result = distill_query_tower(parse_recipe_args(CONFIG, sys.argv[1:]))
    if result.retention is not None:
        print(result.retention.to_markdown())
