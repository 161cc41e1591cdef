"""What a search is asked to do: the scene, where it writes, the storage, budgets and the sampler's settings.
What defines the search itself (space, training, pruner) is its fingerprint, recorded in the storage so that a
second run, or another worker, can only continue the same search."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from nas_nerf.search import SearchError
from nas_nerf.search.pruning import PrunerConfig
from nas_nerf.search.space import SearchSpace
from nas_nerf.search.targets import Targets
from nas_nerf.search.train import TrialTraining
from nerfstudio_mobile.data.formats import scene_format


@dataclass
class SearchConfig:
    """Everything a search needs."""

    data: Path
    """A Blender, nerfstudio (transforms.json) or LLFF (poses_bounds.npy) scene folder."""
    output_dir: Path = Path("outputs/nas-search")
    """Where trial runs (runs/<study part>-<trial number>/), architecture JSONs, tables and the plot go."""
    storage: str | None = None
    """Optuna storage URL (default: sqlite:///<output-dir>/search.db); PostgreSQL or MySQL for many machines."""
    study_name: str = "nas-nerf"
    """Prefix of the four studies (<name>.targets, <name>.s, <name>.xs, <name>.xxs) in the storage."""
    trials_per_tier: int = 8
    """Trainings per tier study (replays of cells trained before and over-budget cells are free)."""
    targets: tuple[float, float, float] | None = None
    """Explicit S XS XXS SSIM targets; default: 90/50/10% between the smallest and largest architectures."""
    space: SearchSpace = field(default_factory=SearchSpace)
    training: TrialTraining = field(default_factory=TrialTraining)
    pruner: PrunerConfig = field(default_factory=PrunerConfig)
    # A sampler starting from nothing in 10 dimensions cannot find a target's size on a budget of a handful of
    # trials; a few bisection steps along the space's diagonal bracket it, and the sampler refines from there.
    bisection_probes: int = 2
    """Trainings each tier spends first bisecting the space's diagonal to bracket its target's size."""
    startup_trials: int = 4
    """Proposals before TPE models anything (its random start-up)."""
    heartbeat_interval: int = 20
    """Seconds between a running trial's heartbeats."""
    grace_period: int | None = None
    """Seconds without a heartbeat after which a trial counts as killed and runs again (default: 3 heartbeats)."""
    seed: int | None = None
    """Sampler seed (default: random, so that workers propose different architectures)."""

    def validate(self) -> None:
        for part in (self.space, self.training, self.pruner):
            part.validate()
        if self.targets is not None:
            Targets.given(*self.targets)
        scene_format(Path(self.data))
        if (
            min(self.trials_per_tier, self.bisection_probes) < 0
            or self.startup_trials < 2
            or self.heartbeat_interval < 1
        ):
            raise SearchError(
                "--trials-per-tier and --bisection-probes must be >= 0, --startup-trials >= 2, "
                "--heartbeat-interval >= 1."
            )

    def storage_url(self) -> str:
        return self.storage or f"sqlite:///{(self.output_dir / 'search.db').resolve()}"

    def fingerprint(self) -> dict:
        """The settings every run on one study must share (JSON, as the storage holds it)."""
        return json.loads(json.dumps({"space": asdict(self.space), "training": asdict(self.training),
                                      "pruner": asdict(self.pruner)}))  # fmt: skip
