"""EmbedDistill recipe: embedding + score matching into a small query tower, with generated queries (Kim et al., 2023).

Run it as a plain script, under ``accelerate launch`` or under ``torchrun``, with the same config:

    python recipes/embed_distill.py --config recipes/configs/embed_distill_minilm.yaml
    accelerate launch recipes/embed_distill.py --config recipes/configs/embed_distill_minilm.yaml
    torchrun --nproc_per_node 2 recipes/embed_distill.py --config recipes/configs/embed_distill_minilm.yaml

Any config field can be overridden on the command line, e.g. ``--score_weight 0 --output_dir out`` (QED with the
EmbedDistill distance) or ``--query_generator doc2query/msmarco-t5-base-v1 --queries_per_passage 3``.
"""

from __future__ import annotations

import sys

from transformers import HfArgumentParser

from asym_st.training import EmbedDistillConfig, embed_distill


def parse_config(argv: list[str]) -> EmbedDistillConfig:
    """``--config FILE`` (YAML) plus ``--field value`` overrides, or all fields as flags."""
    parser = HfArgumentParser(EmbedDistillConfig)
    if "--config" not in argv:
        (config,) = parser.parse_args_into_dataclasses(argv)
        return config
    position = argv.index("--config")
    path, rest = argv[position + 1], argv[:position] + argv[position + 2 :]
    parsed = vars(parser.parse_args(rest)) if rest else {}
    # Only the flags actually given override the file (the parser fills every other field with its default).
    given = {key for key in parsed if any(arg.lstrip("-").replace("-", "_") == key for arg in rest)}
    return EmbedDistillConfig.from_yaml(path, **{key: parsed[key] for key in given})


if __name__ == "__main__":
    result = embed_distill(parse_config(sys.argv[1:]))
    if result.retention is not None:
        print(result.retention.to_markdown())
