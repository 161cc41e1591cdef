"""What a search found: one record per architecture with a final evaluation, read off the finished trials of
all studies, and each tier's winner and the Pareto front among them."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from optuna.trial import FrozenTrial

from nas_nerf.search.space import Architecture
from nas_nerf.search.targets import Targets

TRAINED = ("trained", "pruned")
"""Outcomes that cost a training. The free ones: "reused" (the same cells were trained before), "dominated"
(cells meeting the tier's target with fewer FLOPs are known already) and "over-budget"."""


@dataclass(frozen=True)
class Record:
    """One architecture trained to its full budget (or a replay of one): a point of the Pareto plot."""

    part: str
    number: int
    architecture: Architecture
    space_params: dict[str, int]
    params: int
    gflops: float
    ssim: float
    psnr: float
    steps: int
    outcome: str
    run: str
    curve: tuple[tuple[int, float], ...]
    """(step, SSIM) at each evaluation."""

    @property
    def label(self) -> str:
        return f"{self.part}#{self.number}"

    @classmethod
    def from_trial(cls, part: str, trial: FrozenTrial) -> Record:
        cells, result = trial.user_attrs["architecture"], trial.user_attrs["result"]
        return cls(
            part, trial.number, Architecture.from_dict(cells["cells"]), cells["space_params"], cells["params"],
            cells["gflops"], result["ssim"], result["psnr"], result["steps"], result["outcome"], result["run"],
            tuple((int(step), float(ssim)) for step, ssim in trial.user_attrs["curve"]),
        )  # fmt: skip


def outcome(trial: FrozenTrial) -> str | None:
    """trained, pruned, reused, dominated or over-budget; None while the trial runs."""
    return trial.user_attrs.get("result", {}).get("outcome")


def cheapest_meeting(records: list[Record], target: float) -> Record | None:
    """The fewest FLOPs among architectures meeting the target (ties: the higher SSIM)."""
    return min((r for r in records if r.ssim >= target), key=lambda r: (r.gflops, -r.ssim), default=None)


@dataclass
class SearchResult:
    targets: Targets
    records: list[Record]
    """Every distinct architecture with a final evaluation, trained ones first."""
    outcomes: dict[str, Counter]
    """Per study part, how many trials were trained, pruned, reused or over budget."""

    def winners(self) -> dict[str, Record | None]:
        return {tier: cheapest_meeting(self.records, target) for tier, target in self.targets.ssim.items()}

    def pareto_front(self) -> list[Record]:
        """Architectures no cheaper one matches in SSIM, by FLOPs."""
        front: list[Record] = []
        for record in sorted(self.records, key=lambda r: (r.gflops, -r.ssim)):
            if not front or record.ssim > front[-1].ssim:
                front.append(record)
        return front
