"""`ns-nas-search` on the generated scene: targets → trials → tiers → architecture JSONs that train, resuming a
killed search, two workers on one SQLite study, the budget, trials on nerfstudio and LLFF folders, and errors.
Budgets are tiny (seconds a trial)."""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import imageio.v2 as imageio
import numpy as np
import optuna
import pytest
import torch
from nerfstudio.data.dataparsers.nerfstudio_dataparser import NerfstudioDataParserConfig
from optuna.storages import RetryHeartbeatStaleTrialCallback
from optuna.trial import TrialState
from rich.console import Console

from nas_nerf.cell import FieldCellConfig, load_architecture
from nas_nerf.configs import nas_nerf_trainer
from nas_nerf.model import NASNeRFModelConfig
from nas_nerf.search import SearchError
from nas_nerf.search import study as study_module
from nas_nerf.search.cli import entrypoint
from nas_nerf.search.config import SearchConfig
from nas_nerf.search.pruning import PrunerConfig
from nas_nerf.search.records import outcome
from nas_nerf.search.report import frame_milliseconds
from nas_nerf.search.space import Architecture, FieldSpace, SearchSpace
from nas_nerf.search.study import Search
from nas_nerf.search.targets import TIER_FRACTIONS, TIERS, Targets
from nas_nerf.search.train import TrialTraining, train, trainer_config
from nerfstudio_mobile.data.formats import scene_format
from nerfstudio_mobile.data.llff import LLFFDataParserConfig
from nerfstudio_mobile.data.scenes import SceneConfig, focal_length, generate_scene

SPACE_ARGS = [
    "--coarse.depth1", "1", "2", "--coarse.depth3", "1", "1", "--coarse.widths", "8", "32",
    "--fine.depth1", "1", "2", "--fine.depth3", "1", "2", "--fine.widths", "8", "64",
]  # fmt: skip
GRACE_SECONDS = 3
"""Without a heartbeat for this long, a trial counts as killed."""
TRAINING_ARGS = [
    "--training.rays-per-batch", "512", "--training.num-coarse-samples", "16",
    "--training.num-importance-samples", "16", "--training.lr", "2e-2", "--training.eval-images", "2",
    "--training.max-step-factor", "1.25", "--heartbeat-interval", "1", "--grace-period", str(GRACE_SECONDS),
    "--threads", "1",
]  # fmt: skip
MAX_GFLOPS = 42.0
"""Cuts the top of the test space (the largest cells cost 50 GFLOPs)."""
TRIALS_PER_TIER = 1
LABEL = re.compile(r"^\s*(targets|s|xs|xxs)#(\d+) ", re.MULTILINE)


def search_args(output_dir: Path, scene: Path, *extra: str) -> list[str]:
    return ["--data", str(scene), "--output-dir", str(output_dir), *SPACE_ARGS, *TRAINING_ARGS, *extra]


def start_search(args: list[str], log: Path) -> subprocess.Popen[bytes]:
    """`ns-nas-search` as its own process, printing to `log` (a pipe nobody reads could fill up and block it)."""
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    command = [sys.executable, "-m", "nas_nerf.search.cli", *args]
    with log.open("w") as output:
        return subprocess.Popen(command, env=env, stdout=output, stderr=subprocess.STDOUT)


def search_in_process(args: list[str]) -> str:
    """`ns-nas-search` in the test process (no second start-up: the imports cost seconds); returns its output."""
    output, threads = io.StringIO(), torch.get_num_threads()
    with pytest.MonkeyPatch.context() as patch, contextlib.redirect_stdout(output):
        patch.setattr(sys, "argv", ["ns-nas-search", *args])
        entrypoint()
    torch.set_num_threads(threads)  # --threads 1 must not slow the tests that follow
    return output.getvalue()


def wait_until(condition: Callable[[], object], process: subprocess.Popen[bytes], log: Path) -> object:
    """Poll `condition` (on the search database) until it holds, while the process runs."""
    deadline = time.monotonic() + 240
    while process.poll() is None and time.monotonic() < deadline:
        try:
            if found := condition():
                return found
        except Exception:  # the search has not created its database yet
            pass
        time.sleep(0.5)
    raise AssertionError(f"condition never held (exit code {process.poll()}):\n{log.read_text()[-3000:]}")


