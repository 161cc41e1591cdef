"""The three quality tiers and what each must reach.

Targets come from the two boundary architectures of the space trained like any trial:
t = SSIM_smallest + p · (SSIM_largest − SSIM_smallest), p = 0.9 (S), 0.5 (XS), 0.1 (XXS); or they are given.
The boundaries' learning curves also give each tier a pace: after any number of steps, the SSIM below which a
trial has fallen behind the next tier down. Early stopping compares a trial with that pace at the same step, not
with the final target that no trial reaches early; the slack of one tier absorbs the noise of early evaluations.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from nas_nerf.search import SearchError

TIERS: tuple[str, str, str] = ("s", "xs", "xxs")
TIER_FRACTIONS: dict[str, float] = {"s": 0.9, "xs": 0.5, "xxs": 0.1}
PACE_FRACTIONS: dict[str, float] = {"s": 0.5, "xs": 0.1, "xxs": 0.0}
"""The next tier down's fraction (the smallest architecture's curve below XXS)."""

Curve = tuple[tuple[int, float], ...]
"""(step, SSIM) at each evaluation of one training."""


@dataclass(frozen=True)
class Targets:
    ssim: dict[str, float]
    """The SSIM each tier must reach on the eval split."""
    largest: Curve = ()
    """Learning curve of the largest boundary architecture (empty for given targets)."""
    smallest: Curve = ()
    """Learning curve of the smallest boundary architecture (empty for given targets)."""

    @classmethod
    def between(cls, largest: Curve, smallest: Curve) -> Targets:
        high, low = largest[-1][1], smallest[-1][1]
        if high <= low:
            raise SearchError(
                f"The largest architecture (SSIM {high:.4f}) did not beat the smallest (SSIM {low:.4f}), so there "
                "is nothing to search between them: train longer (--training.steps) or widen the ranges."
            )
        return cls({tier: low + p * (high - low) for tier, p in TIER_FRACTIONS.items()}, largest, smallest)

    @classmethod
    def given(cls, s: float, xs: float, xxs: float) -> Targets:
        if not 0.0 < xxs <= xs <= s <= 1.0:
            raise SearchError(f"--targets S XS XXS must satisfy 0 < XXS <= XS <= S <= 1, got {s} {xs} {xxs}.")
        return cls({"s": s, "xs": xs, "xxs": xxs})

    def pace(self, tier: str, step: int) -> float:
        """The SSIM below which a trial of `tier` has fallen behind after `step` steps: the next tier down's
        fraction between the boundaries' curves at that step (each held at its last value). Given targets have
        no curves: the next tier's target (none below XXS)."""
        if not self.largest:
            lower = TIERS.index(tier) + 1
            return self.ssim[TIERS[lower]] if lower < len(TIERS) else -math.inf
        low, high = _at(self.smallest, step), _at(self.largest, step)
        if high <= low:  # this early the boundaries are not apart yet: nobody can be judged behind
            return -math.inf
        return low + PACE_FRACTIONS[tier] * (high - low)

    def to_dict(self) -> dict:
        return {"ssim": self.ssim, "largest": list(map(list, self.largest)), "smallest": list(map(list, self.smallest))}

    @classmethod
    def from_dict(cls, data: dict) -> Targets:
        def curve(points: list) -> Curve:
            return tuple((int(step), float(ssim)) for step, ssim in points)

        return cls(dict(data["ssim"]), curve(data["largest"]), curve(data["smallest"]))


def _at(curve: Curve, step: int) -> float:
    """The curve's value at its last evaluation at or before `step` (its first value before that)."""
    earlier = [ssim for at, ssim in curve if at <= step]
    return earlier[-1] if earlier else curve[0][1]


def tier_score(ssim: float, target: float, gflops: float, ceiling_gflops: float) -> float:
    """What a tier study maximises. Meeting the target: how many decades cheaper than the largest cell of the
    space (>= 0, so smaller wins). Missing it: the SSIM shortfall (< 0, always worse than meeting it).
    Intermediate evaluations get the same score against the tier's pace: negative means behind."""
    return math.log10(ceiling_gflops / gflops) if ssim >= target else ssim - target
