"""`ns-export-mobile`: Core ML and ONNX exports of the tiny student, verified by executing them.

One fp16 conversion per input mode (and deployment target); the compressed variants derive from the `pose` one
(the harder graph). Int8 activations (Core ML w8a8, ONNX int8) are calibrated on a few of the student's pseudo
views.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
import tyro

from nerfstudio_mobile.common.files import atomic_dir
from nerfstudio_mobile.export.calibration import calibration_cameras
from nerfstudio_mobile.export.cli import Commands, CoreMLExport, OnnxExport, check_output_dir, entrypoint
from nerfstudio_mobile.export.dependencies import require, require_coremltools
from nerfstudio_mobile.export.errors import (
    CalibrationError,
    CompressionError,
    GridShapeError,
    MissingDependencyError,
    NotAStudentError,
    OutputExistsError,
)
from nerfstudio_mobile.export.graphs import export_graph, graph_input
from nerfstudio_mobile.export.pipeline import ExportedFile, export_coreml_files, export_onnx_files
from nerfstudio_mobile.export.sidecar import (
    COMPRESSIONS,
    GROUPED_PALETTES,
    SIDECAR_KEY,
    ExportFrame,
    WeightFormat,
    export_frame,
    weight_format,
)
from nerfstudio_mobile.export.student import Student, load_student
from nerfstudio_mobile.export.verify import MIN_PSNR, min_psnr, view_cases
from nerfstudio_mobile.mobile_r2l.network import LightFieldNetwork, LightFieldNetworkConfig

CoreMLFiles = dict[tuple[str, str], ExportedFile]
"""(input mode, weights) -> exported package."""
OnnxFiles = dict[tuple[str, str], ExportedFile]
"""(input mode, weights: fp32 or w8a8) -> exported file."""
CALIBRATION_VIEWS = 4
"""Pseudo views that calibrate int8 activations here (the tiny student's cache holds 40)."""


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread() -> Iterator[None]:
    # The programs are tiny (6x6 rays); on a loaded 2-core machine a second OpenMP thread only adds waiting.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def student(mobile_r2l_run: Path) -> Student:
    return load_student(mobile_r2l_run)


@pytest.fixture(scope="module")
def frame(student: Student) -> ExportFrame:
    return export_frame(student)


@pytest.fixture(scope="module")
def coreml_files(student: Student, frame: ExportFrame, tmp_path_factory: pytest.TempPathFactory) -> CoreMLFiles:
    directory = tmp_path_factory.mktemp("coreml")
    exported = export_coreml_files(student, frame, ["rays"], ["none"], directory)
    formats = (*COMPRESSIONS, *GROUPED_PALETTES, "w8a8")
    exported += export_coreml_files(student, frame, ["pose"], formats, directory, CALIBRATION_VIEWS)
    return {(file.mode, file.weights): file for file in exported}


@pytest.fixture(scope="module")
def onnx_files(student: Student, frame: ExportFrame, tmp_path_factory: pytest.TempPathFactory) -> OnnxFiles:
    directory = tmp_path_factory.mktemp("onnx")
    exported = export_onnx_files(student, frame, ["rays", "pose"], directory, ("none", "int8"), CALIBRATION_VIEWS)
    return {(file.mode, file.weights): file for file in exported}


@pytest.mark.slow
def test_pose_graph_matches_the_student_in_torch(student: Student, frame: ExportFrame) -> None:
    """World pose in, dataparser transform + rays + encoding in the graph: the same image as the student."""
    graph = export_graph(student.model.network, frame, "pose")
    for case in view_cases(student, frame, "pose"):
        with torch.no_grad():
            rgb = graph(case.input)[0]
        assert (rgb - case.reference[0]).abs().max() < 1e-4


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["rays", "pose"])
def test_fp16_package_matches_torch(coreml_files: CoreMLFiles, frame: ExportFrame, mode: str) -> None:
    exported = coreml_files[mode, "fp16"]
    verification = exported.verification
    assert verification.problems == []
    assert verification.passed
    assert verification.fidelity.psnr > MIN_PSNR["fp16"]
    assert verification.fidelity.max_abs_rgb < 1e-2  # a few fp16 ulps of values in [0, 1]
    assert verification.fidelity.max_abs_depth < 1e-2 * frame.far
    # fp16 weights: ~2 bytes per parameter plus the program.
    assert 2 * exported.params < exported.size_bytes < 2 * exported.params + 100_000


@pytest.mark.slow
@pytest.mark.parametrize("weights", ["int8", "palettize8", "palettize6", "palettize4"])
def test_compressed_packages_verify_and_shrink(coreml_files: CoreMLFiles, weights: str) -> None:
    exported = coreml_files["pose", weights]
    assert exported.verification.problems == []  # includes: weights stored in the requested format
    assert exported.verification.passed, exported.verification.failures
    assert exported.size_bytes < coreml_files["pose", "fp16"].size_bytes


@pytest.mark.slow
def test_smaller_palettes_give_smaller_packages(coreml_files: CoreMLFiles) -> None:
    palettes = [coreml_files["pose", weights] for weights in ("fp16", "palettize8", "palettize6", "palettize4")]
    sizes = [file.size_bytes for file in palettes]
    assert sizes == sorted(sizes, reverse=True)
    psnrs = [file.verification.fidelity.psnr for file in palettes]
    assert psnrs == sorted(psnrs, reverse=True)


