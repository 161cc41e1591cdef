"""`ns-nas-search` on Blender lego at a CPU-feasible scale: the S / XS / XXS tiers against vanilla NeRF (params,
FLOPs, render time measured on this machine, SSIM). Writes benchmarks/results/search_lego.{json,md}.

The scene is a downscaled copy of ../shared/data/nerf_synthetic/lego made in a work dir (never shipped; lego is
CC-BY-NC). The space's largest architecture is vanilla NeRF (8×256 coarse and fine), so the largest boundary run
is also the vanilla reference, trained on exactly the trials' budget.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import tyro
from common import SHARED_DATA, WORK, machine, timed, write_results

from nas_nerf.search.cli import NASSearch
from nas_nerf.search.pruning import PrunerConfig
from nas_nerf.search.report import markdown_table
from nas_nerf.search.train import TrialTraining
from nerfstudio_mobile.data.scene_copies import downscaled_copy

GOALS = "XXS: >= 20x fewer FLOPs and >= 4.7x faster than vanilla; S: within 0.005 SSIM of vanilla at >= 3x fewer FLOPs"


@dataclass
class SearchLego:
    data: Path = SHARED_DATA / "nerf_synthetic" / "lego"
    work_dir: Path = WORK / "search_lego"
    size: int = 100
    """Image size (800 / 8)."""
    max_test_views: int = 25
    """Test (and val) views kept in the copy, evenly spaced (the search scores the val split)."""
    trials_per_tier: int = 4
    steps: int = 400
    """Base steps per trial; the smallest cells train up to twice as long (the budget rule)."""
    rays_per_batch: int = 256
    num_coarse_samples: int = 16
    num_importance_samples: int = 32
    eval_images: int = 4
    """Val views scored at every evaluation."""
    rungs: int = 0
    """Evaluations (and pruning) only from the base step count on: lego's SSIM sits on a plateau (background
    first) for the first few hundred steps, where it does not tell architectures apart."""
    threads: int = 1
    """One torch thread: on this shared 2-core machine, two threads contend with other jobs and run slower."""
    timing_repeats: int = 3
    seed: int = 0

    def main(self) -> None:
        summary, seconds = timed(self.search)
        rows = {row["model"]: row for row in summary["rows"]}
        result = {
            "rows": summary["rows"],
            "targets": summary["targets"]["ssim"],
            "frame": summary["frame"],
            "outcomes": summary["outcomes"],
            "goals": goals(rows),
            "total_minutes": seconds / 60,
            "machine": machine(),
            "setup": {k: str(v) if isinstance(v, Path) else v for k, v in asdict(self).items()},
        }
        write_results("search_lego", result, markdown(result))

    def search(self) -> dict:
        """Copy the scene and search on the copy; returns the search's summary."""
        scene = downscaled_copy(self.data, self.work_dir, self.size, self.max_test_views)
        search = NASSearch(
            data=scene.resolve(), output_dir=self.work_dir / "search", trials_per_tier=self.trials_per_tier,
            training=TrialTraining(
                steps=self.steps, rays_per_batch=self.rays_per_batch, num_coarse_samples=self.num_coarse_samples,
                num_importance_samples=self.num_importance_samples, eval_images=self.eval_images,
            ),
            pruner=PrunerConfig(rungs=self.rungs), seed=self.seed, threads=self.threads,
            timing_repeats=self.timing_repeats,
        )  # fmt: skip
        return search.main()


def goals(rows: dict[str, dict]) -> dict[str, bool | None]:
    vanilla, s, xxs = rows["NeRF"], rows.get("S"), rows.get("XXS")
    return {
        "xxs_20x_fewer_flops": xxs is not None and xxs["flops_reduction"] >= 20,
        "xxs_4.7x_faster": xxs is not None and xxs["speedup"] >= 4.7,
        "s_within_0.005_ssim": s is not None and s["ssim"] >= vanilla["ssim"] - 0.005,
        "s_3x_fewer_flops": s is not None and s["flops_reduction"] >= 3,
    }


def markdown(result: dict) -> str:
    h, w = result["frame"]
    setup = result["setup"]
    lines = [
        f"## NAS-NeRF search on Blender lego at {h}×{w} ({result['machine']})",
        "",
        markdown_table(result["rows"], (h, w)),
    ]
    goals = ", ".join(f"{name} {'met' if met else 'NOT met'}" for name, met in result["goals"].items())
    lines += [
        "",
        f"Goals ({GOALS}): {goals}.",
        "",
        f"What ran: {setup['trials_per_tier']} trainings per tier (the first 2 bisection probes, then TPE) after "
        "the two boundary runs (vanilla NeRF and "
        f"[1,1,1]×[8,8,8] both fields), {setup['steps']} base steps (budget rule: smaller cells up to 2×), "
        f"{setup['rays_per_batch']} rays/step, {setup['num_coarse_samples']} + {setup['num_importance_samples']} "
        f"samples while searching, SSIM on {setup['eval_images']} val views at {h}×{w}; trials per study part: "
        f"{result['outcomes']}. Render times: median of {setup['timing_repeats']} interleaved renders on "
        f"{setup['threads']} torch thread(s) while other jobs shared the CPU. "
        f"Total {result['total_minutes']:.0f} min.",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    tyro.cli(SearchLego).main()
