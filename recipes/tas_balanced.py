"""TAS-Balanced recipe: topic-aware batches, balanced margin pairs, dual-teacher Margin-MSE (Hofstätter et al., 2021).

Run it as a plain script, under ``accelerate launch`` or under ``torchrun``, with the same config:

    python recipes/tas_balanced.py --config recipes/configs/tas_balanced_nfcorpus.yaml
    accelerate launch --config_file recipes/accelerate/cpu.yaml recipes/tas_balanced.py --config recipes/configs/tas_balanced_nfcorpus.yaml
    torchrun --nproc_per_node 2 recipes/tas_balanced.py --config recipes/configs/tas_balanced_nfcorpus.yaml

Any config field can be overridden on the command line, e.g. ``--alpha 0 --topic_aware false --num_margin_bins 1``
(plain Margin-MSE with random batches and uniform pairs: the ablation baseline) or ``--towers both``.
"""

from __future__ import annotations

import json
import sys

from asym_st.training import TASBalancedConfig, tas_balanced
from asym_st.training.config_io import parse_recipe_args

CONFIG = TASBalancedConfig


if __name__ == "__main__":
    result = tas_balanced(parse_recipe_args(CONFIG, sys.argv[1:]))
    if result.output_dir is not None:
        print(json.dumps({key: value for key, value in result.details.items() if key != "loss"}, indent=1))
    if result.retention is not None:
        print(result.retention.to_markdown())
