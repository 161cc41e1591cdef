"""Fault injection: every long job is SIGKILLed by the real command at three points, at least one of them in the
middle of a checkpoint, cache or package write, then run again; it must finish with what an uninterrupted run gives.
Run directories are moved or copied between the runs, so every command also works on a moved run.

Kills come from tests/fault_sitecustomize.py (on the child's PYTHONPATH; no hook in the product): just before the
rename that would publish a file (its temporary file is complete), half-way through writing one, just after a rename,
or from here, when a file appears. The uninterrupted references cost no extra process where a kill gives one away:
a checkpoint killed before its rename lies complete in its `.partial` file, written by a run that was never
interrupted up to that step."""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import imageio.v2 as imageio
import pytest
import torch
from support import (
    TEACHER_ARGS,
    entrypoint_in_process,
    fault_env,
    ns_command,
    run_ns,
    run_until_killed,
    write_fault_injector,
)

from nas_nerf.search.cli import entrypoint as nas_search
from nerfstudio_mobile.common.checkpoints import checkpoint_steps, latest_checkpoint
from nerfstudio_mobile.common.runs import read_run_config
from nerfstudio_mobile.demo.demo import Demo
from nerfstudio_mobile.export.cli import OnnxExport
from nerfstudio_mobile.mobile_r2l.datamanager import (
    PseudoViewDataManager,
    PseudoViewDataManagerConfig,
    build_pseudo_view_cache,
    is_real_step,
)

pytestmark = pytest.mark.slow

STEPS, SAVE_EVERY, FINETUNE_STEPS, REAL_SHARE = 30, 10, 15, 0.25
PSEUDO_VIEWS = 6
TEACHER_RUN = Path("outputs/scene/nas-nerf/run")
STUDENT_RUN = Path("outputs/scene/mobile-r2l/run")
STUDENT_ARGS = [
    "--pipeline.datamanager.teacher-config", str(TEACHER_RUN / "config.yml"),  # relative: the runs move together
    "--pipeline.datamanager.num-pseudo-views", str(PSEUDO_VIEWS), "--pipeline.datamanager.images-per-batch", "4",
    "--pipeline.datamanager.finetune-steps", str(FINETUNE_STEPS), "--pipeline.datamanager.real-image-share",
    str(REAL_SHARE), "--optimizers.network.scheduler.max-steps",
    str(STEPS), "--pipeline.model.network.num-blocks", "1", "--pipeline.model.network.width", "16",
]  # fmt: skip
Kill = str | Callable[[], object] | None
"""Where a run is killed: an NSM_KILL_AT point, a condition polled from here, or None (it must finish)."""


def ckpt(step: int) -> str:
    return f"step-{step:09d}.ckpt"


def cache_dir(workdir: Path) -> Path:
    """The teacher's one pseudo-view cache (in its run directory, where ns-train mobile-r2l looks by default)."""
    (cache,) = (workdir / TEACHER_RUN / "pseudo_views").iterdir()
    return cache


