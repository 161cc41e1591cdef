"""Helpers the tests share (imported as `support`; no test imports another test file or conftest)."""

from __future__ import annotations

import contextlib
import io
import multiprocessing
import os
import resource
import runpy
import signal
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Mapping
from importlib.metadata import entry_points
from pathlib import Path

import imageio.v2 as imageio
import numpy as np
import pytest
import torch
from nerfstudio.cameras.cameras import Cameras
from nerfstudio.pipelines.base_pipeline import Pipeline

from nerfstudio_mobile.data.scenes import SceneConfig, camera_poses, generate_scene

# A teacher small enough to train in about a minute on 2 CPU cores, big enough to learn the scene.
TEACHER_ITERATIONS = 800
TEACHER_ARGS = [
    "--pipeline.model.coarse-cell.depths",
    "1",
    "1",
    "1",
    "--pipeline.model.coarse-cell.channels",
    "32",
    "32",
    "32",
    "--pipeline.model.fine-cell.depths",
    "2",
    "1",
    "1",
    "--pipeline.model.fine-cell.channels",
    "64",
    "64",
    "64",
    "--pipeline.model.num-coarse-samples",
    "32",
    "--pipeline.model.num-importance-samples",
    "32",
    "--pipeline.datamanager.train-num-rays-per-batch",
    "512",
    "--optimizers.fields.optimizer.lr",
    "5e-3",
]


def ns_command(name: str) -> str:
    """An ns-* console script of this environment (tests may run without the venv on PATH)."""
    return str(Path(sys.executable).parent / name)


WORLD_UP = torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64)


def look_at(position: torch.Tensor, target: torch.Tensor, up: torch.Tensor = WORLD_UP) -> torch.Tensor:
    """c2w [3, 4] (float64, nerfstudio / OpenGL: right, up, back) of a camera at `position` looking at `target`."""
    back = torch.nn.functional.normalize(position - target, dim=0)
    right = torch.nn.functional.normalize(torch.linalg.cross(up, back), dim=0)
    return torch.stack([right, torch.linalg.cross(back, right), back, position], dim=1)


def viewer_camera(pipeline: Pipeline, height: int, width: int) -> Cameras:
    """Training camera 0 resized to height × width, aspect ratio included, as the viewer asks for."""
    camera = pipeline.datamanager.train_dataparser_outputs.cameras[0:1]
    sx, sy = width / camera.width.item(), height / camera.height.item()
    return Cameras(
        camera_to_worlds=camera.camera_to_worlds,
        fx=camera.fx * sx,
        fy=camera.fy * sy,
        cx=camera.cx * sx,
        cy=camera.cy * sy,
        width=width,
        height=height,
    ).to(pipeline.device)


# A nerfacto small enough to train in about a minute on 2 CPU cores (its hash grid runs in torch here).
NERFACTO_ITERATIONS = 80
NERFACTO_ARGS = [
    "--pipeline.datamanager.train-num-rays-per-batch", "256",
    "--pipeline.model.eval-num-rays-per-chunk", "4096",
    "--pipeline.model.num-levels", "8",
    "--pipeline.model.log2-hashmap-size", "15",
    "--pipeline.model.hidden-dim", "32",
    "--pipeline.model.num-nerf-samples-per-ray", "24",
    "--pipeline.model.num-proposal-samples-per-ray", "32", "16",
]  # fmt: skip


def stock_run(method: str, dataparser: str, scene: Path, workdir: Path, iterations: int = NERFACTO_ITERATIONS) -> Path:
    """config.yml of a stock nerfstudio method trained on `scene` by the real `ns-train`, CPU flags as a user
    passes them here, data given to the dataparser subcommand as nerfstudio's docs show."""
    workdir.mkdir(parents=True, exist_ok=True)
    run_ns(
        [ns_command("ns-train"), method, "--machine.device-type", "cpu", "--output-dir", "outputs",
         "--experiment-name", "scene", "--timestamp", "run", "--vis", "tensorboard",
         "--max-num-iterations", str(iterations), "--steps-per-save", str(iterations),
         "--steps-per-eval-batch", "100000", "--steps-per-eval-image", "100000",
         "--steps-per-eval-all-images", "100000", *NERFACTO_ARGS, dataparser, "--data", str(scene)],
        cwd=workdir,
    )  # fmt: skip
    return workdir / "outputs" / "scene" / method / "run" / "config.yml"


