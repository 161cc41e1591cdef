"""Bad input, one table: every ns-* command of ours and both `ns-train` methods, fed missing and wrong paths, the
wrong kind of run, malformed JSON/YAML, a truncated checkpoint, a corrupt cache, shapes that don't divide, a folder
that can't be made and a full disk. Each runs the real console script in its own folder and must end with exit
status 2 and one line that says what to do, leaving nothing half-written that a later run would trust; a corrupt
pseudo view is the one fault that is repaired instead (exit 0).

Each command has a case in a process of its own. A full disk needs one (a file size limit on the test process would
limit pytest too): a child of the tests' fork server, which imported the commands once. The cases marked `process`
start the console script as a user starts it, for the commands no other test starts so (the others' real start-up
is tested where they run to the end: conftest's ns-train, test_faults, test_demo). Every other case calls the same
console script's entry point (looked up as the script looks it up) in the test process, with its arguments and
folder: a process of its own would only add seconds of imports each."""

from __future__ import annotations

import random
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import torch
from support import console_script, entrypoint_in_process, ns_command, run_forked

BROKEN_JSON = '{"frames": ['
BROKEN_YAML = "pipeline: [1\n"
TINY_NAS_NERF = (
    "--vis", "tensorboard", "--output-dir", "outputs", "--max-num-iterations", "3", "--steps-per-save", "2",
    "--steps-per-eval-batch", "1000", "--steps-per-eval-image", "1000", "--steps-per-eval-all-images", "1000",
    "--pipeline.model.coarse-cell.channels", "8", "8", "8", "--pipeline.model.fine-cell.channels", "8", "8", "8",
    "--pipeline.model.num-coarse-samples", "8", "--pipeline.model.num-importance-samples", "8",
    "--pipeline.datamanager.train-num-rays-per-batch", "64",
)  # fmt: skip
TINY_STUDENT = (
    "--vis", "tensorboard", "--output-dir", "outputs", "--max-num-iterations", "2",
    "--pipeline.datamanager.num-pseudo-views", "2", "--pipeline.datamanager.pseudo-view-dir", "cache",
)  # fmt: skip
PSEUDO_VIEWS = ("--datamanager.num-pseudo-views", "2", "--datamanager.pseudo-view-dir", "cache")
TINY_SCENE = ("--image-size", "16", "--num-train", "2", "--num-val", "1", "--num-test", "1", "--supersample", "1")
FIXTURES = {"scene": "synthetic_scene", "teacher": "nas_nerf_run", "student": "mobile_r2l_run"}
# What a failed run must never leave: a half-written file, a checkpoint, a cache that says it is made.
NEVER_LEFT = ("**/*.partial", "outputs/**/nerfstudio_models/*.ckpt", "**/pseudo_views/**/meta.json")


def copy_run(config: Path, tmp_path: Path) -> Path:
    """A copy of a trained run (without the pseudo views rendered from it) under tmp_path/copies/, laid out as
    ns-train lays it out; its config.yml."""
    run = tmp_path / "copies" / config.relative_to(config.parents[3]).parent
    shutil.copytree(config.parent, run, ignore=shutil.ignore_patterns("pseudo_views"))
    return run / "config.yml"


def truncate_checkpoint(config: Path) -> None:
    [checkpoint] = (config.parent / "nerfstudio_models").glob("step-*.ckpt")
    checkpoint.write_bytes(checkpoint.read_bytes()[:1000])


def truncated_teacher(tmp_path: Path, runs: dict[str, Path]) -> None:
    truncate_checkpoint(copy_run(runs["teacher"], tmp_path))


def truncated_student(tmp_path: Path, runs: dict[str, Path]) -> None:
    truncate_checkpoint(copy_run(runs["student"], tmp_path))


def corrupt_view(tmp_path: Path, runs: dict[str, Path]) -> None:
    """A complete two-view cache whose first view lost its end (the archive's directory)."""
    argv = [ns_command("ns-mobile-pseudo-views"), "--datamanager.teacher-config", str(runs["teacher"]), *PSEUDO_VIEWS]
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(tmp_path)
        entrypoint_in_process(console_script(argv[0]), argv)
    view = tmp_path / "cache" / "views" / "00000000.npz"
    view.write_bytes(view.read_bytes()[:-100])


