"""QED recipe: distill a teacher into a few-layer query tower (Wang & Lyu, SustaiNLP 2023).

Run it as a plain script, under ``accelerate launch`` or under ``torchrun``, with the same config:

    python recipes/qed.py --config recipes/configs/qed_minilm.yaml
    accelerate launch --config_file recipes/accelerate/cpu.yaml recipes/qed.py --config recipes/configs/qed_minilm.yaml
    torchrun --nproc_per_node 2 recipes/qed.py --config recipes/configs/qed_minilm.yaml

Any config field can be overridden on the command line, e.g. ``--learning_rate 5e-5 --output_dir out``.
"""

from __future__ import annotations

import sys

from transformers import HfArgumentParser

from asym_st.training import QEDConfig, distill_query_tower


def parse_config(argv: list[str]) -> QEDConfig:
    if "--config" in argv:
        position = argv.index("--config")
        path, rest = argv[position + 1], argv[:position] + argv[position + 2 :]
        overrides = vars(HfArgumentParser(QEDConfig).parse_args(rest)) if rest else {}
        given = {key for key in overrides if any(arg.lstrip("-").replace("-", "_") == key for arg in rest)}
        return QEDConfig.from_yaml(path, **{key: overrides[key] for key in given})
    (config,) = HfArgumentParser(QEDConfig).parse_args_into_dataclasses(argv)
    return config


if __name__ == "__main__":
    result = distill_query_tower(parse_config(sys.argv[1:]))
    if result.retention is not None:
        print(result.retention.to_markdown())
