"""Losses, one per file, in sentence-transformers style (paper reference, columns, example in each docstring)."""
