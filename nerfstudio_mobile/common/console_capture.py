"""`output_to_log`: while a command runs library code, what the libraries print goes to a log file and the terminal
keeps only what the command itself shows (progress bars, results)."""

from __future__ import annotations

import io
import logging
import re
import sys
import time
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from rich.console import Console

# colours, cursor moves and line clears: consoles set up while stdout was a terminal keep emitting them
_ESCAPES = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


class _PlainTextLog(io.TextIOWrapper):
    """A text file that drops terminal escape codes, so the log reads the same in an editor as in `cat`."""

    def write(self, text: str) -> int:
        super().write(_ESCAPES.sub("", text))
        return len(text)


@contextmanager
def output_to_log(path: Path) -> Iterator[Console]:
    """During the block, send stdout and stderr to `path` (appended), and with them nerfstudio's CONSOLE and
    config dumps, print(), tqdm, warnings (shown on sys.stderr) and logging (stream handlers are pointed at the
    log too: they hold the stream they were set up with). Yields a console on the terminal, for what the user
    should see. An exception leaving the block has its traceback written to the log; everything is restored."""
    path.parent.mkdir(parents=True, exist_ok=True)
    terminal_out, terminal_err = sys.stdout, sys.stderr
    with _PlainTextLog(path.open("ab"), encoding="utf-8", line_buffering=True) as log:
        log.write(f"\n===== {time.strftime('%Y-%m-%d %H:%M:%S')} {' '.join(sys.argv)}\n")
        handlers = {
            handler: handler.setStream(log)
            for handler in _stream_handlers()
            if handler.stream in (terminal_out, terminal_err)
        }
        sys.stdout = sys.stderr = log
        try:
            yield Console(file=terminal_out)
        except BaseException:
            log.write(traceback.format_exc())
            raise
        finally:
            sys.stdout, sys.stderr = terminal_out, terminal_err
            for handler in _stream_handlers():  # and those set up during the block, which hold the log
                if handler in handlers or handler.stream is log:
                    handler.setStream(handlers.get(handler) or terminal_err)


def _stream_handlers() -> list[logging.StreamHandler]:
    loggers = [logging.getLogger(), *logging.Logger.manager.loggerDict.values()]
    return [
        handler
        for logger in loggers
        if isinstance(logger, logging.Logger)  # the manager also holds placeholders
        for handler in logger.handlers
        # holding a stream; logging's own stderr handlers look sys.stderr up for each record: they follow the swap
        if isinstance(handler, logging.StreamHandler) and "stream" in vars(handler)
    ]
