"""One way for our ns-* commands to start: a tyro CLI in nerfstudio's colours, usage errors as one red line."""

from __future__ import annotations

import sys
from typing import Any

import tyro
from rich.console import Console


def run_cli(command: Any, usage_errors: tuple[type[Exception], ...], prog: str, console: Console) -> None:
    """Parse `command` (a dataclass with `main()`, or a union of them) and run it. A usage error (bad path,
    missing dependency, invalid setting) prints its message, which says what to do, and exits 2: no traceback."""
    tyro.extras.set_accent_color("bright_yellow")
    parsed = tyro.cli(command)
    try:
        parsed.main()
    except usage_errors as error:
        console.print(f"[bold red]{prog}:[/] {error}")
        sys.exit(2)
