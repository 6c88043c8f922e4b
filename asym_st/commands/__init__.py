"""CLI subcommands beyond build/extract/assemble: each module defines _add_X(subparsers) and _run_X(args)."""
