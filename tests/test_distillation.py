"""`ns-train mobile-r2l`: a tiny student distilled from the tiny nas-nerf teacher, end to end."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest
import torch
from nerfstudio.data.scene_box import SceneBox
from support import STUDENT_PSEUDO_VIEWS, ns_command, run_ns, run_until_killed, stock_run, viewer_camera
from torch import Tensor

from nerfstudio_mobile.common.cli import UsageError
from nerfstudio_mobile.common.intrinsics import Intrinsics, without_distortion
from nerfstudio_mobile.common.metrics import image_metrics
from nerfstudio_mobile.common.runs import load_run, read_run_config
from nerfstudio_mobile.export.cli import CoreMLExport, OnnxExport
from nerfstudio_mobile.mobile_r2l.cache import PseudoViewCache
from nerfstudio_mobile.mobile_r2l.configs import mobile_r2l_trainer
from nerfstudio_mobile.mobile_r2l.datamanager import (
    MIN_RAYS_PER_SIDE,
    PseudoViewDataManager,
    PseudoViewDataManagerConfig,
    build_pseudo_view_cache,
    upscale_factors_for,
)
from nerfstudio_mobile.mobile_r2l.model import MobileR2LModel, MobileR2LModelConfig
from nerfstudio_mobile.mobile_r2l.near_plane import geometric_near_range
from nerfstudio_mobile.mobile_r2l.network import LightFieldNetworkConfig
from nerfstudio_mobile.mobile_r2l.optimization import WarmupStepDecaySchedulerConfig
from nerfstudio_mobile.mobile_r2l.teacher import Teacher


def teacher_cache(teacher_run: Path) -> PseudoViewCache:
    (root,) = (teacher_run.parent / "pseudo_views").iterdir()
    return PseudoViewCache.open(root)


def test_student_learns_the_teachers_renders(mobile_r2l_run: Path, nas_nerf_run: Path) -> None:
    config, student, _ = load_run(mobile_r2l_run)
    cache = teacher_cache(nas_nerf_run)
    assert cache.complete() and len(cache) == STUDENT_PSEUDO_VIEWS
    untrained = config.pipeline.setup(device=student.device, test_mode="test").eval()
    meta = cache.meta
    views = [cache.read(i) for i in range(8)]
    cameras = meta.intrinsics.cameras(torch.stack([torch.as_tensor(v.c2w) for v in views]))

    def psnr(model: torch.nn.Module) -> float:
        with torch.no_grad():
            rgb = model.get_outputs(cameras.to(model.device))["rgb"]
        return sum(
            image_metrics(torch.as_tensor(v.rgb) / 255.0, r)["psnr"] for v, r in zip(views, rgb, strict=True)
        ) / len(views)

    before, after = psnr(untrained.model), psnr(student.model)
    assert after > before + 5.0, (before, after)


def test_depth_channel_is_distilled(mobile_r2l_run: Path, nas_nerf_run: Path) -> None:
    _, student, _ = load_run(mobile_r2l_run)
    cache = teacher_cache(nas_nerf_run)
    view, meta = cache.read(0), cache.meta
    camera = meta.intrinsics.cameras(torch.as_tensor(view.c2w)[None])
    depth = student.model.get_outputs_for_camera(camera)["depth"][..., 0]
    teacher_depth = torch.as_tensor(view.depth).float()
    surface = teacher_depth > 0
    relative_error = ((depth[surface] - teacher_depth[surface]).abs() / teacher_depth[surface]).median()
    assert relative_error < 0.25


def test_real_image_batches_carry_the_teachers_depth_at_their_cameras(mobile_r2l_run: Path, nas_nerf_run: Path) -> None:
    """The real images' batches have a depth target too, so the depth head does not drift while they train RGB: the
    teacher's depth at each batch's own cameras, rendered once into a cache in the teacher's run."""
    config = read_run_config(mobile_r2l_run).pipeline.datamanager
    datamanager = PseudoViewDataManager(config)  # training mode: both caches exist, nothing is rendered
    (root,) = (nas_nerf_run.parent / "training_pose_views").iterdir()
    assert PseudoViewCache.open(root).complete()
    cameras, batch = datamanager.real_batch()
    teacher = Teacher.load(nas_nerf_run)
    for index in range(len(cameras)):
        _, depth, _ = teacher.render(without_distortion(cameras[index : index + 1]))
        stored = batch["depth"][index]
        surface = stored > 0  # the cache stores 0 where the teacher saw no surface
        assert surface.float().mean() > 0.1
        torch.testing.assert_close(stored[surface], depth[surface], rtol=2e-3, atol=1e-2)


