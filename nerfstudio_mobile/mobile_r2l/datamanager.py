"""The distillation datamanager: pseudo views rendered by a teacher, then the real training images.

    teacher config.yml ─► its dataparser on its data ─► training cameras (teacher's normalised frame)
                                                          │
             view sampler (360 sphere / forward-facing box) ◄┘
                     │ pose of view i = f(seed, i); its window (whole frame, or a crop / zoom: ViewCrops) too
                     ▼
    teacher renders RGB + depth ─► PseudoViewCache (sharded, resumable, uint8 / fp16)
                     ▼
    training batches: B pseudo views (or, every 1/`real_image_share`-th step, B real training images)
                      ... then B real training images for the last `finetune_steps`
    teacher renders depth at the training cameras ─► the real images' depth targets (build_training_pose_cache)

Evaluation (ns-eval, the viewer) uses the dataset's real val/test split, exactly as the teacher's.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Literal

import torch
from nerfstudio.cameras.cameras import Cameras
from nerfstudio.data.datamanagers.full_images_datamanager import (
    FullImageDatamanager,
    FullImageDatamanagerConfig,
)
from nerfstudio.data.datasets.base_dataset import InputDataset
from nerfstudio.engine.callbacks import TrainingCallback, TrainingCallbackAttributes
from nerfstudio.engine.trainer import TrainerConfig
from nerfstudio.utils.rich_utils import CONSOLE
from torch import Tensor

from nerfstudio_mobile.common.cli import UsageError
from nerfstudio_mobile.common.intrinsics import Intrinsics, without_distortion
from nerfstudio_mobile.common.runs import run_data
from nerfstudio_mobile.mobile_r2l.cache import (
    CacheMeta,
    PseudoViewCache,
    PseudoViewDataset,
    caches_beside,
    generate_views,
)
from nerfstudio_mobile.mobile_r2l.teacher import (
    TeacherError,
    TeacherRun,
    collider_near_far,
    pinhole_intrinsics,
    read_teacher_config,
    teacher_ray_space,
)
from nerfstudio_mobile.mobile_r2l.views import PseudoViewSamplerConfig, ViewCrops, check_crops, make_view_sampler

# MobileR2L's super-resolution factors per scene layout: 8× for 360 scenes, 12× for forward-facing ones.
UPSCALE_FACTORS: dict[str, tuple[int, ...]] = {"360": (2, 2, 2), "forward-facing": (2, 2, 3)}
TRAINING_POSES = "training-poses"
"""The layout of a cache of the teacher's renders at the training cameras (`build_training_pose_cache`)."""
MIN_RAYS_PER_SIDE = 20
"""The default of `min_rays_per_side`: at the demo's 96×96, a 24² ray grid upscaled 4× gave a better student than 12²
upscaled 8× (benchmarks/results/distill_ablation_now.md)."""


def upscale_factors_for(layout: str, height: int, width: int, min_rays: int) -> tuple[int, ...]:
    """The layout's factors, with leading stages set to 1× (they keep the size) until the ray grid has at least
    `min_rays` rays along the frame's short side, or only the last stage upsamples. The paper's frames (800², LLFF's
    1008×756) keep theirs; small ones get a finer ray grid instead of more upscaling."""
    factors = list(UPSCALE_FACTORS[layout])
    for stage in range(len(factors) - 1):
        if min(height, width) / math.prod(factors) >= min_rays:
            break
        factors[stage] = 1
    return tuple(factors)


