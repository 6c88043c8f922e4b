"""DAFT recipe: align a light query encoder with a frozen document encoder, then fine-tune contrastively
(Leonhardt, Jahnke & Anand, 2022, "Distribution-Aligned Fine-Tuning for Efficient Neural Retrieval").

Run it as a plain script, under ``accelerate launch`` or under ``torchrun``, with the same config:

    python recipes/daft.py --config recipes/configs/daft_static_scifact.yaml
    accelerate launch --config_file recipes/accelerate/cpu.yaml recipes/daft.py --config recipes/configs/daft_static_scifact.yaml
    torchrun --nproc_per_node 2 recipes/daft.py --config recipes/configs/daft_static_scifact.yaml

Either stage alone:

    python recipes/daft.py --config recipes/configs/daft_static_scifact.yaml --stages align --output_dir out/s1
    python recipes/daft.py --config recipes/configs/daft_finetune_only.yaml --stage1_checkpoint out/s1

Any config field can be overridden on the command line, e.g. ``--finetune_towers both --output_dir out``.
"""

from __future__ import annotations

import json
import sys

from asym_st.training.config_io import parse_recipe_args
from asym_st.training.daft import train_daft
from asym_st.training.daft_config import DAFTConfig

CONFIG = DAFTConfig


if __name__ == "__main__":
    result = train_daft(parse_recipe_args(CONFIG, sys.argv[1:]))
    if result.output_dir is not None:  # the main process
        for name, stage in result.stages.items():
            print(f"stage {name}: {stage.steps} steps, best {stage.metric} = {stage.best_metric}")
        print("final diagnostics:", json.dumps(result.diagnostics, indent=1))
        if result.retention is not None:
            print(result.retention.to_markdown())
        if result.latency is not None:
            print("query-encoding speed-up vs the teacher:", result.latency["speedup"])
