"""The README's main command, `ns-mobile-demo`, end to end at a tiny size: every stage, the summary, the pictures,
the phone packages, and a re-run that resumes instead of retraining."""

from __future__ import annotations

import json
from pathlib import Path

import imageio.v2 as imageio
import pytest
from support import ns_command, run_ns

from nerfstudio_mobile.data.scenes import SceneConfig, generate_scene
from nerfstudio_mobile.demo.demo import Demo, nerfacto_trainer
from nerfstudio_mobile.demo.run_estimate import CostRates, RunPlan, paper_plan
from nerfstudio_mobile.mobile_r2l.network import LightFieldNetworkConfig

TINY = [
    "--scene.image-size", "32", "--scene.num-train", "16", "--scene.num-test", "2",
    "--teacher-steps", "40", "--student-steps", "30", "--pseudo-views", "6",
    "--student.width", "16", "--student.num-blocks", "1",
]  # fmt: skip


@pytest.mark.slow  # trains a teacher and a student through real ns-mobile-demo processes
def test_demo_runs_the_whole_story_and_resumes(tmp_path: Path) -> None:
    output = tmp_path / "demo"
    # Python's own warning filters, as a user runs it (run_ns hides warnings): they must reach the log, not the console
    first = run_ns([ns_command("ns-mobile-demo"), "--output-dir", str(output), *TINY], cwd=tmp_path,
                   extra_env={"PYTHONWARNINGS": ""})  # fmt: skip
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
    printed = " ".join(first.stdout.split())  # rich wraps lines at the terminal width
    assert printed.index("This run on this machine") < printed.index("teacher training")  # said first
    assert "paper-scale run" in printed and "Phone packages" in printed and str(output / "demo.log") in printed
    # nerfstudio's config dumps and the libraries' warnings are in the log, not on the console
    log = (output / "demo.log").read_text()
    assert "TrainerConfig(" in log and "TrainerConfig(" not in first.stdout
    assert "Warning: " in log and "Warning: " not in first.stdout + first.stderr
    # ground truth | teacher | student and the two depths for each of the 2 test views, enlarged 8× to 256 px;
    # a 36-frame turntable at the scene's size
    assert imageio.imread(output / "comparison.png").shape == (2 * 2 * 32 * 8, 3 * 32 * 8, 3)
    assert len(imageio.mimread(output / "turntable.gif")) == 36

    second = run_ns([ns_command("ns-mobile-demo"), "--output-dir", str(output), *TINY], cwd=tmp_path)
    done_earlier = [line.split("━")[0].strip() for line in second.stdout.splitlines() if "done earlier" in line]
    assert done_earlier == ["teacher training", "pseudo views", "student training"]
    assert json.loads((output / "summary.json").read_text())["student"]["psnr"] == summary["student"]["psnr"]


def test_demo_on_real_data_trains_on_a_shrunk_copy_and_says_what_the_originals_would_cost(tmp_path: Path) -> None:
    scene = generate_scene(SceneConfig(output_dir=tmp_path / "scene", image_size=64, num_train=4, num_test=2))
    demo = Demo(output_dir=tmp_path / "demo", data=scene, max_image_size=32, max_test_views=1)
    root = demo.output_dir.resolve()
    data = demo.scene_data(root)
    assert data == root / "data" / "scene_32px"
    plan = demo.plan(demo.teacher_config(data, root))
    assert (plan.frame, plan.test_views) == ((32, 32), 1)
    rates = CostRates(teacher_train_ray=1e-4, teacher_render_ray=1e-4, student_train_pixel=1e-6)
    plans = {"this_run": plan, "paper": paper_plan((2, 2, 2))}
    text = " ".join(demo.plan_text(plans, {"this_run": rates, "paper": rates}, data, root).split())
    assert "shrunk from 64×64; --max-image-size 0 would train on the originals" in text
    # 4× the pixels and 2× the test views: pseudo views cost 4×, eval 8×
    hours, originals = plan.hours(rates), demo.plan(demo.teacher_config(scene, root)).hours(rates)
    assert originals["pseudo_views"] == pytest.approx(4 * hours["pseudo_views"])
    assert originals["eval"] == pytest.approx(8 * hours["eval"])


def test_run_estimate_times_a_stock_nerfacto_teacher() -> None:
    """`--teacher nerfacto`: its camera optimizer moves a training bundle's rays in place, so every timed step
    needs rays of its own (one shared bundle failed the second step: 'backward through the graph a second time')."""
    plan = RunPlan(
        teacher=nerfacto_trainer().pipeline.model, teacher_steps=100, teacher_rays=64,
        student=LightFieldNetworkConfig(width=16, num_blocks=1), student_steps=100, images_per_batch=1,
        frame=(16, 16), pseudo_views=10, test_views=1,
    )  # fmt: skip
    rates = CostRates.measure(plan, render_patch=16)
    assert all(0 < rate < 1 for rate in vars(rates).values())
