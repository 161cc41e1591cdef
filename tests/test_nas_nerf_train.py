"""`ns-train nas-nerf` end to end on a generated scene: learning, ns-eval, viewer renders, reloading."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from support import TEACHER_ITERATIONS, ns_command, run_ns, viewer_camera

from nas_nerf.complexity import cells_from_run
from nerfstudio_mobile.common.runs import RunError, load_run, read_run_config


def test_training_raises_psnr_well_above_the_untrained_model(nas_nerf_run: Path) -> None:
    config, trained, step = load_run(nas_nerf_run)
    assert step == TEACHER_ITERATIONS - 1
    assert config.machine.device_type == ("cuda" if torch.cuda.is_available() else "cpu")
    untrained = config.pipeline.setup(device=trained.device, test_mode="test").eval()
    before = untrained.get_average_eval_image_metrics()
    after = trained.get_average_eval_image_metrics()
    assert after["psnr"] > before["psnr"] + 6.0, (before, after)
    assert after["psnr"] > 18.0 and after["ssim"] > before["ssim"]


def test_ns_eval_prints_psnr_and_ssim(nas_nerf_run: Path, tmp_path: Path) -> None:
    output = tmp_path / "eval.json"
    # like nerfstudio users, from where training ran: ns-eval resolves the relative outputs/ from there
    training_dir = nas_nerf_run.parents[4]
    run_ns(
        [ns_command("ns-eval"), "--load-config", str(nas_nerf_run), "--output-path", str(output)],
        cwd=training_dir,
    )
    results = json.loads(output.read_text())["results"]
    assert results["psnr"] > 18.0 and 0.0 < results["ssim"] <= 1.0
    assert "lpips" not in results  # offline: no AlexNet weights, one warning instead of a crash


@pytest.mark.parametrize(("height", "width"), [(37, 53), (96, 64)])
def test_viewer_render_at_any_resolution(nas_nerf_run: Path, height: int, width: int) -> None:
    _, pipeline, _ = load_run(nas_nerf_run, test_mode="inference")
    outputs = pipeline.model.get_outputs_for_camera(viewer_camera(pipeline, height, width))
    assert outputs["rgb"].shape == (height, width, 3) and outputs["depth"].shape == (height, width, 1)
    assert 0.0 <= outputs["rgb"].min() and outputs["rgb"].max() <= 1.0
    near_object = outputs["accumulation"][..., 0] > 0.9
    assert near_object.any() and (outputs["depth"][near_object] > 2.0).all()  # cameras at radius 4, near 2


def test_complexity_of_a_trained_run(nas_nerf_run: Path) -> None:
    coarse, fine, n_coarse, n_importance = cells_from_run(nas_nerf_run)
    assert list(fine.channels) == [64, 64, 64] and (n_coarse, n_importance) == (32, 32)
    run_ns([ns_command("ns-nas-complexity"), "--load-config", str(nas_nerf_run)], cwd=nas_nerf_run.parent)


def test_moved_run_loads_and_missing_data_is_explained(nas_nerf_run: Path, tmp_path: Path) -> None:
    with pytest.raises(RunError, match="does not exist"):
        load_run(tmp_path / "nope" / "config.yml")
    moved = tmp_path / "elsewhere" / "x" / "nas-nerf" / "t"
    shutil.copytree(nas_nerf_run.parent, moved)
    _, pipeline, step = load_run(moved / "config.yml", test_mode="inference")  # checkpoints found next to it
    assert step == TEACHER_ITERATIONS - 1
    config = read_run_config(moved / "config.yml")
    config.pipeline.datamanager.data = tmp_path / "gone"
    (moved / "config.yml").write_text(yaml.dump(config))
    with pytest.raises(RunError, match="no longer exists"):
        load_run(moved / "config.yml")