@dataclass
class PseudoViewDataManagerConfig(FullImageDatamanagerConfig):
    """Distil from a trained nerfstudio run: its pseudo views, then its real training images."""

    _target: type = field(default_factory=lambda: PseudoViewDataManager)
    teacher_config: Path | None = None
    """config.yml of the trained teacher (any nerfstudio method). Its dataparser and data are used as-is."""
    num_pseudo_views: int = 10_000
    """Pseudo views the teacher renders (paper: 10k for 360 scenes, 8k forward-facing)."""
    pseudo_view_dir: Path | None = None
    """Cache directory; default: <teacher run>/pseudo_views/<layout>-<N>-<H>x<W>[-of<frame>][-zoom<levels>]-seed<seed>.
    Reused across runs."""
    pseudo_view_scale: float = 1.0
    """Resolution of the pseudo views relative to the training images (1.0 = full resolution, as the paper)."""
    crop_fraction: float = 1.0
    """Each pseudo view covers this fraction of the frame's sides, at a random place on the student's ray grid
    (1.0 = whole frames, as the paper): the same teacher pixels buy 1/fraction² times more poses."""
    zoom_levels: tuple[float, ...] = (1.0,)
    """Each pseudo view is zoomed by one of these, drawn per view (repeat one to weight it): a window of 1/z of the
    frame rendered at z× the focal length, same pixels, z× finer rays, as a viewer at z× the training resolution asks
    for (1.0 = the training resolution only, as the paper). Combines with crop-fraction."""
    sampler: PseudoViewSamplerConfig = field(default_factory=PseudoViewSamplerConfig)
    """Where pseudo views are placed (layout auto-detected from the training cameras)."""
    grid_shifts: bool = False
    """Each training batch (pseudo views and real images alike) sees its frames through a window one
    super-resolution block smaller than the frame, shifted by a random whole number of pixels inside a block
    (0 to s - 1 along each axis): the student's ray grid moves with it, so one teacher render gives s² distinct ray
    grids instead of one (False: every batch sees the whole frame, the ray grid through the block centres, as the
    paper)."""
    images_per_batch: int = 54
    """Whole images per training step (paper: 54 for 360 scenes, 36 forward-facing)."""
    finetune_steps: int = 1000
    """The last steps of training use the real training images instead of pseudo views."""
    real_image_share: float = 0.0
    """Before fine-tuning, this share of the steps, spread evenly, trains on the real training images instead of
    pseudo views: views the teacher need not render, and the ground truth (0: pseudo views only until fine-tuning,
    as the paper)."""
    depth_at_training_poses: bool = True
    """The teacher also renders its depth at the training cameras (once, cached beside the pseudo views), so the real
    images' batches carry a depth target too: without one the depth head drifts while they train RGB alone (a lego
    student's depth came out 8% near after its real-image fine-tuning; benchmarks/results/distill_ablation_depth-at-
    training-poses.md). False: real-image batches have no depth loss, as the paper."""
    near: float | None = None
    """Student near plane; default: the teacher's collider near, else estimated from its depth renders."""
    far: float | None = None
    """Student far plane; default as for near."""
    upscale_factors: tuple[int, ...] | None = None
    """Super-resolution factors; default (2, 2, 2) for 360 scenes and (2, 2, 3) for forward-facing ones, with leading
    stages at 1× where the pseudo views are too small for `min_rays_per_side`."""
    min_rays_per_side: int = MIN_RAYS_PER_SIDE
    """With the default upscale factors, the fewest rays along the pseudo views' short side (0: the paper's factors
    at any size)."""
    ram_budget_gb: float = 8.0
    """Decoded pseudo views kept in RAM; beyond it they are decoded from disk on access."""

    def check(self) -> TrainerConfig:
        """Refuse settings that cannot be distilled (a UsageError that says what to do); the teacher's config."""
        try:
            check_crops(self.crop_fraction, self.zoom_levels)
        except ValueError as error:
            raise UsageError(
                f"{error}: pass --pipeline.datamanager.crop-fraction in (0, 1] and --pipeline.datamanager.zoom-levels "
                "of 1 or more."
            ) from error
        if not 0 <= self.real_image_share < 1:
            raise UsageError(
                f"--pipeline.datamanager.real-image-share {self.real_image_share} must lie in [0, 1): the share of "
                "steps before fine-tuning on the real training images (use finetune-steps for all of them)."
            )
        if (self.near is None) != (self.far is None):
            raise TeacherError("pass both --pipeline.datamanager.near and --pipeline.datamanager.far, or neither.")
        return read_teacher_config(self.teacher_config)

    def adopt_teacher(self) -> TrainerConfig:
        """The student lives in the teacher's world: same dataparser, same data, same normalisation."""
        teacher = self.check()
        self.teacher_config = Path(self.teacher_config).resolve()  # type: ignore[arg-type]
        self.dataparser = teacher.pipeline.datamanager.dataparser
        self.data = run_data(teacher)
        if self.data is None or not Path(self.data).exists():
            raise TeacherError(
                f"The teacher's data ({self.data}) no longer exists: put the scene back there or edit "
                f"pipeline.datamanager.data (or its dataparser's data) in {self.teacher_config}."
            )
        return teacher


