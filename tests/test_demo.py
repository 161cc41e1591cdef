"""`ns-mobile-demo`'s plan: the scene copy it trains on and the run estimate it prints first. The command itself runs
end to end, killed in every stage, in test_faults.py."""

from __future__ import annotations

from pathlib import Path

import pytest

from nerfstudio_mobile.data.scenes import SceneConfig, generate_scene
from nerfstudio_mobile.demo.demo import Demo, nerfacto_trainer
from nerfstudio_mobile.demo.run_estimate import CostRates, RunPlan, paper_plan
from nerfstudio_mobile.mobile_r2l.network import LightFieldNetworkConfig


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