@dataclass(frozen=True)
class BadInput:
    argv: tuple[str, ...]
    """The console script and its arguments; {scene}, {teacher} and {student} name the shared fixtures' paths."""
    says: str
    """What the one line must say (what to do)."""
    files: dict[str, str] = field(default_factory=dict)
    """Written in the run's folder first: malformed JSON or YAML, a file where a folder should be."""
    prepare: Callable[[Path, dict[str, Path]], None] | None = None
    """More set-up in the run's folder, given the fixtures' paths."""
    uses: tuple[str, ...] = ()
    """Fixtures `prepare` needs, by their placeholder name (teacher, student)."""
    file_size_limit: int | None = None
    """RLIMIT_FSIZE of the command, in bytes: a disk that is full for any file larger than this."""
    left_out: tuple[str, ...] = ()
    """Globs in the run's folder that must match nothing afterwards (besides NEVER_LEFT)."""
    exit_code: int = 2
    """2: refused in one line; 0: repaired (a corrupt pseudo view is set aside and rendered again)."""
    left: tuple[str, ...] = ()
    """Globs that must match something afterwards."""
    process: bool = False
    """Run the console script in a new process, as a user runs it; else in the test process (a forked child of the
    fork server with `file_size_limit`)."""

    @property
    def own_process(self) -> bool:
        return self.process or self.file_size_limit is not None

    @property
    def fixtures(self) -> tuple[str, ...]:
        """The shared fixtures this case needs: those its arguments name, and those `prepare` uses."""
        return tuple(key for key in FIXTURES if f"{{{key}}}" in " ".join(self.argv) or key in self.uses)

    @property
    def prefix(self) -> str:
        """The red prefix of the one line: the command, and ns-train's method."""
        return f"{' '.join(self.argv[:2] if self.argv[0] == 'ns-train' else self.argv[:1])}:"


def case(name: str, *argv: str, **fields: object) -> object:
    """One row: a readable id; `slow`, as every case runs a real console script (nerfstudio's imports, seconds)."""
    bad = BadInput(argv, **fields)  # type: ignore[arg-type]
    return pytest.param(bad, id=name, marks=[pytest.mark.slow])


