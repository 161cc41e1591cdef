"""Cached views for training: `PseudoViewDataset` (in RAM or streamed from disk), batched by `collate_views`."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor
from torch.utils.data import Dataset

from nerfstudio_mobile.mobile_r2l.cache.codec import PseudoView
from nerfstudio_mobile.mobile_r2l.cache.store import CorruptViewError, PseudoViewCache


@dataclass(frozen=True)
class PseudoViewBatch:
    """B views stacked; accumulation only when every view has one."""

    indices: Tensor
    """int64 [B]."""
    rgb: Tensor
    """uint8 [B, H, W, 3]."""
    depth: Tensor
    """float16 [B, H, W]."""
    c2w: Tensor
    """float32 [B, 3, 4]."""
    accumulation: Tensor | None = None
    """uint8 [B, H, W]."""


def collate_views(views: Sequence[PseudoView]) -> PseudoViewBatch:
    """`collate_fn` for a `DataLoader` over a `PseudoViewDataset`."""
    accumulations = [view.accumulation for view in views if view.accumulation is not None]
    return PseudoViewBatch(
        indices=torch.tensor([view.index for view in views], dtype=torch.int64),
        rgb=torch.stack([view.rgb for view in views]),
        depth=torch.stack([view.depth for view in views]),
        c2w=torch.stack([view.c2w for view in views]),
        accumulation=torch.stack(accumulations) if len(accumulations) == len(views) else None,
    )


class PseudoViewDataset(Dataset[PseudoView]):
    """Views of a cache for training: all decoded in RAM when they fit in `ram_budget_bytes`, otherwise
    decoded from disk on access with an LRU of decoded views filling the budget.

    Use `sample` in the training loop, or a `DataLoader(dataset, collate_fn=collate_views, num_workers=k)`
    to decode in parallel when the views do not fit (in RAM mode workers would each copy everything).
    A view found corrupt is quarantined (so the next generation re-renders it) and another one is served.
    """

    def __init__(
        self,
        cache: PseudoViewCache,
        indices: Sequence[int] | None = None,
        ram_budget_bytes: int = 4 * 2**30,
    ) -> None:
        self.cache = cache
        self.indices = list(cache.indices() if indices is None else indices)
        if not self.indices:
            raise ValueError(f"the pseudo-view cache at {cache.root} has no views to train on")
        meta = cache.meta
        # rgb + float16 depth + accumulation + pose, i.e. the decoded size of one view.
        view_bytes = meta.height * meta.width * (3 + 2 + 1) + 3 * 4 * 4
        self.in_ram = view_bytes * len(self.indices) <= ram_budget_bytes
        self._lru_capacity = 0 if self.in_ram else ram_budget_bytes // view_bytes
        self._decoded: OrderedDict[int, PseudoView] = OrderedDict()
        if self.in_ram:
            for index in self.indices:
                if (view := self._read_or_quarantine(index)) is not None:
                    self._decoded[index] = view
            self.indices = list(self._decoded)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, position: int) -> PseudoView:
        if not 0 <= position < len(self.indices):
            raise IndexError(f"position {position} outside [0, {len(self.indices)})")
        for offset in range(len(self.indices)):
            index = self.indices[(position + offset) % len(self.indices)]
            if (view := self._get(index)) is not None:
                return view
        raise RuntimeError(f"every view of the pseudo-view cache at {self.cache.root} is corrupt")

    def sample(self, batch_size: int, generator: torch.Generator | None = None) -> PseudoViewBatch:
        """`batch_size` random whole views, distinct while the dataset has that many."""
        if batch_size <= len(self):
            positions = torch.randperm(len(self), generator=generator)[:batch_size]
        else:
            positions = torch.randint(len(self), (batch_size,), generator=generator)
        return collate_views([self[position] for position in positions.tolist()])

    def _get(self, index: int) -> PseudoView | None:
        if index in self._decoded:
            self._decoded.move_to_end(index)
            return self._decoded[index]
        view = self._read_or_quarantine(index)
        if view is not None and self._lru_capacity > 0:
            self._decoded[index] = view
            if len(self._decoded) > self._lru_capacity:
                self._decoded.popitem(last=False)
        return view

    def _read_or_quarantine(self, index: int) -> PseudoView | None:
        try:
            return self.cache.read(index)
        except CorruptViewError as error:
            self.cache.quarantine(index, error.reason)
        except FileNotFoundError:
            pass  # quarantined earlier (possibly by another worker)
        return None
