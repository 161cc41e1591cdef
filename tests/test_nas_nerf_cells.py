"""Field cells: exact sizes against nerfstudio and the paper, validation, architecture files, CLI parsing."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
import tyro
import yaml
from nerfstudio.data.scene_box import SceneBox
from nerfstudio.field_components.encodings import NeRFEncoding
from nerfstudio.fields.vanilla_nerf_field import NeRFField
from nerfstudio.model_components.ray_samplers import PDFSampler, UniformSampler

from nas_nerf.cell import FieldCell, FieldCellConfig, load_architecture, save_architecture
from nas_nerf.complexity import entrypoint as complexity_entrypoint
from nas_nerf.complexity import field_complexity, model_complexity
from nas_nerf.configs import PAPER_LEGO_CELLS
from nas_nerf.field import CellField
from nas_nerf.model import NASNeRFModelConfig

pytestmark = pytest.mark.unit
UNIT_BOX = SceneBox(torch.tensor([[-1.0] * 3, [1.0] * 3]))


def n_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_vanilla_cell_is_nerfstudio_nerf_field() -> None:
    nerfstudio_field = NeRFField(
        position_encoding=NeRFEncoding(3, 10, 0.0, 8.0, include_input=True),
        direction_encoding=NeRFEncoding(3, 4, 0.0, 4.0, include_input=True),
    )
    ours = CellField(FieldCellConfig((4, 1, 3), (256, 256, 256)))
    assert n_params(nerfstudio_field) == n_params(ours) == 546_564
    assert model_complexity(FieldCellConfig(), FieldCellConfig()).params == 1_093_128


@pytest.mark.parametrize(
    "cell",
    [FieldCellConfig((1, 1, 1), (1, 1, 1)), FieldCellConfig((3, 1, 5), (17, 40, 9)), *PAPER_LEGO_CELLS["s"]],
)
def test_analytic_params_match_the_module(cell: FieldCellConfig) -> None:
    assert field_complexity(cell).params == n_params(CellField(cell))


def test_fine_field_sees_193_samples_per_ray() -> None:
    """The paper's FLOPs convention rests on nerfstudio's PDF sampler keeping the 64 coarse samples."""
    from nerfstudio.cameras.rays import RayBundle

    bundle = RayBundle(
        origins=torch.zeros(4, 3),
        directions=torch.tensor([[0.0, 0.0, 1.0]] * 4),
        pixel_area=torch.ones(4, 1),
        nears=torch.full((4, 1), 2.0),
        fars=torch.full((4, 1), 6.0),
    )
    coarse = UniformSampler(num_samples=64)(bundle)
    fine = PDFSampler(num_samples=128)(bundle, coarse, torch.rand(4, 64, 1))
    assert fine.frustums.starts.shape[1] == model_complexity(FieldCellConfig(), FieldCellConfig()).fine_samples == 193


# Paper Table 1 (Lego): params (M, 2 decimals) and GFLOPs. Vanilla is exact under our convention; the tiers'
# published FLOPs are not reproducible by any per-layer convention that also gives vanilla's 574.14 (see
# the closing note of issue 2), so they are checked to the 4% they land within.
PAPER_TABLE = {"nerf": (1.09, 574.14), "s": (0.39, 262.61), "xs": (0.09, 58.98), "xxs": (0.05, 29.03)}


@pytest.mark.parametrize("tier", PAPER_TABLE)
def test_paper_lego_tiers(tier: str) -> None:
    params_m, gflops = PAPER_TABLE[tier]
    complexity = model_complexity(*PAPER_LEGO_CELLS[tier])
    assert complexity.params / 1e6 == pytest.approx(params_m, abs=0.006)
    assert complexity.paper_flops / 1e9 == pytest.approx(gflops, rel=0.04 if tier != "nerf" else 1e-5)


def test_flops_per_frame_scale_with_pixels() -> None:
    complexity = model_complexity(FieldCellConfig(), FieldCellConfig())
    assert complexity.frame_flops(800, 800) == complexity.paper_flops * 800 * 800 // 2048


def test_cell_forward_shape() -> None:
    cell = FieldCell(FieldCellConfig((2, 1, 2), (8, 12, 16)), in_dim=63)
    assert cell(torch.randn(5, 7, 63)).shape == (5, 7, 16)


@pytest.mark.parametrize(
    ("depths", "channels", "message"),
    [
        ((0, 1, 3), (8, 8, 8), "D1 >= 1"),
        ((2, 2, 3), (8, 8, 8), "middle stage"),
        ((2, 1, 3), (8, 0, 8), ">= 1"),
        ((2, 1, 3), (8, -4, 8), ">= 1"),
        ((2, 1), (8, 8, 8), "exactly 3"),
    ],
)
def test_invalid_cells_are_refused(depths: tuple, channels: tuple, message: str) -> None:
    config = NASNeRFModelConfig(fine_cell=FieldCellConfig(depths, channels))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=message):
        config.resolve_cells()
    with pytest.raises(ValueError, match=message):
        config.setup(scene_box=UNIT_BOX, num_train_data=1)


def test_a_model_built_from_an_architecture_file_has_its_cells(tmp_path: Path) -> None:
    coarse, fine = PAPER_LEGO_CELLS["xs"]
    path = tmp_path / "arch.json"
    save_architecture(path, coarse, fine, tier="xs")
    model = NASNeRFModelConfig(architecture_file=path).setup(scene_box=UNIT_BOX, num_train_data=1)
    assert n_params(model.field_coarse) == n_params(CellField(coarse))
    assert n_params(model.field_fine) == n_params(CellField(fine))


def test_the_run_keeps_the_architecture_files_cells(tmp_path: Path) -> None:
    """ns-train reads --pipeline.model.architecture-file once: config.yml holds the cells themselves, so the run
    still loads and resumes (`ns-train --load-config`) after the file is moved or deleted."""
    from nerfstudio.configs.method_configs import AnnotatedBaseConfigUnion

    coarse, fine = PAPER_LEGO_CELLS["xs"]
    path = tmp_path / "arch.json"
    save_architecture(path, coarse, fine, tier="xs")
    args = ["nas-nerf", "--output-dir", str(tmp_path / "outputs"), "--pipeline.model.architecture-file", str(path)]
    config = tyro.cli(AnnotatedBaseConfigUnion, args=args)
    config.set_timestamp()  # what ns-train does before it makes the trainer
    config.print_to_terminal()
    config.save_config()
    path.unlink()
    saved_path = config.get_base_dir() / "config.yml"
    saved = yaml.load(saved_path.read_text(), Loader=yaml.Loader)
    assert (saved.pipeline.model.coarse_cell, saved.pipeline.model.fine_cell) == (coarse, fine)
    saved.print_to_terminal()  # ns-train --load-config <run>/config.yml
    saved.save_config()
    model = saved.pipeline.model.setup(scene_box=UNIT_BOX, num_train_data=1)
    assert n_params(model.field_fine) == n_params(CellField(fine))


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{not json", "not valid JSON"),
        (json.dumps({"coarse": {"depths": [2, 1, 1], "channels": [8, 8, 8]}}), "'coarse' and 'fine'"),
        (
            json.dumps(
                {
                    "coarse": {"depths": [2, 1, 1], "channels": [8, 8, 8]},
                    "fine": {"depths": [2, 1, 1, 1], "channels": [8, 8, 8]},
                }
            ),
            "fine cell: a field cell needs",
        ),
    ],
)
def test_bad_architecture_files_are_refused(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "arch.json"
    path.write_text(content)
    with pytest.raises(ValueError, match=message):
        load_architecture(path)
    with pytest.raises(FileNotFoundError, match="ns-nas-search"):
        load_architecture(tmp_path / "missing.json")


def test_methods_are_registered_with_descriptions() -> None:
    from nerfstudio.configs.method_configs import all_descriptions as descriptions

    for method in ["nas-nerf", "nas-nerf-s", "nas-nerf-xs", "nas-nerf-xxs", "mobile-r2l"]:
        assert len(descriptions[method]) > 20, method


def test_cells_from_the_ns_train_command_line() -> None:
    from nerfstudio.configs.method_configs import AnnotatedBaseConfigUnion

    args = [
        "nas-nerf",
        "--pipeline.model.coarse-cell.depths",
        "2",
        "1",
        "1",
        "--pipeline.model.fine-cell.channels",
        "32",
        "48",
        "64",
    ]
    config = tyro.cli(AnnotatedBaseConfigUnion, args=args)
    assert config.pipeline.model.coarse_cell == FieldCellConfig((2, 1, 1), (256, 256, 256))
    assert config.pipeline.model.fine_cell == FieldCellConfig((4, 1, 3), (32, 48, 64))
    assert config.machine.device_type == ("cuda" if torch.cuda.is_available() else "cpu")


def test_bad_cells_are_one_line_before_ns_train_writes_or_loads_anything(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    """A cell that cannot be built stops ns-train on one line (not tyro's box) when it prints the config: before it
    saves a run folder, and before it reads --data (a missing scene here, which would otherwise be the error)."""
    from nerfstudio.configs.method_configs import AnnotatedBaseConfigUnion
    from nerfstudio.scripts.train import main

    args = ["nas-nerf", "--data", str(tmp_path / "no-scene"), "--output-dir", str(tmp_path / "outputs")]
    config = tyro.cli(AnnotatedBaseConfigUnion, args=[*args, "--pipeline.model.fine-cell.depths", "0", "1", "1"])
    capfd.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        main(config)
    printed = capfd.readouterr()
    lines = [line for line in (printed.out + printed.err).splitlines() if line.startswith("ns-train nas-nerf:")]
    assert exit_info.value.code == 2 and len(lines) == 1 and "fine cell: depths must be [D1, 1, D3]" in lines[0]
    assert not (tmp_path / "outputs").exists()


@pytest.mark.parametrize("metadata", [{}, {"near_far": (1.2, 6.5)}])
def test_eval_renders_sample_the_depth_range_training_saw(metadata: dict) -> None:
    """nerfstudio's collider moves the near plane to 0 outside training; a NeRF evaluated that way samples
    untrained space in front of the camera (a forward-facing teacher renders far worse than it trained)."""
    from nerfstudio.cameras.rays import RayBundle

    small = FieldCellConfig((1, 1, 1), (8, 8, 8))
    model = NASNeRFModelConfig(coarse_cell=small, fine_cell=small).setup(
        scene_box=UNIT_BOX, num_train_data=1, metadata=metadata
    )
    near, far = metadata.get("near_far", (2.0, 6.0))  # the dataparser's range, else vanilla NeRF's collider
    for training in (True, False):
        model.train(training)
        bundle = model.collider(RayBundle(torch.zeros(3, 3), torch.tensor([[0.0, 0.0, -1.0]] * 3), torch.ones(3, 1)))
        assert torch.all(bundle.nears == near) and torch.all(bundle.fars == far)


def test_complexity_cli_reports_errors_without_a_traceback(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    not_a_run = tmp_path / "config.yml"
    not_a_run.write_text("pipeline: {}\n")
    for args, message in [
        (["--architecture-file", str(tmp_path / "missing.json")], "expected a JSON from ns-nas-search"),
        (["--load-config", str(tmp_path / "missing.yml")], "pass the config.yml of a trained nas-nerf run"),
        (["--load-config", str(not_a_run)], "is not a nas-nerf run"),
    ]:
        monkeypatch.setattr(sys, "argv", ["ns-nas-complexity", *args])
        with pytest.raises(SystemExit) as exit_info:
            complexity_entrypoint()
        error = capsys.readouterr().err
        assert exit_info.value.code == 2 and error.startswith("ns-nas-complexity: ") and message in error
        assert len(error.strip().splitlines()) == 1