@pytest.mark.slow
def test_package_carries_its_sidecar_and_keeps_the_encoding_fp32(coreml_files: CoreMLFiles) -> None:
    from nerfstudio_mobile.export.coreml_verify import check_ops
    from nerfstudio_mobile.export.mil import dtype_name, read_package

    path = coreml_files["pose", "fp16"].path
    package = read_package(path)
    sidecar = json.loads(path.with_suffix(".json").read_text())
    assert json.loads(package.spec.description.metadata.userDefined[SIDECAR_KEY]) == sidecar
    assert [feature.name for feature in package.spec.description.input] == ["pose"]
    assert [feature.name for feature in package.spec.description.output] == ["rgb", "depth"]
    trig = [op for op in package.main.operations if op.op_type in ("sin", "cos")]
    assert trig and all(dtype_name(op.outputs[0]) == "fp32" for op in trig)
    assert check_ops(package) == []


@pytest.mark.slow
def test_sidecar_is_enough_to_build_the_rays_input(
    coreml_files: CoreMLFiles, student: Student, frame: ExportFrame
) -> None:
    """An app's job, from the JSON alone (numpy, float32): world pose -> encoded rays, equal to the student's."""
    sidecar = json.loads(coreml_files["rays", "fp16"].path.with_suffix(".json").read_text())
    camera = student.test_views[0].camera
    world_pose = graph_input(student, "pose", camera)[0].numpy()
    transform, scale = np.array(sidecar["dataparser"]["transform"]), sidecar["dataparser"]["scale"]
    pose = transform @ world_pose
    pose[:, 3] *= scale
    grid, rays = sidecar["intrinsics"]["grid"], sidecar["rays"]
    v, u = np.meshgrid(np.arange(grid["height"]) + 0.5, np.arange(grid["width"]) + 0.5, indexing="ij")
    directions = np.stack([(u - grid["cx"]) / grid["fx"], -(v - grid["cy"]) / grid["fy"], -np.ones_like(u)], -1)
    directions = directions @ pose[:, :3].T
    directions /= np.linalg.norm(directions, axis=-1, keepdims=True)
    k = np.arange(rays["num_points"]) / (rays["num_points"] - 1)
    depths = rays["near"] * (1 - k) + rays["far"] * k
    points = pose[:, 3] + directions[..., None, :] * depths[:, None]  # [h, w, K, 3]
    coordinates = points.reshape(grid["height"], grid["width"], -1).astype(np.float32)
    scaled = np.concatenate([coordinates * 2.0**f for f in range(rays["num_frequencies"])], axis=-1)
    features = np.concatenate([np.sin(scaled), np.cos(scaled), coordinates], axis=-1).transpose(2, 0, 1)
    assert features.shape[0] == rays["num_channels"] == sidecar["inputs"]["rays"]["shape"][1]
    expected = graph_input(student, "rays", camera)[0].numpy()
    np.testing.assert_allclose(features, expected, atol=2e-3)
    assert sidecar["grid_size"] == [frame.grid.height, frame.grid.width]
    assert sidecar["output_size"] == [grid["height"] * sidecar["upscale"], grid["width"] * sidecar["upscale"]]
    assert sidecar["outputs"]["rgb"]["channels"] == ["red", "green", "blue"]


@pytest.mark.slow
def test_altered_weights_fail_verification(
    coreml_files: CoreMLFiles, student: Student, frame: ExportFrame, tmp_path: Path
) -> None:
    """Flip the sign of one conv-transpose's weights inside weight.bin: the interpreter reads the package, so
    the PSNR collapses and verification fails."""
    from nerfstudio_mobile.export.coreml_verify import verify_coreml

    exported = coreml_files["rays", "fp16"]
    path = tmp_path / exported.path.name
    shutil.copytree(exported.path, path)
    weight_file = next(path.rglob("weight.bin"))
    data = bytearray(weight_file.read_bytes())
    folded = export_graph(student.model.network, frame, "rays").network
    weight = folded.upsample[1][0].weight.detach().numpy().astype(np.float16)
    offset = bytes(data).find(weight.tobytes())
    assert offset > 0, "the fp16 weight should be stored verbatim"
    data[offset : offset + weight.nbytes] = (-weight).tobytes()
    weight_file.write_bytes(bytes(data))
    sidecar = json.loads(exported.path.with_suffix(".json").read_text())
    cases = view_cases(student, frame, "rays")
    verification = verify_coreml(path, frame, "rays", "none", exported.params, sidecar, cases)
    assert not verification.passed
    assert verification.fidelity.psnr < MIN_PSNR["fp16"] - 10


@pytest.mark.slow
def test_swapped_layer_fails_verification(student: Student, frame: ExportFrame, tmp_path: Path) -> None:
    """A network whose first residual block has its two convs swapped, checked against the true student."""
    from nerfstudio_mobile.export.onnx import export_onnx, verify_onnx

    broken = export_graph(student.model.network, frame, "rays")
    body = broken.network.blocks[0].body
    body[0], body[2] = body[2], body[0]
    path = tmp_path / "broken.onnx"
    export_onnx(broken, frame, "rays", path, {})
    verification = verify_onnx(path, frame, "rays", {}, view_cases(student, frame, "rays"))
    assert not verification.passed
    assert verification.fidelity.psnr < MIN_PSNR["fp32"] - 20


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["rays", "pose"])
def test_onnx_matches_torch(onnx_files: OnnxFiles, mode: str) -> None:
    exported = onnx_files[mode, "fp32"]
    assert exported.verification.problems == []
    assert exported.verification.passed
    assert exported.verification.fidelity.max_abs_rgb < 1e-4
    assert json.loads(exported.path.with_suffix(".json").read_text())["input_mode"] == mode


