"""What every benchmark shares: where the real scenes are, and how a result is written and timed.

The real scenes live in ../shared/data beside the checkout (licences in SOURCES.md there). Benchmarks read them
in place and train on shrunk copies under benchmarks/work/ (git-ignored, nerfstudio_mobile.data.scene_copies);
nothing of them is ever copied into the package.
"""

from __future__ import annotations

import platform
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import torch

from nerfstudio_mobile.common.files import atomic_write, atomic_write_json
from nerfstudio_mobile.common.timing import median_seconds

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
RESULTS = Path(__file__).parent / "results"
WORK = Path(__file__).parent / "work"

T = TypeVar("T")


def machine() -> str:
    """The machine a result was measured on, for its JSON and its markdown title."""
    return f"{platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}"


def cpu_model() -> str:
    """The CPU's model name (timings of different machines are not comparable)."""
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "unknown CPU"


def results_name(stem: str, label: str) -> str:
    """`<stem>` or `<stem>_<label>`: a variant's results (another machine, recipe, setting) beside the default's."""
    return f"{stem}_{label}" if label else stem


def write_results(name: str, result: dict[str, Any], markdown: str, directory: Path = RESULTS) -> None:
    """`<name>.json` and `<name>.md` in `directory`, each written atomically (a killed run leaves the previous
    results whole); the markdown is printed as well."""
    directory.mkdir(parents=True, exist_ok=True)
    atomic_write_json(directory / f"{name}.json", result)
    atomic_write(directory / f"{name}.md", markdown)
    print(markdown)


def markdown_table(title: str, columns: list[str], rows: list[str], note: str = "") -> str:
    """A results file's markdown: `## title`, an optional note, and a table of `columns` over preformatted `rows`."""
    return "\n".join([f"## {title}", "", *([note, ""] if note else []), "| " + " | ".join(columns) + " |",
                      "|" + "---|" * len(columns), *rows, ""])  # fmt: skip


def timed(work: Callable[[], T]) -> tuple[T, float]:
    """`work()` once, with the seconds it took (timed as nerfstudio_mobile.common.timing times every call)."""
    results: list[T] = []
    seconds = median_seconds(lambda: results.append(work()), repeats=1, warmup=0)
    return results[0], seconds
