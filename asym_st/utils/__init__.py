"""Small shared utilities (atomic I/O)."""

from asym_st.utils.io import (
    OutputExistsError,
    atomic_directory,
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_text,
    file_checksum,
)

__all__ = [
    "OutputExistsError",
    "atomic_directory",
    "atomic_write_bytes",
    "atomic_write_json",
    "atomic_write_text",
    "file_checksum",
]