def studies(output_dir: Path) -> dict[str, optuna.Study]:
    storage = optuna.storages.RDBStorage(  # read only: the search creates the tables
        f"sqlite:///{output_dir / 'search.db'}",
        engine_kwargs={"connect_args": {"timeout": 60}},
        skip_table_creation=True,
    )
    names = {s.study_name for s in optuna.get_all_study_summaries(storage)}
    return {
        part: optuna.load_study(study_name=f"nas-nerf.{part}", storage=storage)
        for part in ("targets", *TIERS)
        if f"nas-nerf.{part}" in names
    }


def trained(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    return [t for t in study.trials if outcome(t) in ("trained", "pruned")]


def run_dirs(output_dir: Path) -> set[str]:
    return {p.name for p in (output_dir / "runs").iterdir()} if (output_dir / "runs").is_dir() else set()


@pytest.fixture(scope="module")
def resumed_search(synthetic_scene: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A search killed (SIGKILL) in the middle of a tier trial's training, then run again to the end."""
    output_dir = tmp_path_factory.mktemp("search") / "search"
    args = search_args(
        output_dir, synthetic_scene, "--training.steps", "120", "--trials-per-tier", str(TRIALS_PER_TIER),
        "--max-gflops", str(MAX_GFLOPS), "--seed", "0", "--timing-repeats", "1",
    )  # fmt: skip
    first_log = output_dir.parent / "first.log"
    first = start_search(args, first_log)

    def training_tier_trial() -> tuple[str, int] | None:
        for part, study in studies(output_dir).items():
            running = [t.number for t in study.trials if t.state == TrialState.RUNNING and part != "targets"]
            if running and f"{part}-{running[0]:04d}" in run_dirs(output_dir):
                return part, running[0]
        return None

    killed = wait_until(training_tier_trial, first, first_log)
    first.send_signal(signal.SIGKILL)
    first.wait()
    before = {
        (part, t.number): (t.state, t.params, t.value, outcome(t))
        for part, study in studies(output_dir).items()
        for t in study.trials
        if t.state.is_finished()
    }
    time.sleep(GRACE_SECONDS + 1)  # as a restart later would: the killed trial's heartbeat is stale by now
    log = search_in_process(args)
    summary = json.loads((output_dir / "summary.json").read_text())
    return {"output_dir": output_dir, "before": before, "killed": killed, "log": log, "summary": summary}


@pytest.mark.slow
def test_resume_continues_the_killed_study(resumed_search: dict) -> None:
    output_dir, before = resumed_search["output_dir"], resumed_search["before"]
    after = studies(output_dir)
    for (part, number), finished in before.items():  # no finished trial lost or redone
        trial = after[part].trials[number]
        assert (trial.state, trial.params, trial.value, outcome(trial)) == finished
    assert len(trained(after["targets"])) == 2  # the boundaries were trained once, by the first run
    assert "targets" not in {part for part, _ in LABEL.findall(resumed_search["log"])}
    killed_part, killed_number = resumed_search["killed"]
    assert after[killed_part].trials[killed_number].state == TrialState.FAIL  # its heartbeat stopped: not counted
    retries = [
        t
        for t in after[killed_part].trials
        if RetryHeartbeatStaleTrialCallback.retried_trial_number(t) == killed_number
    ]
    assert len(retries) == 1 and retries[0].state.is_finished()
    for part, study in after.items():
        assert not [t for t in study.trials if t.state == TrialState.RUNNING]
        if part != "targets":
            assert len(trained(study)) <= TRIALS_PER_TIER, part  # continued, not started over
    trained_dirs = {f"{part}-{t.number:04d}" for part, study in after.items() for t in trained(study)}
    assert trained_dirs | {f"{killed_part}-{killed_number:04d}"} == run_dirs(output_dir)  # one per training


@pytest.mark.slow
def test_tiers_meet_targets_and_nest(resumed_search: dict) -> None:
    summary = resumed_search["summary"]
    boundaries = {
        t.params["boundary"]: t.user_attrs["result"]["ssim"]
        for t in studies(resumed_search["output_dir"])["targets"].trials
    }
    targets = summary["targets"]["ssim"]
    for tier, fraction in TIER_FRACTIONS.items():
        expected = boundaries["smallest"] + fraction * (boundaries["largest"] - boundaries["smallest"])
        assert targets[tier] == pytest.approx(expected)
    rows = {row["model"]: row for row in summary["rows"]}
    assert list(rows) == ["NeRF", "S", "XS", "XXS"]
    for tier in TIERS:
        row = rows[tier.upper()]
        assert row["ssim"] >= row["target_ssim"] == pytest.approx(targets[tier])
        assert row["gflops"] <= MAX_GFLOPS and row["flops_reduction"] > 10 and row["speedup"] > 1
    assert rows["XXS"]["gflops"] <= rows["XS"]["gflops"] <= rows["S"]["gflops"]
    output_dir = resumed_search["output_dir"]
    assert (output_dir / "pareto.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "| XXS |" in (output_dir / "table.md").read_text()
    assert len((output_dir / "table.csv").read_text().splitlines()) == 5


@pytest.mark.slow
def test_over_budget_architectures_were_not_trained(resumed_search: dict) -> None:
    output_dir = resumed_search["output_dir"]
    for part, study in studies(output_dir).items():
        for trial in study.trials:
            if trial.user_attrs["architecture"]["gflops"] > MAX_GFLOPS:
                assert outcome(trial) == "over-budget" and trial.state == TrialState.PRUNED
                assert f"{part}-{trial.number:04d}" not in run_dirs(output_dir)


@pytest.mark.slow
def test_tier_architecture_trains_with_ns_train_recipe(resumed_search: dict, synthetic_scene: Path) -> None:
    path = resumed_search["output_dir"] / "architectures" / "xxs.json"
    coarse, fine = load_architecture(path)
    assert json.loads(path.read_text())["tier"] == "xxs"
    config = nas_nerf_trainer("nas-nerf", FieldCellConfig(), FieldCellConfig())
    config.pipeline.model = NASNeRFModelConfig(
        architecture_file=path, num_coarse_samples=8, num_importance_samples=8
    )  # a Python caller's architecture file: read when the model is built
    config.pipeline.datamanager.data = synthetic_scene
    config.pipeline.datamanager.train_num_rays_per_batch = 64
    config.output_dir, config.vis, config.max_num_iterations = path.parent / "check", "tensorboard", 3
    config.steps_per_eval_batch = config.steps_per_eval_image = config.steps_per_eval_all_images = 100
    trainer = config.setup(local_rank=0, world_size=1)
    trainer.setup()
    assert (config.pipeline.model.coarse_cell, config.pipeline.model.fine_cell) == (coarse, fine)
    trainer.train()
    assert trainer.step == 2 and any(config.get_checkpoint_dir().glob("step-*.ckpt"))


@pytest.mark.slow
def test_two_workers_share_one_study(synthetic_scene: Path, tmp_path: Path) -> None:
    output_dir = tmp_path / "shared"
    args = search_args(
        output_dir, synthetic_scene, "--training.steps", "30", "--trials-per-tier", "2",
        "--targets", "0.99", "0.98", "0.97", "--timing-repeats", "0",
    )  # fmt: skip
    other_log = tmp_path / "other.log"
    other = start_search(args, other_log)
    wait_until(lambda: studies(output_dir), other, other_log)  # the second worker joins a search under way
    logs = [search_in_process(args)]
    assert other.wait(timeout=300) == 0, other_log.read_text()
    logs.append(other_log.read_text())
    ran = [set(LABEL.findall(log)) for log in logs]
    assert ran[0] and ran[1] and not ran[0] & ran[1]  # both worked, never on the same trial
    all_trials = set()
    for part, study in studies(output_dir).items():
        numbers = [t.number for t in study.trials]
        assert numbers == list(range(len(numbers)))
        assert all(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in study.trials)
        assert 2 <= len(trained(study)) <= 3, part  # the budget, plus at most one trial in flight when it was met
        all_trials |= {(part, str(t.number)) for t in study.trials if not t.user_attrs.get("warm_start")}
    assert ran[0] | ran[1] == all_trials  # nothing lost (replays of known cells at a tier's start print no line)
    assert run_dirs(output_dir) == {f"{p}-{t.number:04d}" for p, s in studies(output_dir).items() for t in trained(s)}


@pytest.mark.unit
def test_over_budget_proposals_never_reach_training(
    synthetic_scene: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """In-process, with training replaced by a recorder: every over-budget proposal stops before it."""
    trained_cells: list[Architecture] = []

    def record_training(config, eval_steps, eval_images, on_eval, on_step) -> None:  # type: ignore[no-untyped-def]
        model = config.pipeline.model
        trained_cells.append(Architecture(model.coarse_cell, model.fine_cell))
        for step in eval_steps:
            on_eval(step, {"ssim": 0.5, "psnr": 20.0})

    monkeypatch.setattr(study_module, "train", record_training)
    space = SearchSpace(FieldSpace((1, 2), (1, 1), (8, 32)), FieldSpace((1, 2), (1, 2), (8, 64)), max_gflops=35.0)
    config = SearchConfig(
        data=synthetic_scene, output_dir=tmp_path, trials_per_tier=4, targets=(0.9, 0.8, 0.7), space=space,
        training=TrialTraining(steps=8), seed=0,
    )  # fmt: skip
    result = Search(config, Console(quiet=True)).run()
    assert result.outcomes["s"]["over-budget"] > 0 and trained_cells
    assert all(space.over_budget(cells)[0] <= 0 for cells in trained_cells)
    assert all(r.gflops <= 35.0 for r in result.records)


@pytest.mark.unit
def test_budget_rule_and_evaluation_rungs() -> None:
    training = TrialTraining(steps=100, step_scaling=0.5, max_step_factor=2.0)
    assert training.steps_for(params=1000, largest_params=1000) == 100
    assert training.steps_for(params=1000, largest_params=2250) == 150
    assert training.steps_for(params=10, largest_params=1000) == 200  # capped
    assert PrunerConfig(reduction_factor=2, rungs=2).eval_steps(100, 150) == [25, 50, 100, 150]
    targets = Targets.between(largest=((50, 0.5), (100, 0.9)), smallest=((50, 0.4), (100, 0.5)))
    assert targets.ssim["xs"] == pytest.approx(0.7)
    assert targets.pace("s", 60) == pytest.approx(0.45) and targets.pace("xxs", 100) == pytest.approx(0.5)


@pytest.mark.unit
@pytest.mark.parametrize(
    ("space", "message"),
    [
        (SearchSpace(coarse=FieldSpace(depth1=(3, 1))), r"--coarse.depth1 must satisfy 1 <= LOW <= HIGH"),
        (SearchSpace(fine=FieldSpace(depth3=(0, 2))), r"--fine.depth3 must satisfy"),
        (SearchSpace(fine=FieldSpace(widths=(16, 100), width_step=8)), r"--fine.width-step 8 must .* divide"),
        (SearchSpace(max_params=0), r"--max-params must be positive"),
    ],
)
def test_invalid_ranges_are_refused(space: SearchSpace, message: str) -> None:
    with pytest.raises(SearchError, match=message):
        space.validate()


@pytest.mark.unit
def test_cli_reports_errors_without_a_traceback(
    synthetic_scene: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for args, message in [
        (["--coarse.widths", "64", "8"], "--coarse.widths must satisfy 1 <= LOW <= HIGH"),
        (["--targets", "0.5", "0.8", "0.9"], "must satisfy 0 < XXS <= XS <= S <= 1"),
        (["--max-params", "1000"], "Even the smallest architecture"),
    ]:
        monkeypatch.setattr(sys, "argv", ["ns-nas-search", "--data", str(synthetic_scene), "--output-dir",
                                          str(tmp_path), *args])  # fmt: skip
        with pytest.raises(SystemExit) as exit_info:
            entrypoint()
        assert exit_info.value.code == 2 and message in capsys.readouterr().out


def llff_scene(blender: Path, folder: Path) -> Path:
    """The generated Blender scene's train and val views as one LLFF folder (poses_bounds.npy and images/)."""
    frames, angle = [], 0.0
    for split in ("train", "val"):
        meta = json.loads((blender / f"transforms_{split}.json").read_text())
        frames += meta["frames"]
        angle = meta["camera_angle_x"]
    (folder / "images").mkdir(parents=True)
    for i, frame in enumerate(frames):
        shutil.copy(blender / f"{frame['file_path']}.png", folder / "images" / f"{i:03d}.png")
    c2w = np.array([frame["transform_matrix"] for frame in frames])[:, :3, :4]  # OpenGL [right, up, back]
    rotation = np.stack([-c2w[:, :, 1], c2w[:, :, 0], c2w[:, :, 2]], axis=2)  # LLFF's [down, right, back]
    size = imageio.imread(folder / "images" / "000.png").shape[0]
    hwf = np.broadcast_to(np.array([size, size, focal_length(size, angle)])[None, :, None], (len(c2w), 3, 1))
    poses = np.concatenate([rotation, c2w[:, :, 3:], hwf], axis=2).reshape(len(c2w), 15)
    bounds = np.broadcast_to(np.array([2.0, 6.0]), (len(c2w), 2))  # the cameras sit 4 from the scene's centre
    np.save(folder / "poses_bounds.npy", np.concatenate([poses, bounds], axis=1))
    return folder


def scene_in_format(kind: str, blender: Path, folder: Path) -> Path:
    """A small scene in one of the two formats a search reads besides Blender's."""
    if kind == "llff":
        return llff_scene(blender, folder)
    config = SceneConfig(output_dir=folder, format="nerfstudio", image_size=32, num_train=12, num_val=2,
                         num_test=1, supersample=1)  # fmt: skip
    return generate_scene(config)


@pytest.mark.unit
@pytest.mark.parametrize(
    ("kind", "parser_type"), [("nerfstudio", NerfstudioDataParserConfig), ("llff", LLFFDataParserConfig)]
)
def test_a_trial_trains_and_is_timed_on_nerfstudio_and_llff_scenes(
    synthetic_scene: Path, tmp_path: Path, kind: str, parser_type: type
) -> None:
    scene = scene_in_format(kind, synthetic_scene, tmp_path / kind)
    assert scene_format(scene) == kind
    small = FieldCellConfig((1, 1, 1), (8, 8, 8))
    training = TrialTraining(steps=2, rays_per_batch=64, num_coarse_samples=8, num_importance_samples=8)
    config = trainer_config(Architecture(small, small), training, scene, tmp_path / "runs", "trial", steps=2)
    assert isinstance(config.pipeline.datamanager.dataparser, parser_type)
    evaluations: list[tuple[int, dict[str, float]]] = []
    train(config, [2], 1, lambda step, metrics: evaluations.append((step, metrics)), lambda step: None)
    [(step, metrics)] = evaluations
    assert step == 2 and 0 < metrics["ssim"] <= 1 and metrics["psnr"] > 0
    search = SearchConfig(data=scene, output_dir=tmp_path, training=training)
    search.validate()  # the search takes the folder as it is
    milliseconds, frame = frame_milliseconds({"xxs": Architecture(small, small)}, search, repeats=1)
    assert frame == imageio.imread(next((scene / "images").iterdir())).shape[:2] and milliseconds["xxs"] > 0


@pytest.mark.unit
def test_cli_refuses_a_folder_that_is_no_scene(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(sys, "argv", ["ns-nas-search", "--data", str(tmp_path), "--output-dir", str(tmp_path)])
    with pytest.raises(SystemExit) as exit_info:
        entrypoint()
    output = capsys.readouterr().out
    assert exit_info.value.code == 2 and "is not a Blender (transforms_train.json), nerfstudio" in output
    assert "Traceback" not in output