def run_ns(
    args: list[str], cwd: Path, timeout: int = 1800, extra_env: Mapping[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONWARNINGS": "ignore", **(extra_env or {})}
    result = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, f"{args[0]} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


# A student small enough to distil in about a minute: 2 residual blocks of width 32, upscaling 8× as the paper's
# (the export tests' block sizes and weight shares are a paper student's; 48² frames would otherwise get 24² rays).
STUDENT_PSEUDO_VIEWS = 40
STUDENT_ARGS = [
    "--pipeline.datamanager.num-pseudo-views", str(STUDENT_PSEUDO_VIEWS),
    "--pipeline.datamanager.min-rays-per-side", "0",
    "--pipeline.datamanager.images-per-batch", "8",
    "--pipeline.model.network.num-blocks", "2",
    "--pipeline.model.network.width", "32",
    "--optimizers.network.optimizer.lr", "2e-3",
]  # fmt: skip
STUDENT_ITERATIONS = 400
STUDENT_FINETUNE_STEPS = 50


FULL_SIZE = 96  # the poses' focal refers to this resolution; images_2 holds half of it


def write_llff(tmp_path: Path) -> tuple[Path, np.ndarray]:
    config = SceneConfig(output_dir=tmp_path / "blender", layout="forward-facing", image_size=48, num_train=12,
                         num_val=1, num_test=1)  # fmt: skip
    blender = generate_scene(config)
    c2w = camera_poses(config)["train"][:, :3, :4]  # OpenGL [right, up, back]
    llff = tmp_path / "llff"
    (llff / "images_2").mkdir(parents=True)
    for i in range(len(c2w)):
        imageio.imwrite(llff / "images_2" / f"{i:03d}.png", imageio.imread(blender / "train" / f"r_{i}.png")[..., :3])
    focal = 0.5 * FULL_SIZE / np.tan(0.5 * config.camera_angle_x)
    llff_rotation = np.stack([-c2w[:, :, 1], c2w[:, :, 0], c2w[:, :, 2]], axis=2)  # [down, right, back]
    hwf = np.broadcast_to(np.array([FULL_SIZE, FULL_SIZE, focal])[None, :, None], (len(c2w), 3, 1))
    poses = np.concatenate([llff_rotation, c2w[:, :, 3:], hwf], axis=2).reshape(len(c2w), 15)
    depth = np.linalg.norm(c2w[:, :, 3], axis=1)
    np.save(llff / "poses_bounds.npy", np.concatenate([poses, np.stack([depth - 1.5, depth + 1.5], 1)], 1))
    return llff, c2w


# Fault injection without test hooks in the product: fault_sitecustomize.py, copied as sitecustomize.py into a folder
# on a child's PYTHONPATH, SIGKILLs the child at the file operation NSM_KILL_AT names (see that file).
FAULT_SITECUSTOMIZE = Path(__file__).with_name("fault_sitecustomize.py")


def fault_env(injector: Path, kill_at: str | None = None, record_batches: Path | None = None) -> dict[str, str]:
    """Environment for a child run with the fault injector in `injector` (see `write_fault_injector`)."""
    env = {"PYTHONPATH": os.pathsep.join(filter(None, [str(injector), os.environ.get("PYTHONPATH")]))}
    if kill_at is not None:
        env["NSM_KILL_AT"] = kill_at
    if record_batches is not None:
        env["NSM_RECORD_BATCHES"] = str(record_batches)
    return env


def write_fault_injector(directory: Path) -> Path:
    """Put the fault injector into `directory` (created) as its sitecustomize.py; returns `directory`."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "sitecustomize.py").write_text(FAULT_SITECUSTOMIZE.read_text())
    return directory


def console_script(name: str) -> Callable[[], object]:
    """The function the console script `name` (a name or a path) calls, found as the script's own wrapper finds it
    (the installed entry points: ours from pyproject's [project.scripts], nerfstudio's ns-train)."""
    (script,) = entry_points(group="console_scripts", name=Path(name).name)
    return script.load()


# The commands whose killed or disk-full runs start forked from a server that imported them once (`start_forked`).
FORKED_COMMANDS = ("ns-train", "ns-mobile-pseudo-views", "ns-export-mobile", "ns-nas-search", "ns-make-scene",
                   "ns-mobile-demo")  # fmt: skip
FORK_PRELOAD = (
    *(script.module for name in FORKED_COMMANDS for script in entry_points(group="console_scripts", name=name)),
    "nerfstudio_mobile.export.onnx",  # imported by `ns-export-mobile onnx` when it runs
)


def forked_console_script(
    argv: list[str], cwd: str, env: dict[str, str], output: str, file_size_limit: int | None
) -> None:
    """In a child of the fork server: the console script argv[0] as its own process would run it, started with
    `env` added to its environment, in `cwd`, printing to the named pipe `output`: the fault injector (a
    sitecustomize.py on PYTHONPATH in `env`) run as site runs it, warnings off as PYTHONWARNINGS=ignore has them,
    files above `file_size_limit` bytes failing with EFBIG as on a full disk, then the entry point; its return value
    is the exit status (multiprocessing ends the child as the interpreter would: SystemExit's code, or a traceback and
    1)."""
    descriptor = os.open(output, os.O_WRONLY)
    os.dup2(descriptor, 1)
    os.dup2(descriptor, 2)
    os.environ.update(env)
    warnings.simplefilter("ignore")
    os.chdir(cwd)
    sys.argv = argv
    if file_size_limit is not None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG, as a full disk gives, rather than a kill
        resource.setrlimit(resource.RLIMIT_FSIZE, (file_size_limit, file_size_limit))
    for folder in env.get("PYTHONPATH", "").split(os.pathsep):
        if folder and (Path(folder) / "sitecustomize.py").is_file():
            runpy.run_path(str(Path(folder) / "sitecustomize.py"), run_name="sitecustomize")
    sys.exit(console_script(argv[0])())


def start_forked(
    argv: list[str], cwd: Path, env: Mapping[str, str], output: Path, file_size_limit: int | None = None
) -> multiprocessing.Process:
    """Start the console script argv[0] (one of FORKED_COMMANDS) as a child of a fork server that imported the
    commands once (`FORK_PRELOAD`, in a fresh interpreter that ran nothing else) instead of a new interpreter that
    imports them again: seconds of CPU each. For runs that are killed or refused: a kill lands at the same file
    operation, a full disk fails the same write. Runs that must finish start as real processes (`run_ns`), as a
    user starts them again after a crash."""
    assert Path(argv[0]).name in FORKED_COMMANDS, argv[0]
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(list(FORK_PRELOAD))
    process = context.Process(
        target=forked_console_script, args=(argv, str(cwd), dict(env), str(output), file_size_limit)
    )
    process.start()
    return process


def run_forked(
    argv: list[str],
    cwd: Path,
    env: Mapping[str, str] | None = None,
    until: Callable[[], object] | None = None,
    timeout: float = 600,
    file_size_limit: int | None = None,
) -> tuple[int, str]:
    """Exit status (-9 when SIGKILLed) and output of the console script argv[0] started forked (`start_forked`); it
    is SIGKILLed as soon as `until()` holds (polled every 20 ms), or at `timeout` (an assertion fails then)."""
    with tempfile.TemporaryDirectory() as folder:
        # A named pipe, drained here: a file would count against the child's file size limit.
        output = Path(folder) / "output"
        os.mkfifo(output)
        reader = os.open(output, os.O_RDWR | os.O_NONBLOCK)  # read-write: the child's open never waits for us
        chunks: list[bytes] = []

        def drain() -> None:
            with contextlib.suppress(BlockingIOError):
                while chunk := os.read(reader, 1 << 16):
                    chunks.append(chunk)

        process = start_forked(argv, cwd, env or {}, output, file_size_limit)
        deadline = time.monotonic() + timeout
        while process.is_alive():
            if (until is not None and until()) or time.monotonic() > deadline:
                process.kill()
                process.join()
            drain()
            time.sleep(0.02)
        process.join()
        drain()
        os.close(reader)
        code = process.exitcode
        process.close()
        printed = b"".join(chunks).decode(errors="replace")
    assert time.monotonic() <= deadline, f"{argv[0]} was neither killed nor done in {timeout} s:\n" + printed[-3000:]
    assert code is not None
    return code, printed


def run_until_killed(
    args: list[str],
    cwd: Path,
    extra_env: Mapping[str, str],
    until: Callable[[], object] | None = None,
    timeout: float = 600,
) -> str:
    """Run a command that must die of SIGKILL, started forked (`run_forked`): by its own hand (NSM_KILL_AT in
    `extra_env`), or by ours as soon as `until()` holds. Returns what it printed."""
    code, printed = run_forked(args, cwd, extra_env, until, timeout)
    assert code == -signal.SIGKILL, f"{args[0]} was to be killed, exit code {code}:\n" + printed[-3000:]
    return printed


def entrypoint_in_process(entrypoint: Callable[[], None], argv: list[str]) -> str:
    """A console script's entry point run in the test process (no second start-up: the imports cost seconds), with
    `argv`; returns what it printed. The torch thread count is restored (e.g. after --threads 1)."""
    output, threads = io.StringIO(), torch.get_num_threads()
    with pytest.MonkeyPatch.context() as patch, contextlib.redirect_stdout(output):
        patch.setattr(sys, "argv", argv)
        entrypoint()
    torch.set_num_threads(threads)
    return output.getvalue()
