"""``asym-st card`` and ``asym-st push``: argument parsing only; the work is in :mod:`asym_st.hub`.

There is deliberately no ``--token`` flag: a token on a command line ends up in shell history and process lists.
The push reads ``HF_TOKEN`` or the login saved by ``hf auth login``.
"""

from __future__ import annotations

import argparse
import sys

__all__ = ["HUB_SUBCOMMANDS", "add_card", "add_push"]


def _towers(text: str) -> tuple[str, ...]:
    from asym_st.hub.push import TOWER_KINDS

    if text.strip() == "all":
        return TOWER_KINDS
    towers = tuple(part.strip() for part in text.split(",") if part.strip())
    unknown = [t for t in towers if t not in TOWER_KINDS]
    if unknown or not towers:
        raise argparse.ArgumentTypeError(
            f"expected a comma-separated subset of {','.join(TOWER_KINDS)} or 'all'; got {text!r}"
        )
    return towers


def _add_card_overrides(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--license", default=None, help="license id (default: the teacher card's license)")
    parser.add_argument("--language", default=None, help="language code(s), comma-separated (default: the teacher's)")


def _language(text: str | None) -> str | list[str] | None:
    if text is None:
        return None
    codes = [code.strip() for code in text.split(",") if code.strip()]
    return codes[0] if len(codes) == 1 else codes


def add_card(subparsers) -> None:
    parser = subparsers.add_parser(
        "card",
        help="render or refresh the model card (README.md) from the results stored in the model folder",
        description="Render the model card of an asymmetric model from its folder and its stored results (eval/, "
        "training_config.json). An existing card keeps everything written outside the generated sections.",
    )
    parser.add_argument("model_dir", help="asymmetric model folder")
    parser.add_argument("--repo", default=None, help="the Hub repo of the model (usage snippet and result links)")
    parser.add_argument("--query-repo", default=None, help="the query tower's repo, for cross-links")
    parser.add_argument("--document-repo", default=None, help="the document tower's repo, for cross-links")
    parser.add_argument(
        "--kind", choices=["asymmetric", "query", "document"], default="asymmetric", help="which card to render"
    )
    parser.add_argument("--output", "-o", default=None, help="write the card here (default: MODEL_DIR/README.md)")
    _add_card_overrides(parser)
    parser.set_defaults(handler=run_card)


def run_card(args: argparse.Namespace) -> dict:
    from pathlib import Path

    from asym_st.hub import CardConfig, CardLinks, generated_sections, merge_cards, render_card, write_card
    from asym_st.utils.io import atomic_write_text

    links = CardLinks(asymmetric=args.repo, query=args.query_repo, document=args.document_repo)
    config = CardConfig(kind=args.kind, links=links, license=args.license, language=_language(args.language))
    if args.output is None:
        if args.kind != "asymmetric":
            raise ValueError(f"--kind {args.kind} needs --output: MODEL_DIR/README.md is the asymmetric model's card.")
        path = write_card(args.model_dir, config)
    else:
        path = Path(args.output)
        existing = path.read_text(encoding="utf-8") if path.is_file() else None
        path = atomic_write_text(path, str(merge_cards(existing, render_card(args.model_dir, config))))
    text = path.read_text(encoding="utf-8")
    from huggingface_hub import ModelCard

    metadata = ModelCard(text).data.to_dict()
    results = metadata.get("model-index", [{}])[0].get("results", [])
    return {
        "card": str(path),
        "kind": args.kind,
        "sections": list(generated_sections(text)),
        "model_index_metrics": sum(len(result.get("metrics", [])) for result in results),
        "evaluated": "**Not evaluated.**" not in text,
    }


def add_push(subparsers) -> None:
    parser = subparsers.add_parser(
        "push",
        help="publish the model (and its towers) to the Hugging Face Hub with generated cards",
        description="Push an asymmetric model to the Hub as repos that load with SentenceTransformer('org/name'). "
        "The token comes from HF_TOKEN or `hf auth login`. Each repo is updated in one commit: a failed push "
        "leaves it unchanged.",
    )
    parser.add_argument("model_dir", help="asymmetric model folder")
    parser.add_argument("--repo", required=True, help="the asymmetric model's repo, namespace/name")
    parser.add_argument(
        "--towers",
        type=_towers,
        default=("asymmetric", "query"),
        help="what to push: a comma-separated subset of asymmetric,query,document, or all (default: asymmetric,query)",
    )
    parser.add_argument("--query-repo", default=None, help="the query tower's repo (default: REPO-query)")
    parser.add_argument("--document-repo", default=None, help="the document tower's repo (default: REPO-document)")
    parser.add_argument("--private", action="store_true", help="create new repos as private")
    parser.add_argument("--revision", default=None, help="branch to push to (created if missing; default main)")
    parser.add_argument("--create-pr", action="store_true", help="open a pull request instead of committing")
    parser.add_argument("--commit-message", default=None)
    parser.add_argument("--dry-run", action="store_true", help="write the folders that would be uploaded; no upload")
    parser.add_argument("--output", "-o", default=None, help="dry-run folder (default: MODEL_DIR.hub-dry-run)")
    parser.add_argument("--max-retries", type=int, default=3, help="retries on transient HTTP errors (default 3)")
    _add_card_overrides(parser)
    parser.set_defaults(handler=run_push)


def run_push(args: argparse.Namespace) -> dict:
    from asym_st.hub import PushConfig, PushError, push_model

    config = PushConfig(
        repo_id=args.repo,
        towers=args.towers,
        query_repo=args.query_repo,
        document_repo=args.document_repo,
        private=args.private,
        revision=args.revision,
        create_pr=args.create_pr,
        commit_message=args.commit_message,
        dry_run=args.dry_run,
        output_dir=args.output,
        max_retries=args.max_retries,
        license=args.license,
        language=_language(args.language),
    )
    try:
        return push_model(args.model_dir, config).to_dict()
    except PushError as error:
        # A failed push is not a usage error, but it deserves the same one readable line (no traceback).
        print(f"asym-st push: error: {error}", file=sys.stderr)
        raise SystemExit(1) from error


HUB_SUBCOMMANDS = [add_card, add_push]
