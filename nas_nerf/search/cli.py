"""`ns-nas-search`: the smallest NAS-NeRF field cells that meet the S, XS and XXS quality targets on one scene.

ns-nas-search --data data/nerf_synthetic/lego --output-dir outputs/lego-search --trials-per-tier 8
ns-nas-search --data ... --storage postgresql://user@host/db    # the same command on every worker
"""

from __future__ import annotations

import sys
import warnings
from dataclasses import dataclass

import optuna
import torch
from rich.console import Console

from nas_nerf.search import SearchError
from nas_nerf.search.config import SearchConfig
from nas_nerf.search.report import write_report
from nas_nerf.search.study import Search
from nerfstudio_mobile.common.cli import run_cli

CONSOLE = Console(width=None if sys.stdout.isatty() else 160)  # logs: long lines rather than wrapped ones


@dataclass
class NASSearch(SearchConfig):
    """Search the smallest NAS-NeRF field cells that meet the S, XS and XXS SSIM targets on one scene. Running it
    again continues the search; workers sharing a storage share it."""

    timing_repeats: int = 3
    """Timed renders of one eval frame per architecture (median) for the render-time ratios; 0: no timing."""
    threads: int | None = None
    """torch CPU threads of this worker (default: torch's choice); N workers on one machine: cores / N each."""

    def main(self) -> dict:
        """Search (or continue), then write the report; returns the summary (as in summary.json)."""
        optuna.logging.set_verbosity(optuna.logging.WARNING)  # the search prints one line per trial itself
        warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
        self.validate()
        if self.timing_repeats < 0 or (self.threads is not None and self.threads < 1):
            raise SearchError("--timing-repeats must be >= 0 and --threads >= 1.")
        if self.threads is not None:
            torch.set_num_threads(self.threads)
        result = Search(self, CONSOLE).run()
        return write_report(result, self, CONSOLE, self.timing_repeats)


def entrypoint() -> None:
    run_cli(NASSearch, "ns-nas-search", CONSOLE)


if __name__ == "__main__":
    entrypoint()
