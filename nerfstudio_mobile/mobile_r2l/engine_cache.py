"""The fastest engine for a network whose weights may change under it (training with the viewer open).

An engine holds its own copy of the weights, and choosing one (building and timing every candidate, compiling)
costs seconds: rendering through one built for older weights would show a stale picture, rebuilding per frame
would stall the viewer. So renders go through the plain path until the weights settle, and the engine is chosen
once per weights and built once per ray-grid shape. Changed weights show in the version counters that every
in-place update bumps (an optimizer step, load_state_dict), which cost microseconds to read.
"""

from __future__ import annotations

import itertools
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from torch import Size, Tensor, nn

from nerfstudio_mobile.mobile_r2l.engines import EngineChoice, Render, fastest_engine
from nerfstudio_mobile.mobile_r2l.network import LightFieldNetwork


def weights_version(module: nn.Module) -> tuple[tuple[int, int], ...]:
    """Changes whenever a parameter or buffer of `module` is updated in place or replaced."""
    return tuple((t.data_ptr(), t._version) for t in itertools.chain(module.parameters(), module.buffers()))


@contextmanager
def untraced() -> Iterator[None]:
    """Suspend this thread's Python tracer. nerfstudio's viewer interrupts a render from one when the camera moves:
    a build cut half way would start again, and be cut again, on every frame while the camera moves."""
    tracer = sys.gettrace()
    sys.settrace(None)
    try:
        yield
    finally:
        sys.settrace(tracer)


class EngineCache:
    """Renders through the fastest engine once the weights have settled: unchanged for at least twice as long as
    the previous weights lasted, so renders during training keep the plain path however long its steps take, and
    its final (or paused) weights get the engine. The first weights it sees count as settled at once: a loaded run
    renders fast from its first frame (a viewer opened on a training run pays one choice that soon goes stale)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._version: tuple[tuple[int, int], ...] | None = None
        self._seen_at = 0.0
        self._previous_lasted = 0.0
        self._choice: EngineChoice | None = None
        self._renders: dict[Size, Render] = {}

    @property
    def chosen(self) -> EngineChoice | None:
        """The choice for the current weights (None: the plain path renders)."""
        return self._choice

    def render(self, network: LightFieldNetwork, x: Tensor, plain: Render) -> Tensor:
        """`network` on `x` through the fastest engine, or through `plain` while the weights may still change."""
        version, now = weights_version(network), self.clock()
        if version != self._version:
            self._previous_lasted = 0.0 if self._version is None else now - self._seen_at
            self._version, self._seen_at, self._choice, self._renders = version, now, None, {}
        if now - self._seen_at < 2 * self._previous_lasted:
            return plain(x)
        if x.shape not in self._renders:
            with untraced():
                if self._choice is None:
                    self._choice = fastest_engine(network, x)
                    self._renders[x.shape] = self._choice.render
                else:
                    self._renders[x.shape] = self._choice.engine.build(x)
        return self._renders[x.shape](x)