CASES = [
    # ns-make-scene
    case("make-scene-odd-size", "ns-make-scene", "--output-dir", "scene", "--image-size", "7", says="image_size",
         left_out=("scene",), process=True),
    case("make-scene-output-under-a-file", "ns-make-scene", "--output-dir", "blocker/scene", *TINY_SCENE,
         files={"blocker": ""}, says="Pass a folder you can write to"),
    case("make-scene-disk-full", "ns-make-scene", "--output-dir", "scene", *TINY_SCENE, file_size_limit=256,
         says="Free some space", left_out=("scene",)),
    # ns-mobile-demo
    case("demo-missing-data", "ns-mobile-demo", "--data", "nowhere", says="ns-process-data", left_out=("demo",)),
    case("demo-malformed-transforms", "ns-mobile-demo", "--data", "capture", files={"capture/transforms.json":
         BROKEN_JSON}, says="is not valid JSON", left_out=("demo",)),
    case("demo-output-under-a-file", "ns-mobile-demo", "--output-dir", "blocker/demo", files={"blocker": ""},
         says="Pass a folder you can write to"),
    case("demo-finetune-everything", "ns-mobile-demo", "--student-finetune-fraction", "1",
         says="--student-finetune-fraction 1.0 must lie in [0, 1)", left_out=("demo",)),
    case("demo-negative-real-share", "ns-mobile-demo", "--student-real-share", "-0.1",
         says="--student-real-share -0.1 must lie in [0, 1)", left_out=("demo",)),
    case("demo-disk-full", "ns-mobile-demo", "--scene.image-size", "16", file_size_limit=256,
         says="Free some space", left_out=("demo/scene",)),
    # ns-nas-complexity
    case("complexity-missing-architecture", "ns-nas-complexity", "--architecture-file", "nowhere.json",
         says="expected a JSON from ns-nas-search"),
    case("complexity-malformed-architecture", "ns-nas-complexity", "--architecture-file", "arch.json",
         files={"arch.json": BROKEN_JSON}, says="is not valid JSON"),
    case("complexity-malformed-config", "ns-nas-complexity", "--load-config", "config.yml",
         files={"config.yml": BROKEN_YAML}, says="is not valid YAML"),
    case("complexity-student-run", "ns-nas-complexity", "--load-config", "{student}",
         says="pass the config.yml of a nas-nerf run", process=True),
    # ns-nas-search
    case("search-missing-data", "ns-nas-search", "--data", "nowhere", "--output-dir", "search",
         says="ns-process-data", left_out=("search",)),
    case("search-malformed-transforms", "ns-nas-search", "--data", "scene", "--output-dir", "search",
         files={"scene/transforms_train.json": BROKEN_JSON}, says="is not valid JSON", left_out=("search",)),
    case("search-output-under-a-file", "ns-nas-search", "--data", "{scene}", "--output-dir", "blocker/search",
         files={"blocker": ""}, says="Pass a folder you can write to"),
    case("search-disk-full", "ns-nas-search", "--data", "{scene}", "--output-dir", "search", file_size_limit=4096,
         says="Free some space"),
    # ns-mobile-pseudo-views
    case("pseudo-views-no-teacher", "ns-mobile-pseudo-views", says="teacher-config"),
    case("pseudo-views-missing-teacher", "ns-mobile-pseudo-views", "--datamanager.teacher-config",
         "nowhere/config.yml", says="pass the config.yml that ns-train wrote"),
    case("pseudo-views-malformed-teacher-config", "ns-mobile-pseudo-views", "--datamanager.teacher-config",
         "config.yml", files={"config.yml": BROKEN_YAML}, says="is not valid YAML"),
    case("pseudo-views-shard-out-of-range", "ns-mobile-pseudo-views", "--datamanager.teacher-config", "{teacher}",
         "--shard", "2", "--num-shards", "2", says="--shard must be in"),
    case("pseudo-views-student-as-teacher", "ns-mobile-pseudo-views", "--datamanager.teacher-config", "{student}",
         *PSEUDO_VIEWS, says="teacher", left_out=("cache",)),
    case("pseudo-views-corrupt-meta", "ns-mobile-pseudo-views", "--datamanager.teacher-config", "{teacher}",
         *PSEUDO_VIEWS, files={"cache/meta.json": BROKEN_JSON}, says="delete",
         left_out=("cache/views/*.npz",)),
    case("pseudo-views-corrupt-view-is-rendered-again", "ns-mobile-pseudo-views", "--datamanager.teacher-config",
         "{teacher}", *PSEUDO_VIEWS, prepare=corrupt_view, uses=("teacher",), exit_code=0, says="complete",
         left=("cache/views/00000000.npz", "cache/views/00000000.npz.corrupt")),
    case("pseudo-views-disk-full", "ns-mobile-pseudo-views", "--datamanager.teacher-config", "{teacher}",
         *PSEUDO_VIEWS, file_size_limit=4096, says="Free some space", left_out=("cache/views/*.npz",)),
    # ns-export-mobile
    case("export-missing-config", "ns-export-mobile", "onnx", "--load-config", "nowhere/config.yml",
         "--output-dir", "out", says="pass the config.yml that ns-train wrote", left_out=("out",)),
    case("export-malformed-config", "ns-export-mobile", "coreml", "--load-config", "config.yml", "--output-dir",
         "out", files={"config.yml": BROKEN_YAML}, says="is not valid YAML", left_out=("out",)),
    case("export-teacher-run", "ns-export-mobile", "coreml", "--load-config", "{teacher}", "--output-dir", "out",
         says="ns-train mobile-r2l --pipeline.datamanager.teacher-config", left_out=("out",)),
    case("export-truncated-checkpoint", "ns-export-mobile", "onnx", "--load-config",
         "copies/scene/mobile-r2l/run/config.yml", "--output-dir", "out",
         prepare=truncated_student, uses=("student",), says="delete it to resume from an earlier one",
         left_out=("out",)),
    case("export-output-size-does-not-divide", "ns-export-mobile", "onnx", "--load-config", "{student}",
         "--output-dir", "out", "--output-size", "50", "48", says="divisible by 8", left_out=("out",)),
    case("export-output-under-a-file", "ns-export-mobile", "onnx", "--load-config", "{student}", "--output-dir",
         "blocker/out", files={"blocker": ""}, says="Pass a folder you can write to"),
    case("export-disk-full", "ns-export-mobile", "onnx", "--load-config", "{student}", "--output-dir", "out",
         file_size_limit=16384, says="Free some space", left_out=("out",)),
    # ns-train nas-nerf
    case("train-nas-nerf-missing-data", "ns-train", "nas-nerf", "--data", "nowhere", *TINY_NAS_NERF,
         says="ns-process-data"),
    case("train-nas-nerf-malformed-transforms", "ns-train", "nas-nerf", "--data", "scene", *TINY_NAS_NERF,
         files={"scene/transforms_train.json": BROKEN_JSON}, says="is not valid JSON"),
    case("train-nas-nerf-malformed-architecture", "ns-train", "nas-nerf", "--data", "nowhere", *TINY_NAS_NERF,
         "--pipeline.model.architecture-file", "arch.json", files={"arch.json": BROKEN_JSON},
         says="is not valid JSON"),
    case("train-nas-nerf-output-under-a-file", "ns-train", "nas-nerf", "--data", "{scene}", "--vis", "tensorboard",
         "--max-num-iterations", "3", "--output-dir", "blocker/out", files={"blocker": ""},
         says="Pass a folder you can write to"),
    case("train-nas-nerf-output-disk-full", "ns-train", "nas-nerf", "--data", "{scene}", *TINY_NAS_NERF,
         file_size_limit=1000, says="Free some space", left_out=("outputs/**/config.yml",)),
    case("train-nas-nerf-disk-full", "ns-train", "nas-nerf", "--data", "{scene}", *TINY_NAS_NERF,
         file_size_limit=100_000, says="Free some space"),
    # ns-train mobile-r2l
    case("train-mobile-r2l-no-teacher", "ns-train", "mobile-r2l", *TINY_STUDENT,
         says="pass --pipeline.datamanager.teacher-config", left_out=("outputs",)),
    case("train-mobile-r2l-missing-teacher", "ns-train", "mobile-r2l", *TINY_STUDENT,
         "--pipeline.datamanager.teacher-config", "nowhere/config.yml", says="pass the config.yml that ns-train",
         left_out=("outputs",)),
    case("train-mobile-r2l-malformed-teacher-config", "ns-train", "mobile-r2l", *TINY_STUDENT,
         "--pipeline.datamanager.teacher-config", "config.yml", files={"config.yml": BROKEN_YAML},
         says="is not valid YAML", left_out=("outputs",)),
    case("train-mobile-r2l-zoom-below-1", "ns-train", "mobile-r2l", *TINY_STUDENT, "--pipeline.datamanager.zoom-levels",
         "1", "0.5", "--pipeline.datamanager.teacher-config", "nowhere/config.yml",
         says="--pipeline.datamanager.zoom-levels of 1 or more", left_out=("cache", "outputs")),
    case("train-mobile-r2l-real-image-share-1", "ns-train", "mobile-r2l", *TINY_STUDENT,
         "--pipeline.datamanager.real-image-share", "1", "--pipeline.datamanager.teacher-config", "nowhere/config.yml",
         says="--pipeline.datamanager.real-image-share 1.0 must lie in [0, 1)", left_out=("cache", "outputs")),
    case("train-mobile-r2l-near-without-far", "ns-train", "mobile-r2l", *TINY_STUDENT,
         "--pipeline.datamanager.teacher-config", "{teacher}", "--pipeline.datamanager.near", "1",
         says="pass both --pipeline.datamanager.near and --pipeline.datamanager.far", left_out=("outputs",)),
    case("train-mobile-r2l-student-as-teacher", "ns-train", "mobile-r2l", *TINY_STUDENT,
         "--pipeline.datamanager.teacher-config", "{student}", says="teacher", left_out=("cache", "outputs")),
    case("train-mobile-r2l-truncated-teacher-checkpoint", "ns-train", "mobile-r2l", *TINY_STUDENT,
         "--pipeline.datamanager.teacher-config", "copies/scene/nas-nerf/run/config.yml",
         prepare=truncated_teacher, uses=("teacher",), says="delete it to resume from an earlier one",
         left_out=("cache",), process=True),
    case("train-mobile-r2l-output-under-a-file", "ns-train", "mobile-r2l", "--pipeline.datamanager.teacher-config",
         "{teacher}", "--vis", "tensorboard", "--max-num-iterations", "2", "--pipeline.datamanager.num-pseudo-views",
         "2", "--pipeline.datamanager.pseudo-view-dir", "cache", "--output-dir", "blocker/out",
         files={"blocker": ""}, says="Pass a folder you can write to", left_out=("cache",)),
    case("train-mobile-r2l-corrupt-cache-meta", "ns-train", "mobile-r2l", *TINY_STUDENT,
         "--pipeline.datamanager.teacher-config", "{teacher}", files={"cache/meta.json": BROKEN_JSON}, says="delete",
         left_out=("cache/views/*.npz",)),
]  # fmt: skip
BAD_INPUTS: list[BadInput] = [param.values[0] for param in CASES]  # type: ignore[attr-defined]
# Each of the 8 commands is refused at least once outside the test process (a real start-up, or a forked one).
assert {bad.prefix for bad in BAD_INPUTS if bad.own_process} == {bad.prefix for bad in BAD_INPUTS}
assert len({bad.prefix for bad in BAD_INPUTS}) == 8


