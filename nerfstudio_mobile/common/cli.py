"""One way for our ns-* commands to start: a tyro CLI in nerfstudio's colours, usage errors as one red line."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import tyro
from rich.console import Console
from rich.markup import escape


class UsageError(Exception):
    """A problem the user can fix (a path, a setting, a missing package); its message says what to do."""


def run_cli(command: Any, prog: str, console: Console | None = None) -> None:
    """Parse `command` (a dataclass with `main()`, or a union of them) and run it. A usage error prints its
    message on one red line and exits 2: no traceback."""
    tyro.extras.set_accent_color("bright_yellow")
    parsed = tyro.cli(command)
    with usage_errors_in_one_line(prog, console or Console(stderr=True)):
        parsed.main()


@contextmanager
def usage_errors_in_one_line(prog: str, console: Console) -> Iterator[None]:
    """A UsageError raised inside prints its message on one red line after `prog:` and exits 2: no traceback."""
    try:
        yield
    except UsageError as error:
        console.print(f"[bold red]{prog}:[/] {escape(str(error))}", soft_wrap=True)
        sys.exit(2)
