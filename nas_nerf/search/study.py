"""The orchestration of `ns-nas-search`: targets first, then one Optuna study per tier (see storage.py for where
they live).

* targets: the two boundary architectures (largest and smallest of the space), trained like any trial; a
  GridSampler hands each to one worker.
* one study per tier: constrained TPE maximises `tier_score`, i.e. the fewest FLOPs subject to SSIM >= the
  tier's target (`trial.set_constraint`), and successive halving (pruning.py) stops trials behind the tier's
  pace at intermediate evaluations. A tier study starts warm: every architecture already trained is replayed
  into it at no cost, its first trainings bisect the space's diagonal to bracket the target's size, and an
  architecture trained once (in any study) is never trained again, nor one costlier than a known architecture
  meeting the target. Each tier's winner is read off all finished trials of all studies, so tiers nest:
  XXS <= XS <= S in FLOPs.
* resuming and many workers: finished trials live in the storage; budgets count finished trials of the whole
  study, so a second run of the same command continues it and N workers share it.
"""

from __future__ import annotations

import math
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

import optuna
from optuna.pruners import NopPruner
from optuna.samplers import GridSampler, TPESampler
from optuna.trial import FrozenTrial, TrialState
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from nas_nerf.search.config import SearchConfig
from nas_nerf.search.records import TRAINED, Record, SearchResult, cheapest_meeting, outcome
from nas_nerf.search.space import BOUNDARIES, Architecture
from nas_nerf.search.storage import SearchStorage
from nas_nerf.search.targets import TIERS, Targets, tier_score
from nas_nerf.search.train import Metrics, train, trainer_config
from nerfstudio_mobile.common.files import make_dirs

PROPOSALS_PER_TRIAL = 5
"""A tier also ends after this many sampler proposals per trial of its budget: a space mostly over budget, or
one exhausted, cannot loop forever on proposals that train nothing."""
POLL_SECONDS = 2.0


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


class Search:
    """Runs (or continues, or joins) one search, then returns every finished architecture."""

    def __init__(self, config: SearchConfig, console: Console) -> None:
        self.config = config
        space = config.space
        self.boundaries = {name: space.boundary_params(name) for name in BOUNDARIES}
        self.largest_params = space.decode(self.boundaries["largest"]).cost().params
        self.ceiling_gflops = space.ceiling_gflops()
        make_dirs(config.output_dir)
        self.store = SearchStorage(config)
        self.progress = Progress(
            SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
            TimeElapsedColumn(), console=console,
        )  # fmt: skip

    def run(self) -> SearchResult:
        with self.progress:
            for study in self.store.studies().values():
                optuna.storages.fail_stale_trials(study)
            targets = Targets.given(*self.config.targets) if self.config.targets else self._measure_targets()
            self._show_targets(targets)
            for tier in TIERS:
                self._search_tier(tier, targets)
            self._wait_for_other_workers()
        studies = self.store.studies()
        outcomes = {
            part: Counter(outcome(t) or t.state.name.lower() for t in study.get_trials(deepcopy=False))
            for part, study in studies.items()
        }
        return SearchResult(targets, self.store.records(), outcomes)

    # -- phases ------------------------------------------------------------------------------------------------

    def _measure_targets(self) -> Targets:
        study = self.store.study("targets", GridSampler({"boundary": list(BOUNDARIES)}), NopPruner())
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
        seed = None if self.config.seed is None else self.config.seed + TIERS.index(tier)
        sampler = TPESampler(
            n_startup_trials=self.config.startup_trials, multivariate=True, constant_liar=True, seed=seed
        )
        study = self.store.study(tier, sampler, self.config.pruner.make(self.config.training.steps))
        self.store.claim(study, "targets", targets.to_dict())
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
        records = self.store.records()
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
        space, records = self.config.space, self.store.records()
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
        for study in self.store.studies().values():
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
            records = self.store.records()
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
