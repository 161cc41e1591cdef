"""The Optuna side of `ns-nas-search`: four studies in one storage, `<study>.targets`, `<study>.s`, `<study>.xs`
and `<study>.xxs`.

* targets: the two boundary architectures (largest and smallest of the space), trained like any trial; a
  GridSampler hands each to one worker.
* one study per tier: constrained TPE (or NSGA-II) maximises `tier_score`, i.e. the fewest FLOPs subject to
  SSIM >= the tier's target (`trial.set_constraint`), and successive halving prunes on the same score at
  intermediate evaluations. A tier study starts warm: every architecture already trained is replayed into it
  at no cost, its first trainings bisect the space's diagonal to bracket the target's size, and an
  architecture trained once (in any study) is never trained again, nor one costlier than a known architecture
  meeting the target. Each tier's winner is read off all finished trials of all studies, so tiers nest:
  XXS <= XS <= S in FLOPs.
* resuming and many workers: finished trials live in the storage; heartbeats mark trials of a killed worker
  failed, and RetryHeartbeatStaleTrialCallback queues them again; budgets count finished trials of the whole study,
  so a second run of the same command continues it and N workers share it.
"""

from __future__ import annotations

import json
import math
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import optuna
from optuna.pruners import BasePruner, HyperbandPruner, NopPruner, SuccessiveHalvingPruner
from optuna.samplers import BaseSampler, GridSampler, NSGAIISampler, TPESampler
from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback
from optuna.trial import FrozenTrial, TrialState
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from sqlalchemy import event
from sqlalchemy.exc import SQLAlchemyError

from nas_nerf.search import SearchError
from nas_nerf.search.space import BOUNDARIES, Architecture, SearchSpace
from nas_nerf.search.targets import TIERS, Targets, tier_score
from nas_nerf.search.train import Metrics, TrialTraining, train, trainer_config

PARTS: tuple[str, ...] = ("targets", *TIERS)
TRAINED = ("trained", "pruned")
"""Outcomes that cost a training. The free ones: "reused" (the same cells were trained before), "dominated"
(cells meeting the tier's target with fewer FLOPs are known already) and "over-budget"."""
PROPOSALS_PER_TRIAL = 5
"""A tier also ends after this many sampler proposals per trial of its budget: a space mostly over budget, or
one exhausted, cannot loop forever on proposals that train nothing."""
POLL_SECONDS = 2.0
STORAGE_ATTEMPTS = 5