def test_a_new_student_loads_its_teacher_once_for_both_caches(
    nas_nerf_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A new student renders its pseudo views and the teacher's depth at the training cameras with one teacher: its
    pipeline is built once (a nerfacto teacher on a phone capture reads every image when it loads)."""
    loads = []
    load = Teacher.load.__func__  # type: ignore[attr-defined]
    monkeypatch.setattr(Teacher, "load", classmethod(lambda cls, path: loads.append(path) or load(cls, path)))
    views = tmp_path / "views"
    config = PseudoViewDataManagerConfig(
        teacher_config=nas_nerf_run, num_pseudo_views=2, pseudo_view_scale=2, pseudo_view_dir=views
    )
    datamanager = PseudoViewDataManager(config)  # training mode: both caches are rendered
    assert PseudoViewCache.open(views).complete() and PseudoViewCache.open(Path(f"{views}-training-poses")).complete()
    assert datamanager.training_pose_depths is not None
    assert loads == [nas_nerf_run]


def test_ns_eval_on_the_real_test_split(mobile_r2l_run: Path, tmp_path: Path) -> None:
    output = tmp_path / "eval.json"
    run_ns([ns_command("ns-eval"), "--load-config", str(mobile_r2l_run), "--output-path", str(output)],
           cwd=mobile_r2l_run.parents[4])  # fmt: skip
    results = json.loads(output.read_text())["results"]
    assert results["psnr"] > 13.0 and 0.0 < results["ssim"] <= 1.0


@pytest.mark.parametrize(("height", "width"), [(37, 53), (96, 64)])
def test_viewer_renders_any_resolution_in_one_pass(mobile_r2l_run: Path, height: int, width: int) -> None:
    _, pipeline, _ = load_run(mobile_r2l_run, test_mode="inference")
    outputs = pipeline.model.get_outputs_for_camera(viewer_camera(pipeline, height, width))
    assert outputs["rgb"].shape == (height, width, 3) and outputs["depth"].shape == (height, width, 1)
    assert 0.0 <= outputs["rgb"].min() and outputs["rgb"].max() <= 1.0


def test_frames_finer_than_training_render_at_the_trained_spacing_and_upsample(mobile_r2l_run: Path) -> None:
    """A viewer frame 3× the training size is the training-size render upsampled (the student never renders rays
    finer than it learnt, where its super-resolution shows a checkerboard); frames at or below the training size,
    and every frame with the option off, render natively. The finest spacing is kept in the checkpoint."""
    _, pipeline, _ = load_run(mobile_r2l_run, test_mode="inference")
    model = pipeline.model
    camera = pipeline.datamanager.train_dataparser_outputs.cameras[0:1]
    size = int(camera.height.item())
    (checkpoint,) = (mobile_r2l_run.parent / "nerfstudio_models").glob("step-*.ckpt")
    stored = torch.load(checkpoint, map_location="cpu")["pipeline"]["_model.finest_focal"]
    assert float(stored) == pytest.approx(float(camera.fx.item())) == pytest.approx(float(model.finest_focal))
    small = model.get_outputs_for_camera(viewer_camera(pipeline, size, size))["rgb"]
    large = model.get_outputs_for_camera(viewer_camera(pipeline, 3 * size, 3 * size))["rgb"]
    expected = torch.nn.functional.interpolate(small.permute(2, 0, 1)[None], scale_factor=3, mode="bicubic")
    assert torch.allclose(large, expected[0].permute(1, 2, 0).clamp(0, 1), atol=1e-5)
    half = model.get_outputs_for_camera(viewer_camera(pipeline, size // 2, size // 2))["rgb"]
    model.config.upsample_finer_frames = False
    assert torch.equal(model.get_outputs_for_camera(viewer_camera(pipeline, size // 2, size // 2))["rgb"], half)
    native = model.get_outputs_for_camera(viewer_camera(pipeline, 3 * size, 3 * size))["rgb"]
    assert (native - large).abs().max() > 0.05
    # nerfstudio's eval loops end in training mode: a camera render stays an inference render (no jittered rays)
    model.config.upsample_finer_frames = True
    model.train()
    assert torch.equal(model.get_outputs_for_camera(viewer_camera(pipeline, 3 * size, 3 * size))["rgb"], large)
    assert model.training


def test_teacher_stays_out_of_the_student_checkpoint(mobile_r2l_run: Path) -> None:
    _, pipeline, _ = load_run(mobile_r2l_run, test_mode="inference")
    (checkpoint,) = (mobile_r2l_run.parent / "nerfstudio_models").glob("step-*.ckpt")
    state = torch.load(checkpoint, map_location="cpu")["pipeline"]
    assert all(key.startswith("_model.") for key in state), [k for k in state if not k.startswith("_model.")][:5]
    stored = sum(v.numel() for k, v in state.items() if k.startswith("_model.network.") and "running" not in k
                 and "num_batches" not in k)  # fmt: skip
    assert stored == sum(p.numel() for p in pipeline.model.network.parameters())


def test_generation_resumes_after_a_kill_and_shards_into_one_cache(nas_nerf_run: Path, tmp_path: Path) -> None:
    """Two shards in two processes, one of them killed mid-way and restarted: the cache ends complete and
    byte-identical to one rendered in a single uninterrupted run."""
    num_views = 8
    args = ["--datamanager.teacher-config", str(nas_nerf_run), "--datamanager.num-pseudo-views", str(num_views),
            "--datamanager.pseudo-view-scale", "2"]  # fmt: skip
    reference = tmp_path / "apart" / "ref"  # not beside the sharded cache, which would take its views
    reference_config = PseudoViewDataManagerConfig(
        teacher_config=nas_nerf_run, num_pseudo_views=num_views, pseudo_view_scale=2, pseudo_view_dir=reference
    )
    build_pseudo_view_cache(
        reference_config, PseudoViewDataManager(reference_config, test_mode="inference"), shard=0, num_shards=1
    )
    sharded = tmp_path / "sharded"
    command = [ns_command("ns-mobile-pseudo-views"), *args, "--datamanager.pseudo-view-dir", str(sharded)]
    views = sharded / "views"
    run_until_killed([*command, "--shard", "1", "--num-shards", "2"], tmp_path, {},
                     until=lambda: len(list(views.glob("*.npz"))) >= 2)  # fmt: skip
    killed_with = len(list(views.glob("*.npz")))
    assert 0 < killed_with < num_views // 2, "the kill should land mid-way"
    run_ns([*command, "--shard", "0", "--num-shards", "2"], cwd=tmp_path)
    run_ns([*command, "--shard", "1", "--num-shards", "2"], cwd=tmp_path)
    reference_files = sorted(p.name for p in (reference / "views").iterdir())
    assert sorted(p.name for p in views.iterdir()) == reference_files and len(reference_files) == num_views
    for name in reference_files:
        assert (views / name).read_bytes() == (reference / "views" / name).read_bytes(), name


def test_more_pseudo_views_of_a_teacher_render_only_the_new_ones(nas_nerf_run: Path, tmp_path: Path) -> None:
    """A student asking the teacher for 5 views beside a cache of its first 3 takes those (hard links) and renders 2;
    the cache is byte for byte one rendered from scratch."""

    def cache_of(views: int, root: Path) -> PseudoViewCache:
        config = PseudoViewDataManagerConfig(
            teacher_config=nas_nerf_run, num_pseudo_views=views, pseudo_view_scale=2, pseudo_view_dir=root
        )
        datamanager = PseudoViewDataManager(config, test_mode="inference")
        return build_pseudo_view_cache(config, datamanager, shard=0, num_shards=1)

    cache_of(3, tmp_path / "caches" / "three")
    grown = cache_of(5, tmp_path / "caches" / "five")
    scratch = cache_of(5, tmp_path / "alone" / "five")
    assert [grown.view_path(i).stat().st_nlink for i in range(5)] == [2, 2, 2, 1, 1]
    assert [grown.view_path(i).read_bytes() == scratch.view_path(i).read_bytes() for i in range(5)] == [True] * 5


@pytest.mark.unit
def test_missing_or_wrong_teacher_is_explained(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="pass --pipeline.datamanager.teacher-config"):
        PseudoViewDataManager(PseudoViewDataManagerConfig())
    with pytest.raises(UsageError, match="does not exist"):
        PseudoViewDataManager(PseudoViewDataManagerConfig(teacher_config=tmp_path / "nope" / "config.yml"))


def distil_tiny_student(teacher: Path, workdir: Path, steps: int, finetune_steps: int, views: int, batch: int) -> Path:
    """config.yml of a one-block, width-16 student distilled from `teacher` by the real `ns-train mobile-r2l` with
    nothing but the teacher's config.yml and sizes."""
    run_ns(
        [ns_command("ns-train"), "mobile-r2l", "--pipeline.datamanager.teacher-config", str(teacher),
         "--output-dir", "outputs", "--experiment-name", "scene", "--timestamp", "run", "--vis", "tensorboard",
         "--max-num-iterations", str(steps), "--steps-per-save", str(steps),
         "--pipeline.datamanager.finetune-steps", str(finetune_steps), "--pipeline.datamanager.num-pseudo-views",
         str(views), "--pipeline.datamanager.images-per-batch", str(batch), "--pipeline.model.network.num-blocks", "1",
         "--pipeline.model.network.width", "16"],
        cwd=workdir,
    )  # fmt: skip
    return workdir / "outputs" / "scene" / "mobile-r2l" / "run" / "config.yml"


def test_a_stock_nerfacto_teacher_of_a_phone_capture_distils_with_no_extra_flags(
    nerfacto_run: Path, tmp_path: Path
) -> None:
    """`ns-train nerfacto ... nerfstudio-data --data <capture>` keeps its scene in the dataparser and ignores the
    base collider's 2/6: the student finds the scene, takes near from the teacher's depth and its far plane, samples
    the contracted space nerfacto sees, and learns from undistorted (pinhole) real images (no AlexNet weights here:
    LPIPS off, training still works)."""
    student_run = distil_tiny_student(nerfacto_run, tmp_path, steps=40, finetune_steps=10, views=8, batch=4)
    _, student, _ = load_run(student_run)
    near, far = student.model.near_far.tolist()
    assert student.model.encoding_config.space == "contracted"
    assert far == pytest.approx(1000.0) and 0.0 < near < far and (near, far) != (2.0, 6.0)
    assert near == pytest.approx(teacher_cache(nerfacto_run).meta.extra["near_far"][0])  # estimated once, cached
    # pseudo views, real images and the student share the undistorted pinhole camera (cropped to valid pixels)
    distorted = Intrinsics.from_camera(student.datamanager.train_dataparser_outputs.cameras[0:1])
    pinhole = student.datamanager.pinhole
    assert pinhole != distorted and pinhole.width <= 48 and pinhole.height <= 48
    cache = teacher_cache(nerfacto_run)
    assert cache.meta.teacher["method"] == "nerfacto" and cache.complete()
    assert cache.meta.intrinsics == pinhole
    camera, batch = student.datamanager.fixed_indices_eval_dataloader[0]
    assert batch["image"].shape[:2] == (pinhole.height, pinhole.width)
    rgb = student.model.get_outputs_for_camera(camera)["rgb"]
    assert rgb.shape == (pinhole.height, pinhole.width, 3) and torch.isfinite(rgb).all()
    # the contracted sampling is in the sidecar and inside the pose graph: each package matches the torch student
    exports = [
        OnnxExport(student_run, tmp_path / "onnx", ("rays", "pose"), (40, 40)),
        CoreMLExport(student_run, tmp_path / "coreml", ("pose",), (40, 40)),
    ]
    for exported in [file for export in exports for file in export.run()]:
        assert exported.verification.passed, (exported.path.name, exported.verification.failures)
        sidecar = json.loads(exported.path.with_suffix(".json").read_text())
        assert sidecar["rays"]["space"] == "contracted" and "disparity" in sidecar["rays"]["channel_order"]


def test_a_stock_depth_nerfacto_teacher_of_an_rgbd_capture_distils_with_no_extra_flags(
    phone_capture: Path, tmp_path: Path
) -> None:
    """`ns-train depth-nerfacto ... nerfstudio-data --data <capture>` trains nerfacto under the capture's depth maps
    (offline: without them it would fetch a monocular depth network); the student needs nothing but its config.yml,
    and, as for nerfacto, samples its contracted space from a near plane the training cameras bound."""
    teacher_run = stock_run("depth-nerfacto", "nerfstudio-data", phone_capture, tmp_path / "teacher", 20)
    _, student, _ = load_run(distil_tiny_student(teacher_run, tmp_path, steps=20, finetune_steps=5, views=4, batch=2))
    cache = teacher_cache(teacher_run)
    assert cache.meta.teacher["method"] == "depth-nerfacto" and cache.complete()
    assert student.model.encoding_config.space == "contracted"
    near, far = student.model.near_far.tolist()
    assert far == pytest.approx(1000.0) and near == pytest.approx(cache.meta.extra["near_far"][0])
    floor, cap = geometric_near_range(student.datamanager.train_dataparser_outputs.cameras.camera_to_worlds, 0.05)
    assert floor <= near * (1 + 1e-6) and near <= cap * (1 + 1e-6)
    camera, _ = student.datamanager.fixed_indices_eval_dataloader[0]
    assert torch.isfinite(student.model.get_outputs_for_camera(camera)["rgb"]).all()


def test_small_frames_get_a_finer_ray_grid_and_the_papers_keep_theirs() -> None:
    # the paper's 800² (360) and LLFF's 1008×756 (forward-facing) frames keep MobileR2L's 8× and 12×
    assert upscale_factors_for("360", 800, 800, MIN_RAYS_PER_SIDE) == (2, 2, 2)
    assert upscale_factors_for("forward-facing", 756, 1008, MIN_RAYS_PER_SIDE) == (2, 2, 3)
    # the demo's 96² and lego's 128²: 24² and 32² rays upscaled 4×; fern's 168×126: 28×21 rays upscaled 6×
    assert upscale_factors_for("360", 96, 96, MIN_RAYS_PER_SIDE) == (1, 2, 2)
    assert upscale_factors_for("360", 128, 128, MIN_RAYS_PER_SIDE) == (1, 2, 2)
    assert upscale_factors_for("forward-facing", 126, 168, MIN_RAYS_PER_SIDE) == (1, 2, 3)
    # tiny frames: only the last stage upsamples; 0 keeps the paper's factors at any size
    assert upscale_factors_for("360", 16, 16, MIN_RAYS_PER_SIDE) == (1, 1, 2)
    assert upscale_factors_for("360", 96, 96, 0) == (2, 2, 2)


def test_a_student_of_small_frames_gets_the_finer_ray_grid(nas_nerf_run: Path) -> None:
    def factors(**settings: float) -> tuple[int, ...]:
        config = PseudoViewDataManagerConfig(teacher_config=nas_nerf_run, **settings)  # type: ignore[arg-type]
        datamanager = PseudoViewDataManager(config, test_mode="inference")
        scene = datamanager.train_dataset.metadata["mobile_r2l"]  # what the student's model is built from
        assert scene["upscale_factors"] == datamanager.upscale_factors
        return datamanager.upscale_factors

    assert factors() == (1, 1, 2)  # the tests' 48² frames: 24² rays
    assert factors(min_rays_per_side=0) == (2, 2, 2)  # the paper's
    assert factors(pseudo_view_scale=2) == (1, 2, 2)  # 96² pseudo views: 24² rays, as the demo


def test_a_checkpoint_of_other_upscale_factors_renders_as_trained_and_resumes_only_when_told() -> None:
    def student(factors: tuple[int, ...]) -> MobileR2LModel:
        config = MobileR2LModelConfig(network=LightFieldNetworkConfig(width=16, num_blocks=1), fastest_cpu_engine=False)
        return config.setup(
            scene_box=SceneBox(torch.tensor([[-1.0] * 3, [1.0] * 3])), num_train_data=1,
            metadata={"mobile_r2l": {"upscale_factors": factors, "near_far": (0.5, 3.0)}},
        )  # fmt: skip

    trained = student((2, 2, 2)).eval()  # e.g. a run from before the student fitted its ray grid to the frame size
    camera = Intrinsics(40.0, 40.0, 24.0, 24.0, 48, 48).cameras(torch.eye(4)[None, :3])
    expected = trained.get_outputs_for_camera(camera)["rgb"]
    loaded = student((1, 1, 2)).eval()  # what today's defaults build for 48² frames
    loaded.load_state_dict(trained.state_dict())
    assert loaded.upscale == 8
    assert torch.equal(loaded.get_outputs_for_camera(camera)["rgb"], expected)
    resuming = student((1, 1, 2))  # training: its optimizer would hold the parameters of the network it was built with
    with pytest.raises(UsageError, match="--pipeline.datamanager.upscale-factors 2 2 2"):
        resuming.load_state_dict(trained.state_dict())


def test_forward_facing_student_upscales_12x_and_renders_any_size() -> None:
    config = MobileR2LModelConfig(network=LightFieldNetworkConfig(width=16, num_blocks=1))
    model = config.setup(
        scene_box=SceneBox(torch.tensor([[-1.0] * 3, [1.0] * 3])), num_train_data=1,
        metadata={"mobile_r2l": {"upscale_factors": (2, 2, 3), "near_far": (0.5, 3.0)}},
    ).eval()  # fmt: skip
    assert model.upscale == 12
    camera = Intrinsics(60.0, 60.0, 35.0, 25.0, 70, 50).cameras(torch.eye(4)[None, :3])
    encoded, size = model.encode(camera, jitter=False)
    assert encoded.shape == (1, 312, 5, 6) and size == (50, 70)  # ceil(50/12), ceil(70/12)
    outputs = model.get_outputs_for_camera(camera)
    assert outputs["rgb"].shape == (50, 70, 3) and outputs["depth"].shape == (50, 70, 1)


def test_depth_outliers_of_a_contracted_teacher_cannot_outweigh_its_surfaces() -> None:
    """A nerfacto teacher's pseudo views hold floaters far in front of the surface (5 cm before 1 m on the fox
    capture). As squared relative error such a pixel weighed hundreds of surface pixels and diverged a student of
    fox; each pixel now weighs less than the depth weight however far off, and a near miss still pulls."""
    model = MobileR2LModelConfig(network=LightFieldNetworkConfig(width=16, num_blocks=1)).setup(
        scene_box=SceneBox(torch.tensor([[-1.0] * 3, [1.0] * 3])), num_train_data=1,
        metadata={"mobile_r2l": {"near_far": (0.4, 1000.0), "ray_space": "contracted"}},
    )  # fmt: skip
    assert model.encoding_config.space == "contracted"
    predicted = torch.ones(1, 2, 2, 1, requires_grad=True)  # a student that sees the surface at 1 m everywhere
    outputs = {"rgb": torch.zeros(1, 2, 2, 3), "depth": predicted}

    def depth_loss(target: float) -> Tensor:
        batch = {"image": torch.zeros(1, 2, 2, 3), "depth": torch.full((1, 2, 2), target)}
        return model.get_loss_dict(outputs, batch)["depth_loss"]

    assert depth_loss(0.05) < model.config.depth_loss_weight  # floaters only: 20× off
    (gradient,) = torch.autograd.grad(depth_loss(1.1), predicted)
    assert (gradient < 0).all()  # 10 % short: pushed further


@pytest.mark.parametrize("far_where_no_surface", [True, False])
def test_an_empty_background_is_learnt_at_the_far_plane(far_where_no_surface: bool) -> None:
    """Where the teacher saw no surface (depth 0 in the cache) a bounded scene's student learns the far plane (by
    default), so its depth map does not put the empty background in front of the scene; off, those pixels are
    skipped. A contracted scene skips them either way."""
    config = MobileR2LModelConfig(network=LightFieldNetworkConfig(width=16, num_blocks=1),
                                  far_where_no_surface=far_where_no_surface)  # fmt: skip
    scene_box = SceneBox(torch.tensor([[-1.0] * 3, [1.0] * 3]))
    bounded = config.setup(scene_box=scene_box, num_train_data=1, metadata={"mobile_r2l": {"near_far": (2.0, 6.0)}})
    unbounded = {"mobile_r2l": {"near_far": (0.4, 1000.0), "ray_space": "contracted"}}
    contracted = config.setup(scene_box=scene_box, num_train_data=1, metadata=unbounded)
    batch = {"image": torch.zeros(1, 1, 2, 3), "depth": torch.tensor([[[3.0, 0.0]]])}  # a surface, then nothing

    def depth_loss(model: MobileR2LModel, background: float) -> float:
        outputs = {"rgb": torch.zeros(1, 1, 2, 3), "depth": torch.tensor([[[[3.0], [background]]]])}
        return float(model.get_loss_dict(outputs, batch)["depth_loss"])

    assert depth_loss(bounded, 6.0) == 0.0
    assert (depth_loss(bounded, 2.5) > 0.0) == far_where_no_surface  # the background drawn near
    assert depth_loss(contracted, 1000.0) == depth_loss(contracted, 1.0) == 0.0


def test_the_edge_loss_charges_a_blur_that_mse_forgives() -> None:
    """Off by default (the paper's MSE only). On, a blurred frame costs more than one with the same MSE whose edges
    are intact (a brightness offset): what the student gets for keeping the teacher's edges."""
    scene_box = SceneBox(torch.tensor([[-1.0] * 3, [1.0] * 3]))
    network = LightFieldNetworkConfig(width=16, num_blocks=1)
    cells = torch.arange(32)[:, None] // 4 + torch.arange(32)[None, :] // 4
    target = (cells % 2).float()[None, :, :, None].expand(1, 32, 32, 3)  # a checkerboard of 4-pixel squares
    blurred = torch.nn.functional.avg_pool2d(target.permute(0, 3, 1, 2), 3, stride=1, padding=1,
                                             count_include_pad=False).permute(0, 2, 3, 1)  # fmt: skip
    offset = target + torch.mean((blurred - target) ** 2).sqrt()  # the blur's MSE, every edge kept
    batch = {"image": target}

    paper = MobileR2LModelConfig(network=network).setup(scene_box=scene_box, num_train_data=1)
    assert set(paper.get_loss_dict({"rgb": blurred}, batch)) == {"rgb_loss"}
    model = MobileR2LModelConfig(network=network, edge_loss_weight=0.5).setup(scene_box=scene_box, num_train_data=1)
    blur_losses, offset_losses = (model.get_loss_dict({"rgb": frame}, batch) for frame in (blurred, offset))
    assert blur_losses["rgb_loss"] == pytest.approx(float(offset_losses["rgb_loss"]), rel=1e-4)
    assert float(offset_losses["edge_loss"]) == pytest.approx(0.0, abs=1e-6)
    assert float(blur_losses["edge_loss"]) > 0.05


def learning_rates(config: WarmupStepDecaySchedulerConfig, peak: float = 5e-4) -> list[float]:
    """The rate of each of `config.max_steps` steps."""
    optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=peak)
    scheduler = config.setup().get_scheduler(optimizer, lr_init=peak)
    rates = []
    for _ in range(config.max_steps):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return rates