class PseudoViewDataManager(FullImageDatamanager[InputDataset]):
    config: PseudoViewDataManagerConfig

    def __init__(
        self,
        config: PseudoViewDataManagerConfig,
        device: torch.device | str = "cpu",
        test_mode: Literal["test", "val", "inference"] = "val",
        world_size: int = 1,
        local_rank: int = 0,
        **kwargs,
    ) -> None:
        teacher_config = config.adopt_teacher()
        super().__init__(config, device, test_mode, world_size, local_rank, **kwargs)
        self.pinhole = pinhole_intrinsics(self.train_dataparser_outputs.cameras)
        self.ray_space = teacher_ray_space(teacher_config)
        train_c2w = self.train_dataparser_outputs.cameras.camera_to_worlds
        self.view_sampler = make_view_sampler(config.sampler, train_c2w)
        explicit = (config.near, config.far) if config.near is not None and config.far is not None else None
        scene_near_far = self.train_dataparser_outputs.metadata.get("near_far")  # e.g. llff-data's bounds
        self.near_far: tuple[float, float] | None = explicit or scene_near_far or collider_near_far(teacher_config)
        self.finetune_from = float("inf")  # set from the trainer's step budget in get_training_callbacks
        self.generator = torch.Generator().manual_seed(config.sampler.seed)
        self.pseudo_views: PseudoViewDataset | None = None
        self.training_pose_depths: Tensor | None = None
        """The teacher's depth [N, H, W] at each of `real_image_indices`' cameras (depth_at_training_poses)."""
        scale = config.pseudo_view_scale
        self.frame = self.pinhole.resized(round(self.pinhole.width * scale), round(self.pinhole.height * scale))
        self.upscale_factors = config.upscale_factors or upscale_factors_for(
            self.view_sampler.layout, self.frame.height, self.frame.width, config.min_rays_per_side
        )
        self.crops = None
        if config.crop_fraction < 1 or any(zoom != 1 for zoom in config.zoom_levels):
            block, seed = math.prod(self.upscale_factors), config.sampler.seed
            self.crops = ViewCrops.fit(self.frame, config.crop_fraction, block, seed, config.zoom_levels)
        if test_mode == "val":  # training: make sure every pseudo view exists, then read them
            teacher_run = TeacherRun(config.teacher_config)
            cache = build_pseudo_view_cache(config, self, shard=0, num_shards=1, teacher_run=teacher_run)
            near, far = cache.meta.extra["near_far"]
            self.near_far = (near, far)
            self.pseudo_views = PseudoViewDataset(cache, ram_budget_bytes=int(config.ram_budget_gb * 2**30))
            if config.depth_at_training_poses:
                depths = build_training_pose_cache(config, self, shard=0, num_shards=1, teacher_run=teacher_run)
                self.training_pose_depths = torch.stack([depths.read(i).depth for i in range(len(depths))])
        # The model reads these when the pipeline builds it (metadata is nerfstudio's channel for that).
        self.train_dataset.metadata["mobile_r2l"] = {
            "layout": self.view_sampler.layout,
            "upscale_factors": self.upscale_factors,
            "near_far": self.near_far,
            "ray_space": self.ray_space,
            "pinhole": asdict(self.pinhole),
            # the finest rays it trains on: zoomed pseudo views', or the real images' in fine-tuning
            "finest_focal": max(self.frame.fx * max(config.zoom_levels), self.pinhole.fx),
        }

    def get_training_callbacks(self, attributes: TrainingCallbackAttributes) -> list[TrainingCallback]:
        trainer = attributes.trainer
        assert trainer is not None
        # nerfstudio trains max_num_iterations steps after the one it resumed from: fine-tune the last ones of those
        end = trainer._start_step + trainer.config.max_num_iterations
        self.finetune_from = max(trainer._start_step, end - self.config.finetune_steps)
        return []

    def get_train_rays_per_batch(self) -> int:
        """Pixels per step (the trainer's rays/s column)."""
        if self.pseudo_views is None:
            return super().get_train_rays_per_batch()
        return self.config.images_per_batch * self.pseudo_views.cache.meta.height * self.pseudo_views.cache.meta.width

    def next_train(self, step: int) -> tuple[Cameras, dict[str, Tensor]]:  # type: ignore[override]
        finetuning = step >= self.finetune_from
        real = self.pseudo_views is None or finetuning or is_real_step(step, self.config.real_image_share)
        cameras, batch = self.real_batch() if real else self.pseudo_batch()
        if not self.config.grid_shifts:
            return cameras, batch
        block = math.prod(self.upscale_factors)
        shift_x, shift_y = torch.randint(block, (2,), generator=self.generator).tolist()
        return shifted_window(cameras, batch, shift_x, shift_y, block)

    def pseudo_batch(self) -> tuple[Cameras, dict[str, Tensor]]:
        assert self.pseudo_views is not None
        views = self.pseudo_views.sample(self.config.images_per_batch, self.generator)
        meta = self.pseudo_views.cache.meta
        cameras = (
            self.crops.cameras(views.indices.tolist(), views.c2w) if self.crops else meta.intrinsics.cameras(views.c2w)
        )
        batch = {"image": views.rgb.float() / 255.0, "depth": views.depth.float()}
        return cameras.to(self.device), {name: value.to(self.device) for name, value in batch.items()}

    @cached_property
    def real_image_indices(self) -> list[int]:
        """The training images real-image batches draw from: those of the first image's size (a batch is one size)."""
        size = self.cached_train[0]["image"].shape[:2]
        return [i for i, data in enumerate(self.cached_train) if data["image"].shape[:2] == size]

    def real_batch(self) -> tuple[Cameras, dict[str, Tensor]]:
        """Real training images of one size (the first image's), with the teacher's depth at their cameras when it
        was rendered (depth_at_training_poses)."""
        same_size = self.real_image_indices
        count = min(self.config.images_per_batch, len(same_size))
        positions = torch.randperm(len(same_size), generator=self.generator)[:count]
        chosen = [same_size[i] for i in positions.tolist()]
        batch = {"image": torch.stack([self.cached_train[i]["image"][..., :3] for i in chosen]).float()}
        if self.training_pose_depths is not None:
            batch["depth"] = self.training_pose_depths[positions].float()
        cameras = self.train_cameras[torch.tensor(chosen)]
        return cameras.to(self.device), {name: value.to(self.device) for name, value in batch.items()}


