"""The ``asym-st`` command line: argument parsing only; every subcommand calls the public API."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence

from asym_st.commands.evaluate import EVALUATE_SUBCOMMANDS
from asym_st.commands.hub import HUB_SUBCOMMANDS

__all__ = ["main", "build_parser"]


def _int_list(text: str) -> list[int]:
    try:
        return [int(part) for part in text.replace(" ", "").split(",") if part != ""]
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers like 0,5; got {text!r}") from error


def _add_build(subparsers) -> None:
    parser = subparsers.add_parser(
        "build",
        help="make an asymmetric model from a teacher (document tower = teacher, query tower = some of its layers)",
        description="Build an asymmetric model: the teacher as frozen document tower, and a query tower made of a "
        "few of its layers (QED's first+last by default) or of another encoder.",
    )
    parser.add_argument("teacher", help="sentence-transformers teacher: Hub id or local folder")
    parser.add_argument("--output", "-o", required=True, help="folder to save the asymmetric model to")
    parser.add_argument("--query-layers", type=_int_list, default=None, help="explicit teacher layers, e.g. 0,5")
    parser.add_argument(
        "--strategy",
        choices=["first_last", "first_k", "evenly_spaced"],
        default="first_last",
        help="layer selection when --query-layers is not given (default: first_last, QED's)",
    )
    parser.add_argument("--num-layers", type=int, default=2, help="number of query-tower layers (default: 2)")
    parser.add_argument("--query-encoder", default=None, help="build the query tower from this model instead")
    parser.add_argument("--allow-different-tokenizers", action="store_true")
    parser.add_argument("--query-max-seq-length", type=int, default=None, help="max tokens for queries")
    parser.add_argument("--revision", default=None, help="teacher revision on the Hub")
    parser.add_argument("--trust-remote-code", action="store_true", help="allow custom model code (off by default)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing non-empty output folder")
    parser.set_defaults(handler=_run_build)


def _run_build(args: argparse.Namespace) -> dict:
    from asym_st import QueryTowerConfig, build_asymmetric_model, save_asymmetric_model
    from asym_st.modeling import count_parameters, tower_modules

    config = QueryTowerConfig(
        strategy=args.strategy,
        num_layers=args.num_layers,
        layers=args.query_layers,
        encoder=args.query_encoder,
        allow_different_tokenizers=args.allow_different_tokenizers,
        max_seq_length=args.query_max_seq_length,
    )
    model = build_asymmetric_model(
        args.teacher, config, revision=args.revision, trust_remote_code=args.trust_remote_code
    )
    path = save_asymmetric_model(model, args.output, overwrite=args.overwrite)
    record = model.asym_st_record
    return {
        "output": str(path),
        "teacher": record.teacher,
        "teacher_revision": record.teacher_revision,
        "query_layers": record.query_layers,
        "teacher_num_layers": record.teacher_num_layers,
        "query_tower_parameters": sum(count_parameters(m) for m in tower_modules(model, "query")),
        "document_tower_parameters": sum(count_parameters(m) for m in tower_modules(model, "document")),
        "document_tower_fingerprint": record.document_tower_fingerprint,
    }


def _add_extract(subparsers) -> None:
    parser = subparsers.add_parser("extract", help="save one tower of an asymmetric model as a standalone model")
    parser.add_argument("model", help="asymmetric model folder or Hub id")
    parser.add_argument("--tower", choices=["query", "document"], required=True)
    parser.add_argument("--output", "-o", required=True)
    parser.add_argument("--overwrite", action="store_true")
    parser.set_defaults(handler=_run_extract)


def _run_extract(args: argparse.Namespace) -> dict:
    from asym_st import load_asymmetric_model, save_tower

    model = load_asymmetric_model(args.model)
    return {"output": str(save_tower(model, args.tower, args.output, overwrite=args.overwrite)), "tower": args.tower}


def _add_assemble(subparsers) -> None:
    parser = subparsers.add_parser("assemble", help="join two existing models as query and document towers")
    parser.add_argument("--query", required=True, help="query tower: model id or folder")
    parser.add_argument("--document", required=True, help="document tower: model id or folder")
    parser.add_argument("--output", "-o", required=True)
    parser.add_argument("--add-projection", action="store_true", help="add a Dense projection if widths differ")
    parser.add_argument("--allow-different-tokenizers", action="store_true")
    parser.add_argument("--overwrite", action="store_true")
    parser.set_defaults(handler=_run_assemble)


def _run_assemble(args: argparse.Namespace) -> dict:
    from asym_st import assemble_asymmetric_model, save_asymmetric_model

    model = assemble_asymmetric_model(
        args.query,
        args.document,
        add_projection=args.add_projection,
        allow_different_tokenizers=args.allow_different_tokenizers,
    )
    path = save_asymmetric_model(model, args.output, overwrite=args.overwrite)
    return {"output": str(path), "document_tower_fingerprint": model.asym_st_record.document_tower_fingerprint}


def _add_distill(subparsers) -> None:
    from asym_st.commands.distill import add_distill

    add_distill(subparsers)


# Later issues register more subcommands here (evaluate, bench, card, push).
SUBCOMMANDS: list[Callable] = [
    _add_build,
    _add_extract,
    _add_assemble,
    _add_distill,
    *HUB_SUBCOMMANDS,
    *EVALUATE_SUBCOMMANDS,
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="asym-st",
        description="Build, distill, evaluate and publish asymmetric dense retrievers on sentence-transformers.",
    )
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    subparsers = parser.add_subparsers(title="subcommands", metavar="COMMAND", dest="command")
    for register in SUBCOMMANDS:
        register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.version:
        from asym_st import __version__

        print(__version__)
        return 0
    if not hasattr(args, "handler"):
        parser.print_help()
        return 2
    try:
        result = args.handler(args)
    except (ValueError, FileNotFoundError, FileExistsError) as error:
        # Bad input is reported in one readable line, not a traceback.
        print(f"asym-st {args.command}: error: {error}", file=sys.stderr)
        return 1
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