@pytest.mark.slow
def test_cli_onnx_writes_files_and_prints_the_table(
    student: Student, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    monkeypatch.setattr("nerfstudio_mobile.export.cli.load_student", lambda _: student)  # loaded once per module
    output_dir = tmp_path / "exports"
    argv = ["ns-export-mobile", "onnx", "--load-config", "config.yml", "--output-dir", str(output_dir)]
    monkeypatch.setattr(sys, "argv", [*argv, "--input-modes", "pose"])
    entrypoint()
    names = sorted(path.name for path in output_dir.iterdir())
    assert names == [f"{student.name}-pose.json", f"{student.name}-pose.onnx"]
    table = capsys.readouterr().out
    assert "GMAC/frame" in table and "pass" in table
    assert not list(tmp_path.glob(".exports*")), "the staging directory is renamed into place"


@pytest.mark.unit
def test_cli_parses_both_subcommands() -> None:
    args = ["--load-config", "run/config.yml", "--output-dir", "out"]
    coreml = tyro.cli(Commands, args=["coreml", *args, "--compressions", "none", "palettize4", "--overwrite"])
    assert isinstance(coreml, CoreMLExport) and coreml.compressions == ("none", "palettize4") and coreml.overwrite
    onnx = tyro.cli(Commands, args=["onnx", *args, "--output-size", "96", "64"])
    assert isinstance(onnx, OnnxExport) and onnx.output_size == (96, 64) and onnx.input_modes == ("rays", "pose")


def refusal(
    argv: list[str], output_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> str:
    """Run `ns-export-mobile *argv --output-dir output_dir`, which must refuse: exit 2 with one line (a message,
    not a traceback) and nothing written. Returns that line."""
    monkeypatch.setattr(sys, "argv", ["ns-export-mobile", *argv, "--output-dir", str(output_dir)])
    with pytest.raises(SystemExit) as exit_info:
        entrypoint()
    assert exit_info.value.code == 2
    out = capsys.readouterr().out
    assert len(out.strip().splitlines()) == 1, out
    assert not output_dir.exists()
    return out


@pytest.mark.slow
def test_teacher_run_is_refused_with_what_to_do(
    nas_nerf_run: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    with pytest.raises(NotAStudentError, match="ns-train mobile-r2l --pipeline.datamanager.teacher-config"):
        load_student(nas_nerf_run)
    argv = ["coreml", "--load-config", str(nas_nerf_run)]
    assert "not a MobileR2L student" in refusal(argv, tmp_path / "x", monkeypatch, capsys)


@pytest.mark.unit
def test_missing_config_is_refused_with_what_to_do(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    argv = ["onnx", "--load-config", str(tmp_path / "config.yml")]
    assert "config.yml does not exist" in refusal(argv, tmp_path / "x", monkeypatch, capsys)


@pytest.mark.unit
def test_missing_optional_dependencies_say_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    from nerfstudio_mobile.export.coreml import compress

    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import fails as if not installed
    with pytest.raises(MissingDependencyError, match="pip install onnxruntime"):
        require("onnxruntime", "onnxruntime", "Checking ONNX exports")
    monkeypatch.setitem(sys.modules, "coremltools", None)
    with pytest.raises(MissingDependencyError, match="Core ML export needs the `coremltools` package"):
        require_coremltools("Core ML export")
    monkeypatch.setitem(sys.modules, "sklearn", None)
    with pytest.raises(MissingDependencyError, match="scikit-learn"):
        compress(object(), "palettize4")
    # ONNX int8 needs onnxruntime's quantization extra (ml-dtypes); fp32 ONNX does not.
    monkeypatch.setitem(sys.modules, "ml_dtypes", None)
    monkeypatch.delitem(sys.modules, "nerfstudio_mobile.export.onnx_int8", raising=False)
    monkeypatch.delattr("nerfstudio_mobile.export.onnx_int8", raising=False)  # `from package import module` reads it
    OnnxExport(load_config=Path("config.yml"), output_dir=Path("out")).require_dependencies()
    with pytest.raises(MissingDependencyError, match="pip install ml-dtypes"):
        OnnxExport(load_config=Path("config.yml"), output_dir=Path("out"), quantize=("int8",)).require_dependencies()


@pytest.mark.unit
def test_non_empty_output_dir_needs_overwrite(tmp_path: Path) -> None:
    output_dir = tmp_path / "exports"
    output_dir.mkdir()
    (output_dir / "old.txt").write_text("previous export")
    # Refused before the run is even read (the config does not exist).
    with pytest.raises(OutputExistsError, match="--overwrite"):
        CoreMLExport(load_config=tmp_path / "missing.yml", output_dir=output_dir).main()
    check_output_dir(output_dir, overwrite=True)
    with pytest.raises(RuntimeError), atomic_dir(output_dir) as staging:
        (staging / "new.txt").write_text("half")
        raise RuntimeError("export failed")
    assert [path.name for path in tmp_path.iterdir()] == ["exports"]  # staging removed, old outputs intact
    assert (output_dir / "old.txt").exists()
    with atomic_dir(output_dir) as staging:
        (staging / "new.txt").write_text("complete")
    assert sorted(path.name for path in tmp_path.iterdir()) == ["exports"]
    assert [path.name for path in output_dir.iterdir()] == ["new.txt"]


@pytest.mark.slow
def test_output_size_must_be_whole_blocks(student: Student, frame: ExportFrame) -> None:
    with pytest.raises(GridShapeError, match="divisible by 8"):
        export_frame(student, (50, 48))
    larger = export_frame(student, (96, 64))
    assert (larger.grid.height, larger.grid.width) == (12, 8)
    assert larger.output.fy == pytest.approx(2 * frame.output.fy)
    assert larger.output.fx == pytest.approx(frame.output.fx * 64 / 48)


# Int8 and per-grouped-channel exports (issue 15).


@pytest.mark.slow
@pytest.mark.parametrize("weights", GROUPED_PALETTES)
def test_grouped_palettes_verify_on_ios18(coreml_files: CoreMLFiles, weights: str) -> None:
    """palettize<n>-g16: one look-up table per 16 output channels, read back and executed by the interpreter."""
    from nerfstudio_mobile.export.mil import read_package

    exported = coreml_files["pose", weights]
    verification = exported.verification
    assert verification.problems == []  # includes: iOS 18 spec, every large weight a grouped palette of n bits
    assert verification.passed, verification.failures
    assert verification.fidelity.psnr > min_psnr(weights)
    assert exported.size_bytes < coreml_files["pose", "fp16"].size_bytes
    luts = [op for op in read_package(exported.path).main.operations if op.op_type == "constexpr_lut_to_dense"]
    assert luts and all(op.inputs["lut"].shape[-2] == 2 ** weight_format(weights).bits for op in luts[1:])


def stored_conv_weights(path: Path) -> list[torch.Tensor]:
    """The dense weight of every conv / conv transpose of a `pose` package, as its program computes it."""
    from nerfstudio_mobile.export.coreml import NETWORK_ENTRY_OPS
    from nerfstudio_mobile.export.mil import read_package, run_program

    package, values = read_package(path), {}
    run_program(package.main, {"pose": torch.eye(4)[None]}, values.__setitem__)
    convs = [op for op in package.main.operations if op.op_type in NETWORK_ENTRY_OPS]
    weights = [op.inputs["weight"] for op in convs]
    return [(values[w.name] if w.name in values else torch.as_tensor(w.val)).float() for w in weights]


@pytest.mark.slow
def test_fewer_palette_bits_give_smaller_grouped_packages(coreml_files: CoreMLFiles) -> None:
    palettes = [coreml_files["pose", weights] for weights in ("palettize4", *GROUPED_PALETTES)]
    sizes = [file.size_bytes for file in palettes[1:]]
    assert sizes == sorted(sizes, reverse=True)
    # A palette per 16 channels fits the weights better than one per tensor with the same bits, over all the
    # palettized weights (not layer by layer: k-means stops in local optima; nor in the rendering, where a few small
    # layers weigh most: on the tests' student 4-bit per 16 channels has rendered up to 2 dB below per tensor).
    from nerfstudio_mobile.export.palette_training import COMPRESSION_THRESHOLD

    reference = stored_conv_weights(coreml_files["pose", "fp16"].path)

    def weight_error(weights: str) -> float:
        stored = stored_conv_weights(coreml_files["pose", weights].path)
        pairs = [(q, w) for q, w in zip(stored, reference, strict=True) if w.numel() > COMPRESSION_THRESHOLD]
        return sum(float(((q - w) ** 2).sum()) for q, w in pairs) / sum(float((w**2).sum()) for _, w in pairs)

    assert weight_error("palettize4-g16") < weight_error("palettize4")


@pytest.mark.slow
def test_w8a8_package_quantizes_activations_and_verifies(coreml_files: CoreMLFiles) -> None:
    from nerfstudio_mobile.export.mil import read_package

    exported = coreml_files["pose", "w8a8"]
    verification = exported.verification
    assert verification.problems == []  # includes: iOS 17, int8 weights, int8 activations into every conv but the stem
    assert verification.passed, verification.failures
    assert verification.fidelity.psnr > MIN_PSNR["w8a8"]
    ops = [op.op_type for op in read_package(exported.path).main.operations]
    assert ops.count("quantize") > 0 and ops.count("dequantize") >= ops.count("quantize")
    assert json.loads(exported.path.with_suffix(".json").read_text())["weights"] == "w8a8"


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["rays", "pose"])
def test_onnx_int8_matches_torch(onnx_files: OnnxFiles, mode: str) -> None:
    """Static S8S8 QDQ, run by onnxruntime on the held-out test views."""
    exported = onnx_files[mode, "w8a8"]
    assert exported.path.name.endswith(f"-{mode}-int8.onnx")
    assert exported.verification.problems == []  # includes: QDQ int8 activations and per-channel int8 weights
    assert exported.verification.passed, exported.verification.failures
    # int8 weights; the stem, the last super-resolution stage and the heads stay fp32 (a larger share in this tiny net)
    assert exported.size_bytes < 0.6 * onnx_files[mode, "fp32"].size_bytes
    assert json.loads(exported.path.with_suffix(".json").read_text())["weights"] == "w8a8"


def _negate_stored(path: Path, stored: np.ndarray) -> None:
    """Negate an array where the package's weight.bin stores it verbatim."""
    weight_file = next(path.rglob("weight.bin"))
    data = bytearray(weight_file.read_bytes())
    offset = bytes(data).find(stored.tobytes())
    assert offset > 0, "the array should be stored verbatim"
    data[offset : offset + stored.nbytes] = (-stored).tobytes()
    weight_file.write_bytes(bytes(data))


@pytest.mark.slow
@pytest.mark.parametrize(
    ("weights", "op_type", "stored"),
    [("palettize4-g16", "constexpr_lut_to_dense", "lut"), ("w8a8", "constexpr_affine_dequantize", "quantized_data")],
)
def test_altered_quantized_weights_fail_verification(
    coreml_files: CoreMLFiles,
    student: Student,
    frame: ExportFrame,
    tmp_path: Path,
    weights: str,
    op_type: str,
    stored: str,
) -> None:
    """Negate the stored palettes / int8 values of the first conv-transpose in weight.bin: the PSNR collapses."""
    from nerfstudio_mobile.export.coreml_verify import verify_coreml
    from nerfstudio_mobile.export.mil import read_package

    exported = coreml_files["pose", weights]
    path = tmp_path / exported.path.name
    shutil.copytree(exported.path, path)
    operations = list(read_package(path).main.operations)
    upsample = next(op for op in operations if op.op_type == "conv_transpose")
    compressed = upsample.inputs["weight"].op
    assert compressed.op_type == op_type
    _negate_stored(path, compressed.inputs[stored].val)
    sidecar = json.loads(exported.path.with_suffix(".json").read_text())
    cases = view_cases(student, frame, "pose")
    verification = verify_coreml(path, frame, "pose", weights, exported.params, sidecar, cases)
    assert verification.problems == []  # the layout is intact: the PSNR alone catches it
    assert not verification.passed
    assert verification.fidelity.psnr < min(min_psnr(weights), exported.verification.fidelity.psnr - 5)


@pytest.mark.slow
def test_altered_onnx_int8_weights_fail_verification(
    onnx_files: OnnxFiles, student: Student, frame: ExportFrame, tmp_path: Path
) -> None:
    """Negate the int8 weights of the first ConvTranspose, and check an fp32 file against the int8 layout."""
    import onnx

    from nerfstudio_mobile.export.onnx import verify_onnx

    exported = onnx_files["rays", "w8a8"]
    model = onnx.load(str(exported.path))
    producers = {output: node for node in model.graph.node for output in node.output}
    upsample = next(node for node in model.graph.node if node.op_type == "ConvTranspose")
    weight_name = producers[upsample.input[1]].input[0]  # DequantizeLinear(int8 initializer, scale, zero point)
    initializer = next(tensor for tensor in model.graph.initializer if tensor.name == weight_name)
    int8 = onnx.numpy_helper.to_array(initializer)
    assert int8.dtype == np.int8
    initializer.CopyFrom(onnx.numpy_helper.from_array(-int8, weight_name))
    path = tmp_path / exported.path.name
    onnx.save(model, str(path))
    sidecar = json.loads(exported.path.with_suffix(".json").read_text())
    cases = view_cases(student, frame, "rays")
    verification = verify_onnx(path, frame, "rays", sidecar, cases, "w8a8")
    assert verification.problems == []
    assert not verification.passed
    assert verification.fidelity.psnr < min(MIN_PSNR["w8a8"], exported.verification.fidelity.psnr - 5)
    fp32 = onnx_files["rays", "fp32"]
    fp32_sidecar = json.loads(fp32.path.with_suffix(".json").read_text())
    as_int8 = verify_onnx(fp32.path, frame, "rays", fp32_sidecar, cases, "w8a8")
    assert any("does not read int8 activation" in problem for problem in as_int8.problems)


@pytest.mark.slow
def test_calibration_reads_the_pseudo_view_cache(student: Student, frame: ExportFrame) -> None:
    """The calibration poses are those of the cached pseudo views; without the cache, one line says what to do."""
    from nerfstudio_mobile.mobile_r2l.cache import PseudoViewCache

    assert student.pseudo_views is not None
    cameras = calibration_cameras(student, frame, CALIBRATION_VIEWS)
    cache = PseudoViewCache.open(student.pseudo_views)
    expected = torch.stack([cache.read(index).c2w for index in cache.indices()[:CALIBRATION_VIEWS]])
    assert torch.equal(torch.cat([camera.camera_to_worlds for camera in cameras]), expected)
    assert (int(cameras[0].height), int(cameras[0].width)) == (frame.output.height, frame.output.width)
    with pytest.raises(CalibrationError, match="pseudo views"):
        calibration_cameras(dataclasses.replace(student, pseudo_views=None), frame, CALIBRATION_VIEWS)


@pytest.mark.unit
def test_compression_names_parse_or_are_refused(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    assert weight_format("palettize3-g16") == WeightFormat("palette", 3, 16)
    assert weight_format("palettize4") == WeightFormat("palette", 4)
    assert weight_format("w8a8") == WeightFormat("w8a8", 8)
    assert weight_format("palettize2-g16-finetuned") == WeightFormat("palette", 2, 16, finetuned=True)
    assert weight_format("palettize4-finetuned") == WeightFormat("palette", 4, finetuned=True)
    assert weight_format("palettize2.4-g16-finetuned") == WeightFormat("palette", 2, 16, True, mean_bits=2.4)
    refused = ("palettize3", "palettize5-g16", "palettize4-g0", "int4", "palettize2-g16-tuned", "w8a8-finetuned",
               "palettize2.4-g16", "palettize2.4-finetuned", "palettize4.5-g16-finetuned",
               "palettize2.0-g16-finetuned")  # fmt: skip
    for name in refused:
        with pytest.raises(CompressionError, match="not a weight format"):
            weight_format(name)
    argv = ["coreml", "--load-config", str(tmp_path / "config.yml"), "--compressions", "none", "palettize3"]
    assert "palettize4-g16" in refusal(argv, tmp_path / "x", monkeypatch, capsys)  # before the run is read


@pytest.mark.unit
def test_group_size_must_divide_the_compressed_layers() -> None:
    from nerfstudio_mobile.export.coreml import check_group_size

    network = LightFieldNetwork(LightFieldNetworkConfig(in_channels=312, width=64, num_blocks=1))
    check_group_size(network, "palettize4-g16")  # 64, 64, 64 and 16 output channels
    with pytest.raises(CompressionError, match="do not divide the network's 16-channel layers.*e.g. 16"):
        check_group_size(network, "palettize4-g32")


@pytest.mark.unit
def test_interpreter_expands_grouped_palettes_and_quantizes_like_coremltools() -> None:
    """The MIL interpreter's iOS18 constexpr_lut_to_dense and iOS17 quantize / dequantize against coremltools'
    own value inference, on a program built here."""
    from coremltools.converters.mil import Builder as mb
    from coremltools.converters.mil.mil import types

    from nerfstudio_mobile.export.mil import OPS, OpArgs, ct

    rng = np.random.default_rng(0)
    indices = rng.integers(0, 8, size=(8, 6, 2, 2)).astype(types.nptype_from_builtin(types.uint3))
    lut = rng.standard_normal((2, 3, 1, 1, 8, 1)).astype(np.float16)  # tables per 4 x 2 block of axes 0 and 1
    x = (4 * rng.standard_normal((1, 6, 3, 3))).astype(np.float32)

    @mb.program(input_specs=[], opset_version=ct.target.iOS18)
    def program():
        dense = mb.constexpr_lut_to_dense(indices=indices, lut=lut, name="dense")
        q = mb.quantize(input=x, scale=np.float32(0.05), zero_point=np.int8(3), output_dtype="int8", name="q")
        return dense, mb.dequantize(input=q, scale=np.float32(0.05), zero_point=np.int8(3), name="dq")

    ops = {op.name: op for op in program.functions["main"].operations}
    dense = OPS["constexpr_lut_to_dense"](OpArgs(ops["dense"], {}))
    np.testing.assert_array_equal(dense.numpy(), ops["dense"].materialized_val_inference())
    quantized = OPS["quantize"](OpArgs(ops["q"], {}))
    np.testing.assert_array_equal(quantized.numpy(), ops["q"].outputs[0].val)
    dequantized = OPS["dequantize"](OpArgs(ops["dq"], {"q": quantized}))
    np.testing.assert_allclose(dequantized.numpy(), (ops["q"].outputs[0].val - 3.0) * 0.05, rtol=1e-6)


# Palette-aware fine-tuning (issue 15: small packages that keep the student's quality).


@pytest.mark.unit
@pytest.mark.parametrize(("bits", "group_size", "axis"), [(2, 16, 0), (3, 4, 1), (4, None, 0)])
def test_palette_holds_at_most_its_entries_per_group_and_passes_gradients_straight(
    bits: int, group_size: int | None, axis: int
) -> None:
    from nerfstudio_mobile.export.palette_training import Palette

    weight = torch.randn(32, 32, 2, 2, generator=torch.Generator().manual_seed(0)).requires_grad_()
    palette = Palette(weight, bits, group_size, axis)
    palettized = palette(weight)
    groups = palettized.detach().movedim(axis, 0).reshape(1 if group_size is None else 32 // group_size, -1)
    assert max(len(group.unique()) for group in groups) == 2**bits
    assert all(torch.isin(group, lut).all() for group, lut in zip(groups, palette.lut, strict=True))  # exactly
    # a k-means fit: closer to the weights than the same number of evenly spaced levels over each group's range
    latent = weight.detach().movedim(axis, 0).reshape(groups.shape)
    low, high = latent.min(dim=1, keepdim=True).values, latent.max(dim=1, keepdim=True).values
    steps = (high - low) / (2**bits - 1)
    uniform = low + ((latent - low) / steps).round() * steps
    assert ((groups - latent) ** 2).mean() < 0.8 * ((uniform - latent) ** 2).mean()
    (palettized * torch.arange(weight.numel()).reshape(weight.shape)).sum().backward()
    assert torch.equal(weight.grad, torch.arange(weight.numel(), dtype=torch.float32).reshape(weight.shape))


@pytest.mark.slow
def test_finetuned_palettes_are_stored_exactly_and_beat_kmeans_palettes(
    coreml_files: CoreMLFiles, student: Student, frame: ExportFrame, tmp_path: Path
) -> None:
    """palettize2-g16-finetuned through the export: the student learns 2-bit palettes at its pseudo views; the
    package stores them as they are (verification: every large weight a 2-bit palette per 16 channels) and renders
    closer to the student than k-means palettes of its trained weights; mixed 2/3-bit palettes (2.5 on average)
    render closer still, in a package smaller than the 3-bit one; without the cache, one line says why."""
    from nerfstudio_mobile.export.palette_training import PaletteTraining

    training = PaletteTraining(steps=80, views_per_step=2)
    compressions = ["palettize2-g16-finetuned", "palettize2.5-g16-finetuned"]
    finetuned, mixed = export_coreml_files(student, frame, ["pose"], compressions, tmp_path, 1, training)
    assert finetuned.verification.passed, finetuned.verification.failures
    assert mixed.verification.passed, mixed.verification.failures
    kmeans = coreml_files["pose", "palettize2-g16"]
    assert finetuned.size_bytes <= kmeans.size_bytes * 1.02
    assert finetuned.verification.fidelity.psnr > kmeans.verification.fidelity.psnr
    assert mixed.size_bytes < coreml_files["pose", "palettize3-g16"].size_bytes
    assert mixed.verification.fidelity.psnr > finetuned.verification.fidelity.psnr
    with pytest.raises(CalibrationError, match="palette fine-tuning trains on the student's pseudo views"):
        export_coreml_files(
            dataclasses.replace(student, pseudo_views=None), frame, ["pose"], ["palettize2-g16-finetuned"],
            tmp_path / "again", 1, training,
        )  # fmt: skip


@pytest.mark.unit
def test_network_with_palette_values_is_stored_as_exactly_those_palettes(tmp_path: Path) -> None:
    """What `palette_finetuned` hands to the Core ML export (weights holding 2^n values per 16 output channels)
    becomes n-bit palettes holding exactly those values: the package computes what that network computes."""
    from nerfstudio_mobile.common.intrinsics import Intrinsics
    from nerfstudio_mobile.common.metrics import psnr
    from nerfstudio_mobile.export import coreml
    from nerfstudio_mobile.export.coreml_verify import check_weights
    from nerfstudio_mobile.export.mil import read_package, run_program
    from nerfstudio_mobile.export.palette_training import round_to_palettes
    from nerfstudio_mobile.export.sidecar import sidecar
    from nerfstudio_mobile.mobile_r2l.encoding import RayEncodingConfig
    from nerfstudio_mobile.mobile_r2l.network import fold_batchnorm

    torch.manual_seed(0)
    config = LightFieldNetworkConfig(in_channels=RayEncodingConfig().num_channels, width=64, num_blocks=1)
    compression = "palettize2-g16-finetuned"
    weights = weight_format(compression)
    network = round_to_palettes(fold_batchnorm(LightFieldNetwork(config)), weights)
    identity = ((1.0, 0.0, 0.0, 0.0), (0.0, 1.0, 0.0, 0.0), (0.0, 0.0, 1.0, 0.0))
    output = Intrinsics(40.0, 40.0, 24.0, 24.0, 48, 48)
    frame = ExportFrame(output, config, RayEncodingConfig(), 2.0, 6.0, identity, 1.0)
    graph = export_graph(network, frame, "rays")
    params = sum(p.numel() for p in graph.parameters())
    converted = coreml.convert(graph, frame, "rays", coreml.conversion_target(weights))
    path = tmp_path / "palettes.mlpackage"
    coreml.save(coreml.compress(converted, compression), path, sidecar(frame, "rays", compression, params, {}))
    package = read_package(path)
    assert check_weights(package, params, weights) == []  # every large weight a 2-bit palette per 16 channels
    rays = torch.rand(frame.input_shape("rays"))
    with torch.no_grad():
        expected = graph(rays)[0][0].permute(1, 2, 0)
    stored = run_program(package.main, {"rays": rays})["rgb"][0].permute(1, 2, 0).float()
    assert psnr(expected, stored) > 40  # fp16 rounding only, no clustering error


@pytest.mark.unit
@pytest.mark.parametrize("compression", ["int8", "palettize4"])
def test_compression_leaves_the_ray_encoding_of_a_fine_ray_grid_fp32(tmp_path: Path, compression: str) -> None:
    """A 32x32 ray grid (a small frame's, 1x first stages) makes the `pose` graph's ray directions and sample
    depths constants of more than COMPRESSION_THRESHOLD elements: only conv weights are compressed, so the package
    renders what the network does; compressing every large constant (coremltools' global config) puts points
    off by whole int8 / palette steps, and the check finds it."""
    import coremltools.optimize.coreml as cto

    from nerfstudio_mobile.common.intrinsics import Intrinsics
    from nerfstudio_mobile.common.metrics import psnr
    from nerfstudio_mobile.export import coreml
    from nerfstudio_mobile.export.coreml_verify import check_ops
    from nerfstudio_mobile.export.mil import read_package, run_program
    from nerfstudio_mobile.export.sidecar import sidecar
    from nerfstudio_mobile.mobile_r2l.encoding import RayEncodingConfig
    from nerfstudio_mobile.mobile_r2l.network import fold_batchnorm

    torch.manual_seed(0)
    encoding = RayEncodingConfig()
    config = LightFieldNetworkConfig(
        in_channels=encoding.num_channels, width=64, num_blocks=1, upscale_factors=(1, 1, 2)
    )
    network = fold_batchnorm(LightFieldNetwork(config)).eval()
    identity = ((1.0, 0.0, 0.0, 0.0), (0.0, 1.0, 0.0, 0.0), (0.0, 0.0, 1.0, 0.0))
    frame = ExportFrame(Intrinsics(60.0, 60.0, 32.0, 32.0, 64, 64), config, encoding, 2.0, 6.0, identity, 1.0)
    assert (frame.grid.height, frame.grid.width) == (32, 32)
    graph = export_graph(network, frame, "pose")
    params = sum(p.numel() for p in graph.parameters())
    converted = coreml.convert(graph, frame, "pose")
    pose = torch.tensor([[[1.0, 0.0, 0.0, 0.0], [0.0, 1.0, 0.0, 0.0], [0.0, 0.0, 1.0, 4.0], [0.0, 0.0, 0.0, 1.0]]])
    with torch.no_grad():
        expected = graph(pose)[0]

    def saved(model: object, name: str) -> Path:
        path = tmp_path / f"{name}.mlpackage"
        coreml.save(model, path, sidecar(frame, "pose", compression, params, {}))
        return path

    package = read_package(saved(coreml.compress(converted, compression), compression))
    assert check_ops(package) == []
    stored = run_program(package.main, {"pose": pose})["rgb"].float()
    assert psnr(expected, stored) > min_psnr(compression)

    weights = weight_format(compression)
    everything = (
        cto.OpLinearQuantizerConfig(mode="linear_symmetric", dtype="int8")
        if weights.kind == "int8"
        else cto.OpPalettizerConfig(nbits=weights.bits, mode="kmeans")
    )
    compress_all = cto.linear_quantize_weights if weights.kind == "int8" else cto.palettize_weights
    config_all = cto.OptimizationConfig(global_config=everything)
    problems = check_ops(read_package(saved(compress_all(converted, config_all), "everything")))
    assert problems and all("compresses a constant of" in problem for problem in problems), problems


@pytest.mark.unit
def test_mixed_palettes_widen_the_layers_that_cost_most_and_keep_to_their_mean(tmp_path: Path) -> None:
    """palettize2.5-g16: 3 bits go to the layers where 2 bits cost the output most per weight (the network renders
    closer to the float one than with no layer widened, or with as many weights widened on the other layers), the
    package stores 2- or 3-bit palettes within 2.5 bits on average, and one with more 3-bit layers fails the check."""
    from nerfstudio_mobile.common.intrinsics import Intrinsics
    from nerfstudio_mobile.common.metrics import psnr
    from nerfstudio_mobile.export import coreml
    from nerfstudio_mobile.export.coreml_verify import check_weights
    from nerfstudio_mobile.export.mil import read_package
    from nerfstudio_mobile.export.palette_training import palettized_layers, round_to_palettes, wider_layers
    from nerfstudio_mobile.export.sidecar import sidecar
    from nerfstudio_mobile.mobile_r2l.encoding import RayEncodingConfig
    from nerfstudio_mobile.mobile_r2l.network import fold_batchnorm

    torch.manual_seed(0)
    config = LightFieldNetworkConfig(in_channels=RayEncodingConfig().num_channels, width=64, num_blocks=2)
    network = fold_batchnorm(LightFieldNetwork(config)).eval()
    rays = torch.rand(2, config.in_channels, 8, 8)
    compression = "palettize2.5-g16-finetuned"
    weights = weight_format(compression)

    def compressed_layers(net: LightFieldNetwork) -> list[torch.nn.Module]:
        return [entry.layer for entry in palettized_layers(net, weights) if entry.layer is not net.stem[0]]

    def widened(positions: set[int]) -> LightFieldNetwork:
        copy = fold_batchnorm(network)
        return round_to_palettes(copy, weights, {compressed_layers(copy)[i] for i in positions}).eval()

    sizes = [layer.weight.numel() for layer in compressed_layers(network)]
    wider = wider_layers(network, weights, [rays])
    chosen = {i for i, layer in enumerate(compressed_layers(network)) if layer in wider}
    assert 0.25 < sum(sizes[i] for i in chosen) / sum(sizes) <= 0.5
    others: set[int] = set()
    for i in (i for i in range(len(sizes)) if i not in chosen):  # as many weights, on the layers not chosen
        if sum(sizes[j] for j in others | {i}) <= sum(sizes[j] for j in chosen):
            others.add(i)
    with torch.no_grad():
        reference = network(rays)
        mixed, uniform, elsewhere = (float(psnr(reference, widened(p)(rays))) for p in (chosen, set(), others))
    assert mixed > uniform + 1.0 and mixed > elsewhere + 0.5, (mixed, uniform, elsewhere)

    identity = ((1.0, 0.0, 0.0, 0.0), (0.0, 1.0, 0.0, 0.0), (0.0, 0.0, 1.0, 0.0))
    output = Intrinsics(40.0, 40.0, 24.0, 24.0, 48, 48)
    frame = ExportFrame(output, config, RayEncodingConfig(), 2.0, 6.0, identity, 1.0)
    for positions, problems in ((chosen, []), (set(range(len(sizes))), ["more than 2.5"])):
        graph = export_graph(widened(positions), frame, "rays")
        params = sum(p.numel() for p in graph.parameters())
        converted = coreml.convert(graph, frame, "rays", coreml.conversion_target(weights))
        path = tmp_path / f"{len(positions)}.mlpackage"
        coreml.save(coreml.compress(converted, compression), path, sidecar(frame, "rays", compression, params, {}))
        found = check_weights(read_package(path), params, weights)
        assert len(found) == len(problems) and all(p in f for p, f in zip(problems, found, strict=True)), found


@pytest.mark.unit
def test_palette_finetuning_learns_palettes_closer_to_the_network_than_kmeans(tmp_path: Path) -> None:
    """Fine-tuned at its pseudo views' poses, 2-bit palettes per 16 channels reproduce what the float network
    renders better than k-means palettes of its weights (the target is the network, not the views' pixels: here
    noise), and each palettized weight holds at most 4 values per group."""
    from types import SimpleNamespace

    from nerfstudio.cameras.camera_utils import viewmatrix
    from nerfstudio.data.scene_box import SceneBox
    from torch.nn.utils import parametrize

    from nerfstudio_mobile.common.metrics import psnr
    from nerfstudio_mobile.export.palette_training import PaletteTraining, palette_finetuned, palettized_layers
    from nerfstudio_mobile.mobile_r2l.cache import CacheMeta, PseudoViewCache
    from nerfstudio_mobile.mobile_r2l.model import MobileR2LModelConfig
    from nerfstudio_mobile.mobile_r2l.network import fold_batchnorm

    torch.manual_seed(0)
    model = MobileR2LModelConfig(
        network=LightFieldNetworkConfig(width=32, num_blocks=1), jitter=False, cpu_bf16=False
    ).setup(scene_box=SceneBox(torch.tensor([[-1.0] * 3, [1.0] * 3])), num_train_data=1,
            metadata={"mobile_r2l": {"near_far": (2.0, 6.0)}})  # fmt: skip
    model.network.eval()
    meta = CacheMeta(num_views=8, height=24, width=24, fx=30.0, fy=30.0, cx=12.0, cy=12.0, layout="sphere", seed=0)
    angles = torch.linspace(0, 2 * torch.pi, 9)[:-1]
    positions = torch.stack([4 * angles.cos(), 4 * angles.sin(), torch.ones_like(angles)], dim=1)
    c2w = torch.stack([viewmatrix(-position, torch.tensor([0.0, 0.0, 1.0]), position) for position in positions])
    cameras = meta.intrinsics.cameras(c2w)

    def renders(network: torch.nn.Module) -> dict[str, torch.Tensor]:
        with torch.no_grad():
            encoded, (height, width) = model.encode(cameras, jitter=False)
            return model.frame_outputs(network(encoded), height, width)

    truth = renders(model.network)
    cache = PseudoViewCache(tmp_path / "views", meta)
    noise = torch.rand(truth["rgb"].shape, generator=torch.Generator().manual_seed(1))
    for index in range(meta.num_views):
        cache.write(index, noise[index], truth["depth"][index, ..., 0], c2w[index])
    weights = weight_format("palettize2-g16-finetuned")
    student = SimpleNamespace(model=model, pseudo_views=cache.root)
    finetuned = palette_finetuned(student, weights, PaletteTraining(steps=60, views_per_step=4, lr=1e-3))  # type: ignore[arg-type]
    for layer, bits, group_size, axis in palettized_layers(finetuned, weights):
        channels = layer.weight.shape[axis]
        groups = layer.weight.detach().movedim(axis, 0).reshape(channels // (group_size or channels), -1)
        assert max(len(group.unique()) for group in groups) <= 2**bits
    kmeans = fold_batchnorm(model.network)
    for entry in palettized_layers(kmeans, weights):
        parametrize.register_parametrization(entry.layer, "weight", entry.palette())
    target = truth["rgb"].clamp(0, 1)
    finetuned_psnr, kmeans_psnr = psnr(target, renders(finetuned)["rgb"]), psnr(target, renders(kmeans)["rgb"])
    assert finetuned_psnr > kmeans_psnr + 3.0