def is_real_step(step: int, share: float) -> bool:
    """Whether `step` is one of the `share` of steps that train on the real images: a pure function of the step (a
    resumed run draws the same kinds of batches), spread evenly (every 1/share-th step; share 0.25: steps 3, 7, ...)."""
    return math.floor((step + 1) * share) > math.floor(step * share)


def shifted_window(
    cameras: Cameras, batch: dict[str, Tensor], shift_x: int, shift_y: int, block: int
) -> tuple[Cameras, dict[str, Tensor]]:
    """The window of a batch's frames (one size) that starts `shift_x`, `shift_y` pixels in and is one `block` smaller
    along each side: cameras with the principal point moved and the size cut to match, images and depths cropped.
    The model puts its ray grid through the window's block centres, so the rays move with the shift."""
    height, width = int(cameras.height.flatten()[0]), int(cameras.width.flatten()[0])
    if not (0 <= shift_x < block and 0 <= shift_y < block) or min(height, width) <= block:
        raise ValueError(f"shift ({shift_x}, {shift_y}) must lie inside a {block}-pixel block of a larger frame")
    window = Cameras(
        camera_to_worlds=cameras.camera_to_worlds,
        fx=cameras.fx,
        fy=cameras.fy,
        cx=cameras.cx - shift_x,
        cy=cameras.cy - shift_y,
        width=width - block,
        height=height - block,
        distortion_params=cameras.distortion_params,
        camera_type=cameras.camera_type,
    )
    rows, columns = slice(shift_y, shift_y + height - block), slice(shift_x, shift_x + width - block)
    return window, {name: value[:, rows, columns] for name, value in batch.items()}


