"""Where the benchmarks keep their results, and the one call that writes them.

Each benchmark ends by writing ``NAME.json`` (the numbers) and ``NAME.md`` (the report) side by side; this module
holds that step so that every script writes them the same way. Import it as a sibling module
(``from results_io import RESULTS, write_results``): ``benchmarks/`` is on ``sys.path`` when a benchmark runs.
"""

from __future__ import annotations

from pathlib import Path

from asym_st.utils import atomic_write_json, atomic_write_text

RESULTS = Path(__file__).parent / "results"


def write_results(name: str, result: dict, markdown: str, folder: Path = RESULTS) -> None:
    """Write ``result`` to ``folder/NAME.json`` and ``markdown`` to ``folder/NAME.md``, each atomically.

    The JSON is written first, so a failure on the markdown still leaves the numbers. ``folder`` (default
    ``benchmarks/results``) and its parents are created when missing (the atomic writers do it), so callers need
    no ``mkdir`` of their own.
    """
    atomic_write_json(folder / f"{name}.json", result)
    atomic_write_text(folder / f"{name}.md", markdown)


def hardware_line(hardware: dict) -> str:
    """The device the latencies and training ran on: the GPU when there was one, else the CPU and its threads."""
    host = (
        f"{hardware.get('cpu', '?')}, {hardware.get('torch_threads', '?')} threads, torch {hardware.get('torch', '?')}"
    )
    return f"{hardware['gpu']} (host: {host})" if "gpu" in hardware else host