@dataclass
class PrunerConfig:
    """Early stopping on intermediate eval SSIM; its rungs are also when every trial is evaluated."""

    kind: Literal["successive-halving", "hyperband", "none"] = "successive-halving"
    reduction_factor: int = 2
    """η: the share of trials promoted at each rung is 1/η, and rungs are η times apart."""
    rungs: int = 1
    """Evaluations before the base step count: at steps / η^rungs, ..., steps / η, then steps (and η·steps, ...
    for trials the budget rule trains longer), and always at the trial's last step. Early ones only help once
    SSIM has left its first plateau (the background is learnt first): 0 judges trials from steps on."""

    def validate(self) -> None:
        if self.reduction_factor < 2 or self.rungs < 0:
            raise SearchError("--pruner.reduction-factor must be >= 2 and --pruner.rungs >= 0.")

    def first_step(self, base_steps: int) -> int:
        return max(1, base_steps // self.reduction_factor**self.rungs)

    def eval_steps(self, base_steps: int, total_steps: int) -> list[int]:
        step, steps = self.first_step(base_steps), []
        while step < total_steps:
            steps.append(step)
            step *= self.reduction_factor
        return [*steps, total_steps]

    def make(self, base_steps: int, longest_steps: int) -> BasePruner:
        first, eta = self.first_step(base_steps), self.reduction_factor
        if self.kind == "successive-halving":
            return BehindOnly(SuccessiveHalvingPruner(min_resource=first, reduction_factor=eta))
        if self.kind == "hyperband":
            return BehindOnly(HyperbandPruner(min_resource=first, max_resource=longest_steps, reduction_factor=eta))
        return NopPruner()


class BehindOnly(BasePruner):
    """Successive halving (or Hyperband) that stops only trials behind their tier's pace (a negative
    intermediate score). One keeping pace but costlier than others is kept: only its final SSIM tells whether it
    wins, and proposals costlier than a finished trial meeting the target are never trained anyway."""

    def __init__(self, pruner: BasePruner) -> None:
        self.pruner = pruner

    def prune(self, study: optuna.Study, trial: FrozenTrial) -> bool:
        # asked every time: it records the trial in its rungs, for later trials to compete with
        stop = self.pruner.prune(study, trial)
        return stop and trial.intermediate_values[trial.last_step] < 0


@dataclass
class SearchConfig:
    """Everything a search needs; what defines the search (space, training, pruner) is recorded in the storage
    so that a second run, or another worker, can only continue the same search."""

    data: Path
    """A Blender-format scene (transforms_{train,val}.json), e.g. data/nerf_synthetic/lego."""
    output_dir: Path = Path("outputs/nas-search")
    """Where trial runs (runs/<study part>-<trial number>/), architecture JSONs, tables and the plot go."""
    storage: str | None = None
    """Optuna storage URL (default: sqlite:///<output-dir>/search.db). With PostgreSQL or MySQL, workers on many
    machines run the same command on one search."""
    study_name: str = "nas-nerf"
    """Prefix of the four studies (<name>.targets, <name>.s, <name>.xs, <name>.xxs) in the storage."""
    trials_per_tier: int = 8
    """Trainings per tier study (replays of cells trained before and over-budget cells are free)."""
    targets: tuple[float, float, float] | None = None
    """Explicit S XS XXS SSIM targets; default: 90/50/10% between the smallest and largest architectures."""
    space: SearchSpace = field(default_factory=SearchSpace)
    training: TrialTraining = field(default_factory=TrialTraining)
    pruner: PrunerConfig = field(default_factory=PrunerConfig)
    sampler: Literal["tpe", "nsga2"] = "tpe"
    """Constrained TPE, or NSGA-II (constrained domination); both read each trial's constraints."""
    bisection_probes: int = 2
    """Trainings each tier spends first bisecting the diagonal of the space (depths and uniform widths growing
    together from the smallest to the largest cells) between the largest cells known to miss its target and
    the cheapest known to meet it: a few trainings bracket the target's size, which a sampler starting from
    nothing in 10 dimensions cannot do on a budget of a handful of trials. The sampler refines from there."""
    startup_trials: int = 4
    """Proposals before the sampler models anything (TPE's random start-up; NSGA-II's population size)."""
    heartbeat_interval: int = 20
    """Seconds between a running trial's heartbeats."""
    grace_period: int | None = None
    """Seconds without a heartbeat after which a trial counts as killed, is marked failed and queued again
    (default: 3 heartbeats)."""
    seed: int | None = None
    """Sampler seed (default: random, so that workers propose different architectures)."""

    def validate(self) -> None:
        for part in (self.space, self.training, self.pruner):
            part.validate()
        if self.targets is not None:
            Targets.given(*self.targets)
        if not (Path(self.data) / "transforms_train.json").is_file():
            raise SearchError(f"--data {self.data} is not a Blender-format scene (no transforms_train.json).")
        if (
            min(self.trials_per_tier, self.bisection_probes) < 0
            or self.startup_trials < 2
            or self.heartbeat_interval < 1
        ):
            raise SearchError(
                "--trials-per-tier and --bisection-probes must be >= 0, --startup-trials >= 2, "
                "--heartbeat-interval >= 1."
            )
        if self.sampler not in ("tpe", "nsga2"):
            raise SearchError(f"--sampler must be tpe or nsga2, got {self.sampler!r}.")

    def storage_url(self) -> str:
        return self.storage or f"sqlite:///{(self.output_dir / 'search.db').resolve()}"

    def fingerprint(self) -> dict:
        """The settings every run on one study must share (JSON, as the storage holds it)."""
        return json.loads(json.dumps({"space": asdict(self.space), "training": asdict(self.training),
                                      "pruner": asdict(self.pruner)}))  # fmt: skip


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


@dataclass(frozen=True)
class Goal:
    """What one trial is measured against: its tier's target, or nothing for a boundary (scored by SSIM)."""

    tier: str | None
    targets: Targets | None
    gflops: float
    ceiling_gflops: float

    def target(self, step: int | None = None) -> float:
        """The final target, or the tier's pace after `step` steps."""
        assert self.tier is not None and self.targets is not None
        return self.targets.ssim[self.tier] if step is None else self.targets.pace(self.tier, step)

    def score(self, ssim: float, step: int | None = None) -> float:
        if self.tier is None:
            return ssim
        return tier_score(ssim, self.target(step), self.gflops, self.ceiling_gflops)

    def constrain(self, trial: optuna.Trial, ssim: float, step: int | None = None) -> None:
        if self.tier is not None:
            trial.set_constraint("ssim", self.target(step) - ssim)


def _fast_sqlite(connection: object, _: object) -> None:
    """Optuna commits every attribute it stores; in SQLite's default mode each commit waits for the disk (about
    10 ms here). With write-ahead logging, commits survive a killed process without that wait, and readers do
    not block the writer."""
    connection.execute("PRAGMA journal_mode=WAL")  # type: ignore[attr-defined]
    connection.execute("PRAGMA synchronous=NORMAL")  # type: ignore[attr-defined]


class Search:
    """Runs (or continues, or joins) one search, then returns every finished architecture."""

    def __init__(self, config: SearchConfig, console: Console) -> None:
        self.config = config
        space = config.space
        self.boundaries = {name: space.boundary_params(name) for name in BOUNDARIES}
        self.largest_params = space.decode(self.boundaries["largest"]).cost().params
        self.ceiling_gflops = space.ceiling_gflops()
        config.output_dir.mkdir(parents=True, exist_ok=True)
        self.storage = self._connect()
        self.progress = Progress(
            SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
            TimeElapsedColumn(), console=console,
        )  # fmt: skip

    def run(self) -> SearchResult:
        with self.progress:
            for study in self._studies().values():
                optuna.storages.fail_stale_trials(study)
            targets = Targets.given(*self.config.targets) if self.config.targets else self._measure_targets()
            self._show_targets(targets)
            for tier in TIERS:
                self._search_tier(tier, targets)
            self._wait_for_other_workers()
        studies = self._studies()
        outcomes = {
            part: Counter(outcome(t) or t.state.name.lower() for t in study.get_trials(deepcopy=False))
            for part, study in studies.items()
        }
        return SearchResult(targets, self._records(), outcomes)

    # -- phases ------------------------------------------------------------------------------------------------

    def _measure_targets(self) -> Targets:
        study = self._study("targets", GridSampler({"boundary": list(BOUNDARIES)}), NopPruner())
        task = self.progress.add_task("boundary architectures", total=len(BOUNDARIES))
        while True:
            optuna.storages.fail_stale_trials(study)
            trials = study.get_trials(deepcopy=False)
            finished = [t for t in trials if t.state == TrialState.COMPLETE]
            done = {t.params["boundary"]: Record.from_trial("targets", t) for t in finished}
            self.progress.update(task, completed=len(done))
            if len(done) == len(BOUNDARIES):
                break
            running = {t.params.get("boundary") for t in trials if t.state == TrialState.RUNNING}
            if any(t.state == TrialState.WAITING for t in trials) or set(BOUNDARIES) - set(done) - running:
                study.optimize(self._objective("targets", None), n_trials=1)
            else:
                time.sleep(POLL_SECONDS)  # another worker trains the last one
        return Targets.between(done["largest"].curve, done["smallest"].curve)

    def _search_tier(self, tier: str, targets: Targets) -> None:
        base, seed = self.config.training.steps, self.config.seed
        seed = None if seed is None else seed + TIERS.index(tier)
        sampler: BaseSampler
        if self.config.sampler == "tpe":
            sampler = TPESampler(
                n_startup_trials=self.config.startup_trials, multivariate=True, constant_liar=True, seed=seed
            )
        else:
            sampler = NSGAIISampler(population_size=self.config.startup_trials, seed=seed)
        pruner = self.config.pruner.make(base, round(base * self.config.training.max_step_factor))
        study = self._study(tier, sampler, pruner)
        self._claim(study, "targets", targets.to_dict())
        if not study.get_trials(deepcopy=False):
            self._warm_start(study)
        task = self.progress.add_task(f"tier {tier.upper()} trainings", total=self.config.trials_per_tier)

        def budget_spent() -> bool:
            proposed = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED))
                        if not t.user_attrs.get("warm_start")]  # fmt: skip
            trained = sum(outcome(t) in TRAINED for t in proposed)
            self.progress.update(task, completed=min(trained, self.config.trials_per_tier))
            budget = self.config.trials_per_tier
            return trained >= budget or len(proposed) >= PROPOSALS_PER_TRIAL * budget

        def next_or_stop(study: optuna.Study, _: FrozenTrial | None = None) -> None:
            if budget_spent():
                study.stop()
            else:
                self._queue_probe(study, targets.ssim[tier])

        if not budget_spent():
            next_or_stop(study)
            study.optimize(self._objective(tier, targets), callbacks=[next_or_stop])

    def _warm_start(self, study: optuna.Study) -> None:
        """Queue every architecture already evaluated: replays cost nothing and give the sampler a model
        of the space from the first proposal on."""
        records = self._records()
        for record in records:
            study.enqueue_trial(record.space_params, user_attrs={"warm_start": True}, skip_if_exists=True)
        if records:
            self.progress.console.print(
                f"[dim]{study.study_name} starts from the {len(records)} architectures evaluated so far (replayed)"
            )

    def _queue_probe(self, study: optuna.Study, target: float) -> None:
        """Once the replays are done, queue the tier's next bisection probe, until it has had its share: the
        diagonal cells halfway between the largest known to miss the target (or pruned by this tier) and the
        cheapest anything known to meet it (none when that interval holds no untried cell)."""
        trials = study.get_trials(deepcopy=False)
        probes = sum(bool(t.user_attrs.get("probe")) for t in trials if t.state != TrialState.FAIL)  # retries: once
        if probes >= self.config.bisection_probes or any(t.state == TrialState.WAITING for t in trials):
            return
        space, records = self.config.space, self._records()
        known = {r.architecture.key: r.ssim for r in records}
        for trial in trials:  # behind this tier's pace: as good as missed
            if outcome(trial) == "pruned":
                known.setdefault(Architecture.from_dict(trial.user_attrs["architecture"]["cells"]).key, -math.inf)
        diagonal = [(params, space.decode(params)) for params in space.diagonal()]
        missed = [k for k, (_, a) in enumerate(diagonal) if known.get(a.key, math.inf) < target]
        incumbent = cheapest_meeting(records, target)
        untried = [
            params
            for k, (params, a) in enumerate(diagonal)
            if k > max(missed, default=-1)
            and a.key not in known
            and (incumbent is None or a.cost().paper_flops / 1e9 < incumbent.gflops)
            and space.over_budget(a)[0] <= 0
        ]
        if untried:
            study.enqueue_trial(untried[len(untried) // 2], user_attrs={"probe": True}, skip_if_exists=True)

    def _wait_for_other_workers(self) -> None:
        """Report only once trials of other workers have finished (or been found dead)."""
        task = None
        while running := self._running_trials():
            if task is None:
                task = self.progress.add_task("", total=None)
            self.progress.update(task, description=f"waiting for {running} trial(s) of other workers")
            time.sleep(POLL_SECONDS)

    def _running_trials(self) -> int:
        count = 0
        for study in self._studies().values():
            optuna.storages.fail_stale_trials(study)
            count += len(study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)))
        return count

    # -- one trial ---------------------------------------------------------------------------------------------

    def _objective(self, part: str, targets: Targets | None) -> Callable[[optuna.Trial], float]:
        def objective(trial: optuna.Trial) -> float:
            if part == "targets":
                params = self.boundaries[trial.suggest_categorical("boundary", BOUNDARIES)]  # type: ignore[index]
            else:
                params = self.config.space.suggest(trial)
            architecture = self.config.space.decode(params)
            cost = architecture.cost()
            trial.set_user_attr("architecture", {"cells": architecture.to_dict(), "space_params": params,
                                                 "params": cost.params, "gflops": cost.paper_flops / 1e9})  # fmt: skip
            goal = Goal(None if part == "targets" else part, targets, cost.paper_flops / 1e9, self.ceiling_gflops)
            label = f"{part}#{trial.number}"
            excess, why = self.config.space.over_budget(architecture)
            if goal.tier is not None:
                trial.set_constraint("budget", excess)
            if excess > 0:
                goal.constrain(trial, 0.0)  # nothing measured: as far from the target as can be
                self._finish(trial, label, architecture, "over-budget", f"[yellow]over budget, not trained: {why}")
                raise optuna.TrialPruned(why)
            records = self._records()
            source = next((r for r in records if r.architecture.key == architecture.key), None)
            if source is not None:
                return self._replay(trial, label, architecture, goal, source)
            if goal.tier is not None and (incumbent := cheapest_meeting(records, goal.target())):
                if incumbent.gflops <= goal.gflops:
                    goal.constrain(trial, goal.target())  # at least as good as the incumbent: take it as met
                    note = f"[dim]not trained: {incumbent.label} meets the target with {incumbent.gflops:.3f} GFLOPs"
                    self._finish(trial, label, architecture, "dominated", note)
                    raise optuna.TrialPruned(note)
            return self._train(trial, part, label, architecture, goal)

        return objective

    def _train(self, trial: optuna.Trial, part: str, label: str, architecture: Architecture, goal: Goal) -> float:
        training = self.config.training
        steps = training.steps_for(architecture.cost().params, self.largest_params)
        config = trainer_config(
            architecture, training, self.config.data.resolve(), self.config.output_dir.resolve() / "runs",
            f"{part}-{trial.number:04d}", steps,
        )  # fmt: skip
        run = str(config.get_base_dir() / "config.yml")
        curve: list[tuple[int, float]] = []
        last: Metrics = {}

        def on_eval(step: int, metrics: Metrics) -> None:
            curve.append((step, metrics["ssim"]))
            last.update(metrics)
            trial.set_user_attr("curve", curve)
            trial.report(goal.score(metrics["ssim"], step), step)
            self.progress.update(task, description=f"{label} {architecture} · SSIM {metrics['ssim']:.4f} @ {step}")
            if step < steps and trial.should_prune():
                raise optuna.TrialPruned(f"pruned after {step} steps")

        task = self.progress.add_task(f"{label} {architecture}", total=steps)
        try:
            train(
                config, self.config.pruner.eval_steps(training.steps, steps), training.eval_images, on_eval,
                lambda step: self.progress.update(task, completed=step),
            )  # fmt: skip
        except optuna.TrialPruned:
            step, ssim = curve[-1]
            goal.constrain(trial, ssim, step)
            note = f"[dim]pruned at {step} steps: SSIM {ssim:.4f}, behind the pace {goal.target(step):.4f}"
            self._finish(trial, label, architecture, "pruned", note, ssim=ssim, psnr=last["psnr"], steps=step, run=run)
            raise
        finally:
            self.progress.remove_task(task)
        goal.constrain(trial, last["ssim"])
        self._finish(trial, label, architecture, "trained", self._verdict(goal, last["ssim"], steps),
                     ssim=last["ssim"], psnr=last["psnr"], steps=steps, run=run)  # fmt: skip
        return goal.score(last["ssim"])

    def _replay(self, trial: optuna.Trial, label: str, architecture: Architecture, goal: Goal, source: Record) -> float:
        for step, ssim in source.curve:
            trial.report(goal.score(ssim, step), step)
            trial.should_prune()  # enters the result in the pruner's rungs, for later trials to compete with
        trial.set_user_attr("curve", source.curve)
        goal.constrain(trial, source.ssim)
        note = None if trial.user_attrs.get("warm_start") else (
            f"[dim]same cells as {source.label}: " + self._verdict(goal, source.ssim, source.steps)
        )  # fmt: skip
        self._finish(trial, label, architecture, "reused", note, ssim=source.ssim, psnr=source.psnr,
                     steps=source.steps, run=source.run, reused_from=source.label)  # fmt: skip
        return goal.score(source.ssim)

    def _finish(
        self, trial: optuna.Trial, label: str, architecture: Architecture, kind: str, note: str | None, **attrs: object
    ) -> None:
        """Record the trial's outcome (`kind`) and result; print its line unless `note` is None."""
        trial.set_user_attr("result", {"outcome": kind, **attrs})
        if note is not None:
            gflops = architecture.cost().paper_flops / 1e9
            self.progress.console.print(f"[bold]{label:>10}[/] {architecture}  {gflops:8.3f} GFLOPs  {note}")

    @staticmethod
    def _verdict(goal: Goal, ssim: float, steps: int) -> str:
        if goal.tier is None:
            return f"SSIM {ssim:.4f} after {steps} steps"
        mark = "[green]meets[/]" if ssim >= goal.target() else "[red]misses[/]"
        return f"SSIM {ssim:.4f} after {steps} steps, {mark} {goal.tier.upper()} target {goal.target():.4f}"

    def _show_targets(self, targets: Targets) -> None:
        source = "given" if not targets.largest else (
            f"between the smallest (SSIM {targets.smallest[-1][1]:.4f}) and largest (SSIM {targets.largest[-1][1]:.4f})"
            " architectures"
        )  # fmt: skip
        values = ", ".join(f"{tier.upper()} {ssim:.4f}" for tier, ssim in targets.ssim.items())
        self.progress.console.print(f"[bold]SSIM targets[/] ({source}): {values}")

    # -- storage -----------------------------------------------------------------------------------------------

    def _connect(self) -> RDBStorage:
        url, attempt = self.config.storage_url(), 0
        while True:
            try:
                storage = RDBStorage(
                    url,
                    # SQLite serialises writers: wait for the lock rather than fail when workers write at once
                    engine_kwargs={"connect_args": {"timeout": 120}} if url.startswith("sqlite") else None,
                    heartbeat_interval=self.config.heartbeat_interval,
                    grace_period=self.config.grace_period or 3 * self.config.heartbeat_interval,
                    heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=1),
                )
                if url.startswith("sqlite"):
                    event.listen(storage.engine, "connect", _fast_sqlite)
                    storage.engine.dispose()  # later connections get the pragmas
                return storage
            except SQLAlchemyError as err:
                # workers starting together race to create the tables: the losers find them on a second look
                attempt += 1
                if attempt == STORAGE_ATTEMPTS:
                    raise SearchError(f"Cannot open the Optuna storage {url}: {err}") from err
                time.sleep(attempt)

    def _study(self, part: str, sampler: BaseSampler, pruner: BasePruner) -> optuna.Study:
        study = optuna.create_study(
            storage=self.storage, study_name=f"{self.config.study_name}.{part}", direction="maximize",
            sampler=sampler, pruner=pruner, load_if_exists=True,
        )  # fmt: skip
        self._claim(study, "search", self.config.fingerprint())
        return study

    def _claim(self, study: optuna.Study, key: str, value: dict) -> None:
        """Record `value` on the study, or check it equals what the study was run with."""
        value = json.loads(json.dumps(value))
        stored = study.user_attrs.get(key)
        if stored is None:
            study.set_user_attr(key, value)
        elif stored != value:
            raise SearchError(
                f"Study {study.study_name} in {self.config.storage_url()} was run with other {key} settings:\n"
                f"  stored: {json.dumps(stored)}\n  now:    {json.dumps(value)}\n"
                "Run the same command to continue it, or pass a new --study-name."
            )

    def _studies(self) -> dict[str, optuna.Study]:
        names = {summary.study_name for summary in optuna.get_all_study_summaries(self.storage)}
        return {
            part: optuna.load_study(study_name=f"{self.config.study_name}.{part}", storage=self.storage)
            for part in PARTS
            if f"{self.config.study_name}.{part}" in names
        }

    def _records(self) -> list[Record]:
        """Distinct architectures with a final evaluation, trained ones first."""
        finished = [
            Record.from_trial(part, trial)
            for part, study in self._studies().items()
            for trial in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
            if outcome(trial) in ("trained", "reused")
        ]
        unique: dict[str, Record] = {}
        for record in sorted(finished, key=lambda r: r.outcome != "trained"):
            unique.setdefault(record.architecture.key, record)
        return list(unique.values())