def build_pseudo_view_cache(
    config: PseudoViewDataManagerConfig,
    datamanager: PseudoViewDataManager,
    shard: int,
    num_shards: int,
    teacher_run: TeacherRun | None = None,
) -> PseudoViewCache:
    """Open (or create) the pseudo-view cache and render this shard's missing views with the teacher (`teacher_run`:
    shared with the other caches built from it).

    Everything that decides a view's content goes into the cache's meta, so a cache is only ever reused
    for the same views, and any process or machine given the same config renders identical views."""
    teacher_run = teacher_run or TeacherRun(config.teacher_config)
    views, crops, sampler = datamanager.frame, datamanager.crops, datamanager.view_sampler
    height, width = (crops.height, crops.width) if crops else (views.height, views.width)
    windows = f"-of{views.height}x{views.width}" if crops else ""
    if crops and crops.zoomed:
        windows += "-zoom" + "-".join(f"{zoom:g}" for zoom in crops.zooms)
    quasi = "-quasi" if sampler.quasi_random else ""
    root = config.pseudo_view_dir or (
        Path(teacher_run.config.get_base_dir())
        / "pseudo_views"
        / f"{sampler.layout}-{config.num_pseudo_views}-{height}x{width}{windows}-seed{sampler.seed}{quasi}"
    )
    teacher_id = teacher_run.identity  # a teacher without a usable checkpoint is refused before anything loads

    def cache_meta(near_far: Sequence[float]) -> CacheMeta:
        return CacheMeta(
            num_views=config.num_pseudo_views,
            height=height,
            width=width,
            fx=views.fx,
            fy=views.fy,
            cx=views.cx,
            cy=views.cy,
            layout=sampler.layout,
            seed=sampler.seed,
            teacher=teacher_id,
            extra={
                "near_far": list(near_far),
                "sampler": sampler.to_dict(),
                **({"crops": crops.to_dict()} if crops else {}),
            },
        )

    # Caches of this teacher and sampler with other numbers of views hold this one's first views.
    others = [
        other
        for other in caches_beside(root)
        if cache_meta(other.meta.extra.get("near_far", ())).shares_views_with(other.meta)
    ]
    near_far = datamanager.near_far
    if near_far is None and (root / "meta.json").is_file():  # estimated once, by whoever created the cache
        near_far = PseudoViewCache.open(root).meta.extra["near_far"]
    if near_far is None and others:
        near_far = others[0].meta.extra["near_far"]
    if near_far is None:
        near_far = teacher_run.teacher.estimate_near_far(datamanager.train_dataparser_outputs.cameras)
    meta = cache_meta(near_far)
    cache = PseudoViewCache(root, meta)
    for other in others:
        if meta.shares_views_with(other.meta) and (adopted := cache.adopt_views(other)):
            CONSOLE.print(f"Took {adopted} pseudo views from {other.root} (the same teacher and poses)")
    cache.verify(shard, num_shards)  # a view torn by a crash is set aside here, and rendered again below
    if cache.missing(shard, num_shards):
        CONSOLE.print(f"Rendering pseudo views with the teacher into {root} (resumable; shard {shard}/{num_shards})")
        teacher = teacher_run.teacher

        def render(index: int, c2w: Tensor) -> tuple[Tensor, Tensor, Tensor]:
            return teacher.render((crops.intrinsics(index) if crops else views).cameras(c2w[None]))

        generate_views(cache, render, sampler.poses, shard=shard, num_shards=num_shards)
    return cache


def build_training_pose_cache(
    config: PseudoViewDataManagerConfig,
    datamanager: PseudoViewDataManager,
    shard: int,
    num_shards: int,
    teacher_run: TeacherRun | None = None,
) -> PseudoViewCache:
    """Open (or create) the cache of the teacher's renders at the cameras of `real_image_indices` (view i: the i-th of
    them, as the real images' batches see it) and render this shard's missing views. Beside the pseudo views (in the
    teacher run, or next to --pipeline.datamanager.pseudo-view-dir), resumable and sharded like them."""
    teacher_run = teacher_run or TeacherRun(config.teacher_config)
    indices = datamanager.real_image_indices
    # on the CPU: a datamanager caching images on a GPU holds its cameras there
    cameras = without_distortion(datamanager.train_cameras[torch.tensor(indices)]).to("cpu")
    height, width = datamanager.cached_train[indices[0]]["image"].shape[:2]
    if config.pseudo_view_dir is None:
        root = Path(teacher_run.config.get_base_dir()) / "training_pose_views" / f"{len(indices)}-{height}x{width}"
    else:
        root = Path(f"{config.pseudo_view_dir}-training-poses")
    # The cameras decide the views: their poses and intrinsics, as the teacher's dataparser gives them.
    cameras_digest = hashlib.sha256(
        torch.cat([cameras.camera_to_worlds.flatten(1), cameras.get_intrinsics_matrices().flatten(1)], dim=1)
        .double()
        .numpy()
        .tobytes()
    ).hexdigest()
    first = Intrinsics.from_camera(cameras[0])
    meta = CacheMeta(
        num_views=len(indices),
        height=height,
        width=width,
        fx=first.fx,
        fy=first.fy,
        cx=first.cx,
        cy=first.cy,
        layout=TRAINING_POSES,
        seed=0,
        teacher=teacher_run.identity,
        extra={"cameras_sha256": cameras_digest},
    )
    cache = PseudoViewCache(root, meta)
    cache.verify(shard, num_shards)
    if cache.missing(shard, num_shards):
        CONSOLE.print(f"Rendering the teacher's depth at the training cameras into {root} (resumable)")
        teacher = teacher_run.teacher
        generate_views(
            cache,
            lambda index, _: teacher.render(cameras[index : index + 1]),
            lambda todo: cameras.camera_to_worlds[torch.tensor(todo)],
            shard=shard,
            num_shards=num_shards,
            description="teacher at the training cameras",
        )
    return cache
