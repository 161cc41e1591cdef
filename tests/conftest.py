"""Shared fixtures: a generated scene, small teachers (nas-nerf, nerfacto) trained on it through `ns-train`, and a
student distilled from the nas-nerf one. Session-scoped: the NAS-NeRF, distillation and export tests reuse them."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

# The tests assume no AlexNet weights (LPIPS off), whatever this machine's torch cache holds: their own TORCH_HOME,
# set before anything asks torch where its hub is. A test that wants LPIPS on makes its own.
os.environ["TORCH_HOME"] = tempfile.mkdtemp(prefix="nerfstudio-mobile-torch-home-")
atexit.register(shutil.rmtree, os.environ["TORCH_HOME"], ignore_errors=True)

# Under xdist (`-n 2`) each worker, and every command it starts, keeps to one thread: two workers with two threads
# each would fight over two cores.
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest  # noqa: E402
from filelock import FileLock  # noqa: E402
from support import (  # noqa: E402
    STUDENT_ARGS,
    STUDENT_FINETUNE_STEPS,
    STUDENT_ITERATIONS,
    TEACHER_ARGS,
    TEACHER_ITERATIONS,
    ns_command,
    run_ns,
    stock_run,
)

from nerfstudio_mobile.data.scenes import SceneConfig, generate_scene  # noqa: E402


def made_once(name: str, tmp_path_factory: pytest.TempPathFactory, make: Callable[[Path], Path]) -> Path:
    """The path `make(workdir)` returns, made once per test session: under xdist the first worker to ask makes it
    under a file lock in the workers' common temporary folder, and the others wait for it and reuse it (a run
    trained twice, one beside the other, would cost a core for minutes)."""
    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent
    workdir, made = root / name, root / f"{name}.path"
    with FileLock(root / f"{name}.lock"):
        if not made.exists():
            shutil.rmtree(workdir, ignore_errors=True)  # what a failed attempt of another worker left
            workdir.mkdir()
            made.write_text(str(make(workdir)))
    return Path(made.read_text())


@pytest.fixture(scope="session")
def synthetic_scene(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return made_once(
        "scene", tmp_path_factory,
        lambda workdir: generate_scene(SceneConfig(output_dir=workdir / "scene", image_size=48, num_train=40,
                                                   num_val=4, num_test=4)),
    )  # fmt: skip


@pytest.fixture(scope="session")
def nas_nerf_run(synthetic_scene: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """config.yml of a nas-nerf run trained by the real `ns-train` (entry point, CPU default, checkpoints)."""

    def train(workdir: Path) -> Path:
        run_ns(
            [ns_command("ns-train"), "nas-nerf", "--data", str(synthetic_scene), "--output-dir", "outputs",
             "--experiment-name", "scene", "--timestamp", "run", "--vis", "tensorboard",
             "--max-num-iterations", str(TEACHER_ITERATIONS), "--steps-per-save", str(TEACHER_ITERATIONS),
             "--steps-per-eval-batch", "100000", "--steps-per-eval-image", "100000",
             "--steps-per-eval-all-images", "100000", *TEACHER_ARGS],
            cwd=workdir,
        )  # fmt: skip
        return workdir / "outputs" / "scene" / "nas-nerf" / "run" / "config.yml"

    return made_once("nas_nerf_run", tmp_path_factory, train)


@pytest.fixture(scope="session")
def mobile_r2l_run(nas_nerf_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """config.yml of a tiny MobileR2L student distilled from `nas_nerf_run` by the real `ns-train`."""

    def train(workdir: Path) -> Path:
        run_ns(
            [ns_command("ns-train"), "mobile-r2l", "--pipeline.datamanager.teacher-config", str(nas_nerf_run),
             "--output-dir", "outputs", "--experiment-name", "scene", "--timestamp", "run", "--vis", "tensorboard",
             "--max-num-iterations", str(STUDENT_ITERATIONS), "--optimizers.network.scheduler.max-steps",
             str(STUDENT_ITERATIONS), "--pipeline.datamanager.finetune-steps", str(STUDENT_FINETUNE_STEPS),
             "--steps-per-save", str(STUDENT_ITERATIONS), "--steps-per-eval-image", "100000",
             "--steps-per-eval-all-images", "100000", *STUDENT_ARGS],
            cwd=workdir,
        )  # fmt: skip
        return workdir / "outputs" / "scene" / "mobile-r2l" / "run" / "config.yml"

    return made_once("mobile_r2l_run", tmp_path_factory, train)


@pytest.fixture(scope="session")
def phone_capture(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """What ns-process-data writes for a phone capture: transforms.json with OpenCV distortion (k1 k2 p1 p2),
    distorted images, and a scene that reaches far beyond its cameras (sky, far ground)."""
    return made_once(
        "capture", tmp_path_factory,
        lambda workdir: generate_scene(SceneConfig(output_dir=workdir / "capture", image_size=48, num_train=40,
                                                   num_val=4, num_test=4, format="nerfstudio",
                                                   distortion=(0.08, -0.03, 0.002, -0.001), unbounded=True)),
    )  # fmt: skip


@pytest.fixture(scope="session")
def nerfacto_run(phone_capture: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """config.yml of a tiny stock nerfacto run on the phone capture, trained the way nerfstudio's docs show:
    `ns-train nerfacto ... nerfstudio-data --data <capture>` (the path lands in the dataparser, not the datamanager)."""
    return made_once("nerfacto_run", tmp_path_factory,
                     lambda workdir: stock_run("nerfacto", "nerfstudio-data", phone_capture, workdir))  # fmt: skip


TRAINING_FIXTURES = {"nas_nerf_run", "mobile_r2l_run", "nerfacto_run"}

# Under xdist (`--dist loadfile --no-loadscope-reorder`) a worker that runs out of work takes the next file in
# collection order. The files whose first tests train the shared runs start, one per worker, and the longest files
# that need no run follow, so that neither worker waits for long on the other's training; the rest keep their order.
FIRST_FILES = ("test_export.py", "test_near_plane.py", "test_faults.py", "test_search.py")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """`slow`: a test that needs a trained run (or says it is slow); `unit`: every other test (`pytest -m unit`,
    the developer's loop, about two minutes on two workers)."""
    first = {name: rank for rank, name in enumerate(FIRST_FILES)}
    items.sort(key=lambda item: first.get(item.path.name, len(first)))
    for item in items:
        if TRAINING_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)
        if item.get_closest_marker("slow") is None and item.get_closest_marker("unit") is None:
            item.add_marker(pytest.mark.unit)