def run_in_process(argv: list[str], cwd: Path, capfd: pytest.CaptureFixture[str]) -> tuple[int, str]:
    """Exit status and output (stdout, then stderr) of the console script argv[0] run in the test process, in `cwd`,
    with `argv`, as the interpreter would end it: SystemExit's code, None as 0, a message printed and 1. Any other
    exception propagates (a traceback: the test fails). The torch thread count and the random generators (ns-train
    seeds them) are restored for the tests that follow."""
    main = console_script(argv[0])
    capfd.readouterr()  # what the set-up printed is not the command's
    threads, states = torch.get_num_threads(), (random.getstate(), np.random.get_state(), torch.get_rng_state())
    code, message = 0, ""
    try:
        with pytest.MonkeyPatch.context() as patch:
            patch.chdir(cwd)
            patch.setattr(sys, "argv", argv)
            main()
    except SystemExit as exit_:
        if isinstance(exit_.code, int) or exit_.code is None:
            code = exit_.code or 0
        else:
            code, message = 1, f"{exit_.code}\n"
    finally:
        torch.set_num_threads(threads)
        random.setstate(states[0])
        np.random.set_state(states[1])
        torch.set_rng_state(states[2])
    out, err = capfd.readouterr()
    return code, out + err + message


def run_in_own_process(argv: list[str], cwd: Path, file_size_limit: int | None) -> tuple[int, str]:
    """Exit status and output (stdout, then stderr) of the console script argv[0] run as its own process; with a
    file size limit, a child of the tests' fork server (`support.run_forked`: the same process limits, without a
    second start-up's imports)."""
    if file_size_limit is not None:
        return run_forked(argv, cwd, {"PYTHONWARNINGS": "ignore"}, file_size_limit=file_size_limit)
    result = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=900)
    return result.returncode, result.stdout + result.stderr