@pytest.fixture(scope="module")
def injector(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_fault_injector(tmp_path_factory.mktemp("injector"))


def run(command: list[str], cwd: Path, injector: Path, kill: Kill = None, record: Path | None = None) -> str:
    """Run `command` in `cwd`; with `kill` it must die of SIGKILL there. Returns what it printed."""
    if kill is None:
        return run_ns(command, cwd, extra_env=fault_env(injector, record_batches=record)).stdout
    if callable(kill):
        return run_until_killed(command, cwd, fault_env(injector, record_batches=record), until=kill)
    return run_until_killed(command, cwd, fault_env(injector, kill, record))


def train(workdir: Path, method: str, args: list[str], injector: Path, kill: Kill, record: Path | None = None) -> str:
    """`ns-train`, resumed as a user (and ns-mobile-demo) resumes it: --load-dir, and --max-num-iterations the steps
    left, since nerfstudio trains that many steps after the one it loads. Paths relative to `workdir`."""
    run_dir = TEACHER_RUN if method == "nas-nerf" else STUDENT_RUN
    latest = latest_checkpoint(workdir / run_dir / "nerfstudio_models")
    resume = [] if latest is None else ["--load-dir", str(run_dir / "nerfstudio_models")]
    command = [
        ns_command("ns-train"), method, "--output-dir", "outputs", "--experiment-name", "scene", "--timestamp", "run",
        "--vis", "tensorboard", "--max-num-iterations", str(STEPS - (latest[0] + 1 if latest else 0)),
        "--steps-per-save", str(SAVE_EVERY), "--steps-per-eval-batch", "100000", "--steps-per-eval-image", "100000",
        "--steps-per-eval-all-images", "100000", *args, *resume,
    ]  # fmt: skip
    return run(command, workdir, injector, kill, record)


def partial_checkpoint(run_dir: Path, step: int) -> Path:
    """The complete temporary file of a checkpoint whose writer was killed before renaming it."""
    (path,) = run_dir.glob(f".{ckpt(step)}.*.partial")
    return path


def assert_same_weights(checkpoint: Path, reference: Path) -> None:
    ours, theirs = (torch.load(path, map_location="cpu")["pipeline"] for path in (checkpoint, reference))
    assert ours.keys() == theirs.keys()
    assert [name for name in ours if not torch.equal(ours[name], theirs[name])] == []


def files(directory: Path) -> dict[str, bytes]:
    """Contents of the files under `directory` by relative path; hidden names (temporary files) left out."""
    return {
        str(path.relative_to(directory)): path.read_bytes()
        for path in sorted(directory.rglob("*"))
        if path.is_file() and not any(part.startswith(".") for part in path.relative_to(directory).parts)
    }


def trained_history(record: Path) -> dict[int, str]:
    """Step -> "real" or "pseudo" of the batches behind the final weights: the records of every run in order, later
    runs overwriting the steps they trained again after resuming from an earlier checkpoint."""
    history: dict[int, str] = {}
    for line in record.read_text().splitlines():
        step, kind = line.split()
        history = {s: k for s, k in history.items() if s < int(step)} | {int(step): kind}
    return history


def train_with_faults(workdir: Path, method: str, args: list[str], injector: Path, record: Path | None) -> Path:
    """Three kills of one training, then a run to the end in the moved run directory; returns that directory.

    1. in the middle of writing the first checkpoint (nothing to resume from: the next run starts over)
    2. in the middle of writing the second, with the first complete beside it (the resume of issue 13's traceback)
    3. just after the second is renamed into place, having resumed from the first
    The run killed at 2 trained from step 0 without interruption: its `.partial` is the reference the resumed run
    at 3 must equal, weights and all (the random state is checkpointed). The last run resumes after a move."""
    run_dir = workdir / (TEACHER_RUN if method == "nas-nerf" else STUDENT_RUN)
    train(workdir, method, args, injector, f"replace:{ckpt(SAVE_EVERY)}", record)
    assert checkpoint_steps(run_dir / "nerfstudio_models") == [] and partial_checkpoint(run_dir, SAVE_EVERY)
    train(workdir, method, args, injector, f"replace:{ckpt(2 * SAVE_EVERY)}", record)
    assert checkpoint_steps(run_dir / "nerfstudio_models") == [SAVE_EVERY]
    uninterrupted = partial_checkpoint(run_dir, 2 * SAVE_EVERY)
    printed = train(workdir, method, args, injector, f"after-replace:{ckpt(2 * SAVE_EVERY)}", record)
    assert ckpt(SAVE_EVERY) in " ".join(printed.split())  # resumed from the first
    # killed between the rename and the removal of the older one
    assert checkpoint_steps(run_dir / "nerfstudio_models") == [SAVE_EVERY, 2 * SAVE_EVERY]
    assert_same_weights(run_dir / "nerfstudio_models" / ckpt(2 * SAVE_EVERY), uninterrupted)
    moved = workdir.with_name(f"{workdir.name}-moved")
    workdir.rename(moved)
    train(moved, method, args, injector, None, record)
    return moved


@pytest.fixture(scope="module")
def teacher(synthetic_scene: Path, injector: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The workdir of a nas-nerf teacher trained through three kills (moved before its last run)."""
    workdir = tmp_path_factory.mktemp("teacher") / "work"
    workdir.mkdir()
    return train_with_faults(workdir, "nas-nerf", ["--data", str(synthetic_scene), *TEACHER_ARGS], injector, None)


def test_teacher_training_survives_kills_mid_checkpoint(teacher: Path) -> None:
    run_dir = teacher / TEACHER_RUN
    assert [p.name for p in (run_dir / "nerfstudio_models").iterdir()] == [ckpt(STEPS - 1)]
    assert torch.load(run_dir / "nerfstudio_models" / ckpt(STEPS - 1), map_location="cpu")["step"] == STEPS - 1


def pseudo_views_command() -> list[str]:
    return [ns_command("ns-mobile-pseudo-views"), "--datamanager.teacher-config", str(TEACHER_RUN / "config.yml"),
            "--datamanager.num-pseudo-views", str(PSEUDO_VIEWS)]  # fmt: skip


@pytest.fixture(scope="module")
def pseudo_views(teacher: Path, injector: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The teacher's pseudo-view cache, generated through three kills; returns the reference cache rendered here,
    uninterrupted, into another folder."""
    # 1. while creating meta.json (the views folder exists, meta.json does not)
    run(pseudo_views_command(), teacher, injector, "replace:meta.json")
    cache = cache_dir(teacher)
    assert not (cache / "meta.json").exists()
    # 2. half-way through writing a view's bytes
    run(pseudo_views_command(), teacher, injector, "write:00000001.npz")
    assert [p.name for p in (cache / "views").iterdir() if not p.name.startswith(".")] == ["00000000.npz"]
    # 3. from here, once four views are in place: mid-render of the fifth
    run(pseudo_views_command(), teacher, injector, lambda: len(list((cache / "views").glob("*.npz"))) >= 4)
    assert 4 <= len(list((cache / "views").glob("*.npz"))) < PSEUDO_VIEWS
    run(pseudo_views_command(), teacher, injector)
    reference = tmp_path_factory.mktemp("reference-cache")
    config = PseudoViewDataManagerConfig(
        teacher_config=teacher / TEACHER_RUN / "config.yml", num_pseudo_views=PSEUDO_VIEWS, pseudo_view_dir=reference
    )
    build_pseudo_view_cache(config, PseudoViewDataManager(config, test_mode="inference"), shard=0, num_shards=1)
    return reference


def test_pseudo_views_survive_kills_and_equal_an_uninterrupted_cache(teacher: Path, pseudo_views: Path) -> None:
    """Byte-identical: meta.json (the teacher by its checkpoint's sha256, not its path) and every view file."""
    generated = files(cache_dir(teacher))
    assert len(generated) == PSEUDO_VIEWS + 1 and generated == files(pseudo_views)


@pytest.fixture(scope="module")
def student(teacher: Path, pseudo_views: Path, injector: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A student distilled through three kills in a copy of the teacher's workdir (its cache copied with it); the
    steps each batch of its final weights trained on real images, and the first run's output."""
    workdir = tmp_path_factory.mktemp("student") / "work"
    shutil.copytree(teacher, workdir)
    record = workdir.parent / "batches.txt"
    mtimes = {p.name: p.stat().st_mtime_ns for p in (cache_dir(workdir) / "views").iterdir()}
    moved = train_with_faults(workdir, "mobile-r2l", STUDENT_ARGS, injector, record)
    return {"workdir": moved, "history": trained_history(record), "cache_mtimes": mtimes}


def test_student_training_survives_kills_and_fine_tunes_the_last_steps(student: dict) -> None:
    """Same final step, the same real-image steps as an uninterrupted run (every 1/REAL_SHARE-th step, then the last
    FINETUNE_STEPS, counted from the batches the datamanager served), and the copied cache reused as it was, not
    rendered again."""
    models = student["workdir"] / STUDENT_RUN / "nerfstudio_models"
    assert checkpoint_steps(models) == [STEPS - 1]
    history = student["history"]
    assert sorted(history) == list(range(STEPS))
    mixed_in = [step for step in range(STEPS - FINETUNE_STEPS) if is_real_step(step, REAL_SHARE)]
    assert mixed_in == [3, 7, 11]
    real = [step for step, kind in history.items() if kind == "real"]
    assert real == mixed_in + list(range(STEPS - FINETUNE_STEPS, STEPS))
    views = cache_dir(student["workdir"]) / "views"
    assert {p.name: p.stat().st_mtime_ns for p in views.iterdir()} == student["cache_mtimes"]


def test_ns_eval_on_a_moved_student_and_teacher(student: dict, tmp_path: Path) -> None:
    output = tmp_path / "eval.json"
    run_ns([ns_command("ns-eval"), "--load-config", str(STUDENT_RUN / "config.yml"), "--output-path", str(output)],
           cwd=student["workdir"])  # fmt: skip
    assert json.loads(output.read_text())["results"]["psnr"] > 5


def test_export_survives_kills_and_equals_an_uninterrupted_export(
    student: dict, injector: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ONNX files and sidecars byte-identical to an export the test process makes uninterrupted (the sidecar names
    the student by the same relative config path), from the moved student."""
    workdir = student["workdir"]
    config = STUDENT_RUN / "config.yml"
    command = [ns_command("ns-export-mobile"), "onnx", "--load-config", str(config), "--output-dir", "packages"]
    # 1. from here, once the first .onnx lies in the staging folder
    run(command, workdir, injector, lambda: any(workdir.glob(".packages.*.partial/*.onnx")))
    # 2. half-way through writing a sidecar
    run(command, workdir, injector, "write:scene-pose.json")  # <experiment>-<input mode>
    # 3. with every file written, just before the staging folder is renamed into place
    run(command, workdir, injector, "replace:packages")
    assert not (workdir / "packages").exists()
    run(command, workdir, injector)
    monkeypatch.chdir(workdir)
    OnnxExport(config, Path("reference")).run()
    exported = files(workdir / "packages")
    assert sorted(exported) == ["scene-pose.json", "scene-pose.onnx", "scene-rays.json", "scene-rays.onnx"]
    assert exported == files(workdir / "reference")


GRACE_SECONDS = 2
"""A search trial without a heartbeat for this long counts as killed, and runs again."""
SEARCH_ARGS = [
    "--coarse.depth1", "1", "2", "--coarse.depth3", "1", "1", "--coarse.widths", "8", "32",
    "--fine.depth1", "1", "2", "--fine.depth3", "1", "2", "--fine.widths", "8", "64", "--max-gflops", "42",
    "--training.steps", "30", "--training.rays-per-batch", "256", "--training.num-coarse-samples", "16",
    "--training.num-importance-samples", "16", "--training.lr", "2e-2", "--training.eval-images", "1",
    "--training.max-step-factor", "1.25", "--heartbeat-interval", "1", "--grace-period", str(GRACE_SECONDS),
    "--threads", "1", "--trials-per-tier", "1", "--seed", "0", "--timing-repeats", "0",
]  # fmt: skip
TIER_RUN = ("s-", "xs-", "xxs-")


def search_outcome(output_dir: Path) -> tuple[list[dict], dict[str, dict]]:
    """What a search found, without what depends on trial numbers (a killed trial runs again under a new one):
    every evaluated architecture with its scores, and each tier's architecture file."""
    summary = json.loads((output_dir / "summary.json").read_text())
    records = sorted(
        ({k: v for k, v in record.items() if k not in ("number", "run", "trial")} for record in summary["records"]),
        key=json.dumps,
    )
    tiers = {
        path.name: {k: v for k, v in json.loads(path.read_text()).items() if k not in ("trial", "run")}
        for path in (output_dir / "architectures").iterdir()
    }
    return records, tiers


def test_search_survives_kills_and_finds_what_an_uninterrupted_search_finds(
    synthetic_scene: Path, injector: Path, tmp_path: Path
) -> None:
    """Trials are seeded, the sampler too: the resumed search evaluates the same architectures with the same scores
    and writes the same tier files as one run in the test process without a kill."""
    output_dir = tmp_path / "search"
    args = ["--data", str(synthetic_scene), "--output-dir", str(output_dir), *SEARCH_ARGS]
    command = [ns_command("ns-nas-search"), *args]
    # 1. in the middle of writing the first trial's checkpoint (a boundary architecture, for the targets)
    # 2. from here, while a tier trial trains
    # 3. in the middle of writing the report
    tier_training = lambda: any(p.name.startswith(TIER_RUN) for p in (output_dir / "runs").glob("*"))  # noqa: E731
    for kill in ("replace:step-", tier_training, "replace:summary.json"):
        run(command, tmp_path, injector, kill)
        time.sleep(GRACE_SECONDS + 1)  # as a later restart finds it: the killed trial's heartbeat is stale
    assert not (output_dir / "summary.json").exists()
    run(command, tmp_path, injector)
    reference = tmp_path / "reference"
    entrypoint_in_process(nas_search, ["ns-nas-search", "--data", str(synthetic_scene), "--output-dir", str(reference),
                                       *SEARCH_ARGS])  # fmt: skip
    assert search_outcome(output_dir) == search_outcome(reference)


DEMO_STEPS = 120
"""Teacher and student steps: the demo saves every max(100, steps // 4), so at 100 and at the end (119)."""
DEMO_ARGS = [
    "--scene.image-size", "32", "--scene.num-train", "16", "--scene.num-test", "2", "--pseudo-views", "6",
    "--teacher-steps", str(DEMO_STEPS), "--student-steps", str(DEMO_STEPS),
    "--student.width", "16", "--student.num-blocks", "1",
]  # fmt: skip


def test_demo_survives_kills_in_every_stage_and_tells_the_whole_story(injector: Path, tmp_path: Path) -> None:
    """The README's main command, ns-mobile-demo, killed in the middle of the teacher's last checkpoint, of a pseudo
    view, of the student's last checkpoint: each training resumes to the weights its uninterrupted run had (the
    `.partial` the kill left), the student trains on real images at the steps an uninterrupted run does (its share of
    the steps, then the last fifth), the cache is byte-identical to one the finished teacher renders here
    uninterrupted, and the run that finishes tells the whole story: the estimate first, the summary, the pictures,
    the verified phone packages, the noise in the log."""
    output = tmp_path / "demo"
    command = [ns_command("ns-mobile-demo"), "--output-dir", str(output), *DEMO_ARGS]
    record = tmp_path / "batches.txt"
    runs = {name: output / "runs" / name / method / "run" for name, method in
            (("teacher", "nas-nerf"), ("student", "mobile-r2l"))}  # fmt: skip
    last = DEMO_STEPS - 1
    run(command, tmp_path, injector, f"replace:{ckpt(last)}", record)  # the teacher's
    uninterrupted_teacher = partial_checkpoint(runs["teacher"], last)
    run(command, tmp_path, injector, "write:00000002.npz", record)
    assert_same_weights(runs["teacher"] / "nerfstudio_models" / ckpt(last), uninterrupted_teacher)
    run(command, tmp_path, injector, f"replace:{ckpt(last)}", record)  # the student's: the teacher is done
    assert checkpoint_steps(runs["student"] / "nerfstudio_models") == [100]
    uninterrupted_student = partial_checkpoint(runs["student"], last)
    # Python's own warning filters, as a user runs it (run_ns hides warnings): they must reach the log, not the console
    final = run_ns(command, tmp_path, extra_env={**fault_env(injector, record_batches=record), "PYTHONWARNINGS": ""})
    printed = " ".join(final.stdout.split())  # rich wraps lines at the terminal width
    # the stage bars, in order: the teacher finished by an earlier run, the student resumed from its checkpoint
    assert "done earlier" in printed.split("teacher training", 1)[1].split("pseudo views", 1)[0]
    assert "resumed after 101 steps" in printed.split("student training", 1)[1].split("evaluation", 1)[0]
    assert_same_weights(runs["student"] / "nerfstudio_models" / ckpt(last), uninterrupted_student)
    history = trained_history(record)
    assert sorted(history) == list(range(DEMO_STEPS))
    finetune_from = round(DEMO_STEPS * (1 - Demo.student_finetune_fraction))
    mixed_in = [step for step in range(finetune_from) if is_real_step(step, Demo.student_real_share)]
    assert mixed_in  # the demo's default share
    real = [step for step, kind in history.items() if kind == "real"]
    assert real == mixed_in + list(range(finetune_from, DEMO_STEPS))
    assert_whole_story(output, final.stdout, final.stderr)
    config = read_run_config(runs["student"] / "config.yml").pipeline.datamanager
    config.pseudo_view_dir = tmp_path / "reference-cache"
    build_pseudo_view_cache(config, PseudoViewDataManager(config, test_mode="inference"), shard=0, num_shards=1)
    (cache,) = (runs["teacher"] / "pseudo_views").iterdir()
    assert files(cache) == files(config.pseudo_view_dir)


def assert_whole_story(output: Path, stdout: str, stderr: str) -> None:
    """What a finished demo leaves a user: its summary, the estimate printed before the stage bars, the phone
    packages, comparison.png and turntable.gif at the generated scene's size (32 px), nerfstudio's noise in the
    log only."""
    summary = json.loads((output / "summary.json").read_text())
    for model in ("teacher", "student"):
        assert summary[model]["psnr"] > 5 and 0 < summary[model]["ssim"] <= 1
        assert summary[model]["ms_per_frame"] > 0
    assert summary["speedup"] == summary["teacher"]["ms_per_frame"] / summary["student"]["ms_per_frame"]
    packages = {Path(e["file"]).name: e for e in summary["exports"]}
    assert set(packages) == {"student-pose-fp16.mlpackage", "student-pose-palettize4.mlpackage", "student-pose.onnx"}
    assert all(e["verified"] and Path(e["file"]).exists() for e in packages.values())
    assert set(summary["estimated_hours"]["this_run"]) == {"teacher", "pseudo_views", "student", "eval"}
    assert set(summary["estimated_hours"]["paper"]) == {"teacher", "pseudo_views", "student"}
    stages = summary["stage_minutes"]  # this invocation's: stages an earlier one finished took 0
    assert set(stages) == {"teacher training", "pseudo views", "student training", "evaluation", "export"}
    assert all(minutes >= 0 for minutes in stages.values()) and sum(stages.values()) <= summary["total_minutes"]
    printed = " ".join(stdout.split())
    assert printed.index("This run on this machine") < printed.index("teacher training")  # said first
    assert "paper-scale run" in printed and "Phone packages" in printed and str(output / "demo.log") in printed
    log = (output / "demo.log").read_text()
    assert "TrainerConfig(" in log and "TrainerConfig(" not in stdout
    assert "Warning: " in log and "Warning: " not in stdout + stderr
    # ground truth | teacher | student and the two depths for each of the 2 test views, enlarged 8× to 256 px
    assert imageio.imread(output / "comparison.png").shape == (2 * 2 * 32 * 8, 3 * 32 * 8, 3)
    assert len(imageio.mimread(output / "turntable.gif")) == 36