def test_learning_rate_warms_up_then_steps_down() -> None:
    rates = learning_rates(WarmupStepDecaySchedulerConfig(max_steps=1000))
    assert rates[0] == pytest.approx(1e-4) and rates[100] == pytest.approx(3e-4) and rates[200] == pytest.approx(5e-4)
    assert rates[499] == pytest.approx(5e-4) and rates[500] == pytest.approx(5e-5) and rates[999] == pytest.approx(5e-6)


def test_cosine_decay_falls_smoothly_to_the_final_rate_of_the_steps() -> None:
    rates = learning_rates(WarmupStepDecaySchedulerConfig(max_steps=1000, decay="cosine"))
    assert rates[100] == pytest.approx(3e-4) and rates[200] == pytest.approx(5e-4)  # the same warm-up
    assert rates[600] == pytest.approx((5e-4 + 5e-6) / 2)  # half-way down, half-way through the decay
    assert all(later < earlier for earlier, later in itertools.pairwise(rates[200:]))
    assert rates[999] == pytest.approx(5e-6, rel=1e-3)
    assert mobile_r2l_trainer(1000).optimizers["network"]["scheduler"].decay == "cosine"


@pytest.mark.unit
@pytest.mark.parametrize("native_bf16", [False, True])
def test_the_student_trains_in_bf16_only_where_the_cpu_runs_bf16_natively(
    monkeypatch: pytest.MonkeyPatch, native_bf16: bool
) -> None:
    """Emulated bf16 trains about 20× slower than fp32 (an AVX2-only EPYC): there the student stays fp32."""
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: native_bf16)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    model = MobileR2LModelConfig(network=LightFieldNetworkConfig(width=16, num_blocks=1)).setup(
        scene_box=SceneBox(torch.tensor([[-1.0] * 3, [1.0] * 3])), num_train_data=1,
        metadata={"mobile_r2l": {"near_far": (2.0, 6.0)}},
    )  # fmt: skip
    out = model.run_network(torch.randn(1, model.network_config.in_channels, 2, 2))
    assert out.dtype == (torch.bfloat16 if native_bf16 else torch.float32)