@pytest.fixture
def runs(bad: BadInput, request: pytest.FixtureRequest) -> dict[str, Path]:
    """The paths of the shared fixtures `bad` needs, by placeholder name. Requested here, in the test's setup, so
    that the first case to need a trained run shows its training as setup, not as the case's own time."""
    return {key: request.getfixturevalue(FIXTURES[key]) for key in bad.fixtures}


@pytest.mark.parametrize("bad", CASES)
def test_bad_input_is_one_line_that_says_what_to_do(
    bad: BadInput,
    runs: dict[str, Path],
    tmp_path: Path,
    capfd: pytest.CaptureFixture[str],
    record_property: Callable[[str, object], None],
) -> None:
    record_property("outcome", "clear error" if bad.exit_code == 2 else "survived")  # for benchmarks/faults.py
    for name, text in bad.files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    if bad.prepare is not None:
        bad.prepare(tmp_path, runs)
    argv = [ns_command(bad.argv[0]), *(arg.format(**{k: str(v) for k, v in runs.items()}) for arg in bad.argv[1:])]
    if bad.own_process:
        code, printed = run_in_own_process(argv, tmp_path, bad.file_size_limit)
    else:
        code, printed = run_in_process(argv, tmp_path, capfd)
    assert code == bad.exit_code and "Traceback" not in printed, printed[-4000:]
    assert bad.says in " ".join(printed.replace("│", " ").split()), printed[-4000:]
    if bad.exit_code == 2:
        lines = [line for line in printed.splitlines() if line.startswith(bad.prefix)]
        assert len(lines) == 1 and bad.says in " ".join(printed.split(bad.prefix, 1)[1].split()), printed[-4000:]
    for pattern in (*NEVER_LEFT, *bad.left_out):
        assert not list(tmp_path.glob(pattern)), f"{pattern} left behind: {list(tmp_path.glob(pattern))}"
    for pattern in bad.left:
        assert list(tmp_path.glob(pattern)), f"nothing matches {pattern}"
