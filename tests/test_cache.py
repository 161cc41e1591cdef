import dataclasses
import json
import multiprocessing
import os
import shutil
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from nerfstudio_mobile.common.cli import UsageError
from nerfstudio_mobile.common.intrinsics import Intrinsics
from nerfstudio_mobile.mobile_r2l.cache import (
    CACHE_FORMAT_VERSION,
    CacheMeta,
    CacheMismatchError,
    CorruptViewError,
    PseudoViewCache,
    PseudoViewDataset,
    caches_beside,
    collate_views,
    generate_views,
    teacher_identity,
)
from nerfstudio_mobile.mobile_r2l.views import SphereViewSampler, ViewCrops

SIZE = 24
NUM_VIEWS = 10
SAMPLER = SphereViewSampler(
    seed=0,
    centre=(0.0, 0.0, 0.0),
    up=(0.0, 0.0, 1.0),
    radius_range=(3.0, 4.0),
    polar_mean_deg=45.0,
    polar_std_deg=15.0,
)


# Views zoomed 1×, 2× or 4× (windows of a SIZE² frame, each SIZE² pixels), as the datamanager sets them up.
ZOOMED = ViewCrops.fit(Intrinsics(30.0, 30.0, SIZE / 2, SIZE / 2, SIZE, SIZE), 1.0, 8, 0, zooms=(1.0, 2.0, 4.0))


def make_meta(**overrides: object) -> CacheMeta:
    fields = dict(
        num_views=NUM_VIEWS,
        height=SIZE,
        width=SIZE,
        fx=30.0,
        fy=30.0,
        cx=SIZE / 2,
        cy=SIZE / 2,
        layout=SAMPLER.layout,
        seed=SAMPLER.seed,
        teacher={"method": "nerfacto", "step": 1000, "sha256": "0" * 64},
        extra={"view_sampler": SAMPLER.to_dict()},
    )
    return CacheMeta(**{**fields, **overrides})


def render(index: int, c2w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Deterministic stand-in for a teacher: a disc whose colour and depth depend on the pose."""
    v, u = torch.meshgrid(torch.linspace(-1, 1, SIZE), torch.linspace(-1, 1, SIZE), indexing="ij")
    radius = (u**2 + v**2).sqrt()
    accumulation = (1.5 - 2 * radius).clamp(0, 1)
    shade = torch.stack([u, v, 1 - radius], dim=-1) * 0.3 + c2w[:, 3].abs() / 8
    rgb = accumulation[..., None] * shade.clamp(0, 1) + (1 - accumulation[..., None])
    depth = c2w[:, 3].norm() - (1 - radius**2).clamp(min=0).sqrt()
    return rgb, depth[..., None], accumulation[..., None]


def zoomed_meta(zooms: tuple[float, ...]) -> CacheMeta:
    """The meta of a cache of views at `zooms` (the windows' identity in extra, as build_pseudo_view_cache has it)."""
    crops = dataclasses.replace(ZOOMED, zooms=zooms)
    return make_meta(extra={"view_sampler": SAMPLER.to_dict(), "crops": crops.to_dict()})


def render_zoomed(index: int, c2w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, None]:
    """Deterministic stand-in for a teacher that sees view `index`'s zoomed window: its rays' directions as colours."""
    directions = ZOOMED.intrinsics(index).cameras(c2w[None]).generate_rays(camera_indices=0).directions
    return (directions + 1) / 2, 1 + directions[..., 2:].abs(), None


def fake_teacher_run(outputs: Path, checkpoint_bytes: bytes) -> Path:
    """A teacher run folder as ns-train lays it out, with a stand-in checkpoint; returns the run directory."""
    run = outputs / "lego" / "nerfacto" / "2024-01-01_000000"
    (run / "nerfstudio_models").mkdir(parents=True)
    (run / "config.yml").write_text("method_name: nerfacto\n")
    (run / "nerfstudio_models" / "step-000001000.ckpt").write_bytes(checkpoint_bytes)
    return run


def meta_of_run(run: Path) -> CacheMeta:
    """The meta a student would ask for, from the run folder wherever it now sits (as build_pseudo_view_cache)."""
    return make_meta(teacher=teacher_identity("nerfacto", 1000, run / "nerfstudio_models" / "step-000001000.ckpt"))


def view_files(root: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in sorted((root / "views").iterdir())}


def generate_shard(root: str, shard: int, num_shards: int, zoomed: bool = False) -> int:
    """Runs in a spawned process: one shard of a shared cache (of zoomed views with `zoomed`)."""
    cache = PseudoViewCache(Path(root), zoomed_meta(ZOOMED.zooms) if zoomed else make_meta())
    renderer = render_zoomed if zoomed else render
    return generate_views(cache, renderer, SAMPLER.poses, shard=shard, num_shards=num_shards, progress=False)


@pytest.mark.unit
def test_round_trip(tmp_path: Path) -> None:
    cache = PseudoViewCache(tmp_path, make_meta())
    rgb, depth, accumulation = render(3, SAMPLER.pose(3))
    depth[0, 0] = float("nan")
    c2w = SAMPLER.pose(3)
    cache.write(3, rgb, depth, c2w, accumulation)
    view = cache.read(3)
    assert view.index == 3 and view.rgb.dtype == torch.uint8 and view.depth.dtype == torch.float16
    assert torch.equal(view.rgb, (rgb * 255).round().to(torch.uint8))
    assert view.accumulation is not None
    assert torch.equal(view.accumulation, (accumulation[..., 0] * 255).round().to(torch.uint8))
    assert torch.equal(view.c2w, c2w)
    surface = accumulation[..., 0] >= 0.5
    relative_error = (view.depth.float()[surface] - depth[..., 0][surface]).abs() / depth[..., 0][surface]
    assert relative_error.max() <= 2**-11  # float16 rounding
    assert (view.depth[~surface] == 0).all() and view.depth[0, 0] == 0

    # uint8 in, the same bytes out; without accumulation depth is kept everywhere.
    rgb_u8 = torch.randint(0, 256, (SIZE, SIZE, 3), dtype=torch.uint8)
    cache.write(4, rgb_u8.numpy(), depth[..., 0].numpy(), c2w.numpy())
    view = cache.read(4)
    assert torch.equal(view.rgb, rgb_u8) and view.accumulation is None
    assert (view.depth[1:] > 0).all()


@pytest.mark.unit
def test_write_rejects_bad_input(tmp_path: Path) -> None:
    cache = PseudoViewCache(tmp_path, make_meta())
    rgb, depth, accumulation = render(0, SAMPLER.pose(0))
    with pytest.raises(IndexError):
        cache.write(NUM_VIEWS, rgb, depth, SAMPLER.pose(0))
    with pytest.raises(ValueError, match="rgb must be"):
        cache.write(0, rgb[:-1], depth, SAMPLER.pose(0))
    with pytest.raises(ValueError, match="depth must be"):
        cache.write(0, rgb, depth[:, :-1], SAMPLER.pose(0))
    assert len(cache) == 0


@pytest.mark.unit
def test_meta_round_trip_and_mismatch(tmp_path: Path) -> None:
    meta = make_meta()
    assert CacheMeta.from_json(meta.to_json()) == meta
    PseudoViewCache(tmp_path, meta)
    assert PseudoViewCache(tmp_path, make_meta()).meta == meta  # same settings: simply opens
    assert PseudoViewCache.open(tmp_path).meta == meta
    with pytest.raises(ValueError, match=r"num_views: 10 vs 20.*new cache directory.*delete"):
        PseudoViewCache(tmp_path, make_meta(num_views=20))
    with pytest.raises(CacheMismatchError, match=r"requested\): extra\.view_sampler\.seed: 0 vs 1\. Pass"):
        PseudoViewCache(tmp_path, make_meta(extra={"view_sampler": {**SAMPLER.to_dict(), "seed": 1}}))
    with pytest.raises(ValueError, match="seed: 0 vs 1"):
        PseudoViewCache(tmp_path, dataclasses.replace(meta, seed=1))
    with pytest.raises(FileNotFoundError, match="not a pseudo-view cache"):
        PseudoViewCache.open(tmp_path / "elsewhere")


@pytest.mark.unit
def test_read_missing_view_says_so(tmp_path: Path) -> None:
    cache = PseudoViewCache(tmp_path, make_meta())
    with pytest.raises(FileNotFoundError, match=r"pseudo view 5 is not in the cache.*0 of 10"):
        cache.read(5)


@pytest.mark.unit
def test_kill_and_resume_is_byte_identical(tmp_path: Path) -> None:
    uninterrupted = PseudoViewCache(tmp_path / "uninterrupted", make_meta())
    assert generate_views(uninterrupted, render, SAMPLER.poses, progress=False) == NUM_VIEWS

    resumed = PseudoViewCache(tmp_path / "resumed", make_meta())
    rendered = 0

    def render_then_die(index: int, c2w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        nonlocal rendered
        if rendered == 4:
            raise KeyboardInterrupt
        rendered += 1
        return render(index, c2w)

    with pytest.raises(KeyboardInterrupt):
        generate_views(resumed, render_then_die, SAMPLER.poses, progress=False)
    # What a kill during a write leaves behind: a torn temp file.
    (resumed.views_dir / ".00000004.npz.999-deadbeef.partial").write_bytes(b"PK\x03\x04torn")
    assert resumed.missing() == list(range(4, NUM_VIEWS))
    assert generate_views(resumed, render, SAMPLER.poses, progress=True) == NUM_VIEWS - 4
    assert resumed.complete() and generate_views(resumed, render, SAMPLER.poses, progress=False) == 0
    assert (resumed.root / "meta.json").read_bytes() == (uninterrupted.root / "meta.json").read_bytes()
    resumed_files = view_files(resumed.root)
    assert resumed_files.pop(".00000004.npz.999-deadbeef.partial") == b"PK\x03\x04torn"
    assert resumed_files == view_files(uninterrupted.root)


@pytest.mark.slow
@pytest.mark.parametrize("zoomed", [False, True], ids=["whole-views", "zoomed-views"])
def test_two_shards_in_two_processes(tmp_path: Path, zoomed: bool) -> None:
    """Shards agree: each process draws every view's pose (and zoom and window) itself, and the cache they fill
    together is byte for byte the one a single process fills."""
    # Shard 1 in a spawned process, shard 0 in this one (one spawn keeps the test fast: importing torch is
    # most of its cost).
    child = multiprocessing.get_context("spawn").Process(target=generate_shard, args=(str(tmp_path), 1, 2, zoomed))
    child.start()
    assert generate_shard(str(tmp_path), 0, 2, zoomed) == NUM_VIEWS // 2
    child.join(timeout=60)
    assert child.exitcode == 0
    cache = PseudoViewCache.open(tmp_path)
    assert cache.complete() and cache.indices() == list(range(NUM_VIEWS))
    assert sorted(os.listdir(cache.views_dir)) == [f"{i:08d}.npz" for i in range(NUM_VIEWS)]
    reference = tmp_path / "single"
    generate_shard(str(reference), 0, 1, zoomed)
    assert view_files(cache.root) == view_files(reference)


@pytest.mark.unit
def test_temp_files_are_not_views_and_stale_ones_are_removed(tmp_path: Path) -> None:
    cache = PseudoViewCache(tmp_path, make_meta())
    fresh = cache.views_dir / ".00000001.npz.1-aaaaaaaa.partial"
    stale = cache.views_dir / ".00000002.npz.1-bbbbbbbb.partial"
    for path in (fresh, stale):
        path.write_bytes(b"partial")
    long_ago = time.time() - 2 * 3600
    os.utime(stale, (long_ago, long_ago))
    assert len(cache) == 0 and cache.missing(shard=1, num_shards=2) == [1, 3, 5, 7, 9]
    assert cache.remove_stale_temp_files() == 1
    assert fresh.exists() and not stale.exists()


@pytest.mark.unit
def test_corrupt_views_are_quarantined_and_rerendered(tmp_path: Path) -> None:
    cache = PseudoViewCache(tmp_path, make_meta())
    generate_views(cache, render, SAMPLER.poses, progress=False)
    truncated, flipped = cache.view_path(2), cache.view_path(7)
    truncated.write_bytes(truncated.read_bytes()[:-100])
    data = bytearray(flipped.read_bytes())
    data[100] ^= 0xFF  # inside the PNG payload: only a CRC check notices
    flipped.write_bytes(bytes(data))

    with pytest.raises(CorruptViewError, match="pseudo view 2.*generate the views again") as error:
        cache.read(2)
    assert isinstance(error.value, UsageError) and isinstance(error.value, RuntimeError)
    with pytest.raises(CorruptViewError, match="pseudo view 7"):
        cache.read(7)
    with pytest.warns(RuntimeWarning, match="pseudo view 2 .* re-rendered"):
        assert cache.verify() == [2]  # the cheap check finds truncation only
    with pytest.warns(RuntimeWarning, match="pseudo view 7"):
        assert cache.verify(deep=True) == [7]
    assert cache.missing() == [2, 7]
    assert generate_views(cache, render, SAMPLER.poses, progress=False) == 2
    assert cache.verify(deep=True) == []


@pytest.mark.unit
def test_dataset_serves_another_view_when_one_is_corrupt(tmp_path: Path) -> None:
    cache = PseudoViewCache(tmp_path, make_meta())
    generate_views(cache, render, SAMPLER.poses, progress=False)
    cache.view_path(0).write_bytes(b"not a zip")
    dataset = PseudoViewDataset(cache, ram_budget_bytes=0)  # streaming mode
    with pytest.warns(RuntimeWarning, match="pseudo view 0"):
        assert dataset[0].index == 1
    assert cache.missing() == [0]


@pytest.mark.unit
def test_dataset_in_ram_and_streaming_agree(tmp_path: Path) -> None:
    cache = PseudoViewCache(tmp_path, make_meta())
    generate_views(cache, render, SAMPLER.poses, progress=False)
    in_ram = PseudoViewDataset(cache)
    streaming = PseudoViewDataset(cache, ram_budget_bytes=3 * SIZE * SIZE * 6)
    assert in_ram.in_ram and not streaming.in_ram and len(in_ram) == len(streaming) == NUM_VIEWS
    for position in [0, 5, 9, 5, 0, 1, 2, 3]:
        assert torch.equal(in_ram[position].rgb, streaming[position].rgb)
    with pytest.raises(IndexError):
        in_ram[NUM_VIEWS]

    batch = in_ram.sample(4, generator=torch.Generator().manual_seed(0))
    assert batch.rgb.shape == (4, SIZE, SIZE, 3) and batch.depth.shape == (4, SIZE, SIZE)
    assert batch.c2w.shape == (4, 3, 4) and batch.accumulation is not None
    assert len(set(batch.indices.tolist())) == 4
    assert torch.equal(batch.c2w, SAMPLER.poses(batch.indices.tolist()))
    loader = DataLoader(streaming, batch_size=5, shuffle=True, collate_fn=collate_views)
    assert sorted(i for batch in loader for i in batch.indices.tolist()) == list(range(NUM_VIEWS))


@pytest.mark.unit
def test_a_moved_or_copied_run_keeps_its_cache(tmp_path: Path) -> None:
    """The teacher's identity is its checkpoint's content: the run folder copied or moved elsewhere (cache inside)
    asks for the same meta, and the cache is accepted as it is."""
    run = fake_teacher_run(tmp_path / "here" / "outputs", os.urandom(4096))
    original = PseudoViewCache(run / "pseudo_views" / "360-10-24x24-seed0", meta_of_run(run))
    generate_views(original, render, SAMPLER.poses, progress=False)
    copied_root = tmp_path / "copy"
    shutil.copytree(tmp_path / "here", copied_root)
    moved_root = tmp_path / "elsewhere" / "moved"
    moved_root.parent.mkdir()
    (tmp_path / "here").rename(moved_root)
    for root in (copied_root, moved_root):
        moved_run = root / run.relative_to(tmp_path / "here")
        cache = PseudoViewCache(moved_run / "pseudo_views" / "360-10-24x24-seed0", meta_of_run(moved_run))
        assert cache.meta == original.meta and cache.complete()
        assert generate_views(cache, render, SAMPLER.poses, progress=False) == 0
        assert cache.read(3).rgb.shape == (SIZE, SIZE, 3)


@pytest.mark.unit
def test_a_cache_of_more_or_fewer_views_takes_the_views_beside_it_and_renders_only_the_rest(tmp_path: Path) -> None:
    """View i is the same render in a cache of 6 views and one of 10 (its pose is a function of seed and i): a cache
    of the same teacher and sampler beside it gives its views, linked, not copied; the result is byte for byte a
    cache rendered from scratch. A cache of other poses (another seed) gives nothing."""
    rendered: list[int] = []

    def counting_render(index: int, c2w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        rendered.append(index)
        return render(index, c2w)

    six = PseudoViewCache(tmp_path / "views" / "360-6", make_meta(num_views=6))
    generate_views(six, render, SAMPLER.poses, progress=False)
    other_poses = PseudoViewCache(tmp_path / "views" / "360-10-seed1", make_meta(num_views=10, seed=1))
    generate_views(other_poses, render, SAMPLER.poses, progress=False)
    ten = PseudoViewCache(tmp_path / "views" / "360-10", make_meta(num_views=10))
    beside = caches_beside(ten.root)
    assert sorted(cache.root.name for cache in beside) == ["360-10-seed1", "360-6"]
    assert [ten.meta.shares_views_with(cache.meta) for cache in beside] == [False, True]  # largest first
    with pytest.raises(ValueError, match="not those of"):
        ten.adopt_views(other_poses)
    assert ten.adopt_views(six) == 6 and ten.missing() == [6, 7, 8, 9]
    assert generate_views(ten, counting_render, SAMPLER.poses, progress=False) == 4 and rendered == [6, 7, 8, 9]
    assert all(ten.view_path(i).stat().st_ino == six.view_path(i).stat().st_ino for i in range(6))
    scratch = PseudoViewCache(tmp_path / "scratch", make_meta(num_views=10))
    generate_views(scratch, render, SAMPLER.poses, progress=False)
    assert view_files(ten.root) == view_files(scratch.root)
    four = PseudoViewCache(tmp_path / "views" / "360-4", make_meta(num_views=4))
    assert four.adopt_views(ten) == 4 and four.complete() and four.indices() == [0, 1, 2, 3]


@pytest.mark.unit
def test_another_teacher_checkpoint_is_refused(tmp_path: Path) -> None:
    run = fake_teacher_run(tmp_path / "outputs", b"teacher weights, version 1")
    meta = meta_of_run(run)
    assert meta.teacher["step"] == 1000 and len(meta.teacher["sha256"]) == 64
    PseudoViewCache(tmp_path / "cache", meta)
    (run / "nerfstudio_models" / "step-000001000.ckpt").write_bytes(b"teacher weights, trained further")
    with pytest.raises(CacheMismatchError, match=r"different settings.*teacher\.sha256: '[0-9a-f]{64}' vs") as error:
        PseudoViewCache(tmp_path / "cache", meta_of_run(run))
    assert isinstance(error.value, UsageError) and isinstance(error.value, ValueError)
    assert "new cache directory, or delete" in str(error.value) and "\n" not in str(error.value)


@pytest.mark.unit
def test_a_cache_of_other_zoom_levels_is_refused(tmp_path: Path) -> None:
    PseudoViewCache(tmp_path, zoomed_meta((1.0, 2.0, 4.0)))
    with pytest.raises(CacheMismatchError, match=r"extra\.crops\.zooms: \[1\.0, 2\.0, 4\.0\] vs \[1\.0, 2\.0\]"):
        PseudoViewCache(tmp_path, zoomed_meta((1.0, 2.0)))
    with pytest.raises(CacheMismatchError, match=r"extra\.crops\.zooms: \[1\.0, 2\.0, 4\.0\] vs None"):
        PseudoViewCache(tmp_path, zoomed_meta((1.0,)))
    assert PseudoViewCache(tmp_path, zoomed_meta((1.0, 2.0, 4.0))).meta.extra["crops"]["zooms"] == [1.0, 2.0, 4.0]


@pytest.mark.unit
def test_old_or_unreadable_meta_is_explained(tmp_path: Path) -> None:
    old = {**json.loads(make_meta().to_json()), "format_version": 1, "teacher_config": "/abs/config.yml"}
    del old["teacher"]
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "meta.json").write_text(json.dumps(old))
    message = rf"cache format 1, while .* reads format {CACHE_FORMAT_VERSION}.*delete .*old to regenerate"
    with pytest.raises(CacheMismatchError, match=message):
        PseudoViewCache(tmp_path / "old", make_meta())
    with pytest.raises(CacheMismatchError, match="cache format 1"):
        PseudoViewCache.open(tmp_path / "old")
    (tmp_path / "torn").mkdir()
    (tmp_path / "torn" / "meta.json").write_text('{"num_views": 1')
    with pytest.raises(CacheMismatchError, match=r"torn/meta.json: .*delete"):
        PseudoViewCache.open(tmp_path / "torn")


@pytest.mark.unit
def test_800x800_render_fits_in_1mb(tmp_path: Path) -> None:
    """A NeRF-like render: a shaded, textured, slightly noisy sphere filling ~44% of a white frame."""
    size = 800
    cache = PseudoViewCache(tmp_path, make_meta(height=size, width=size, num_views=1))
    y, x = np.mgrid[0:size, 0:size].astype(np.float32)
    u, v = (x - 400) / 300, (y - 400) / 300
    height = np.sqrt(np.clip(1 - u**2 - v**2, 0, 1))
    accumulation = np.clip((1 - u**2 - v**2) * 30, 0, 1)
    light = np.array([0.4, -0.5, 0.77]) / np.linalg.norm([0.4, -0.5, 0.77])
    shade = np.clip(np.stack([u, v, height], axis=-1) @ light, 0, 1) * 0.8 + 0.2
    texture = 0.5 + 0.25 * np.sin(x / 23) * np.cos(y / 31)
    albedo = np.stack([0.8 * texture, 0.5 + 0.3 * texture, np.full_like(texture, 0.3)], axis=-1)
    noise = np.random.default_rng(0).normal(0, 1.5 / 255, (size, size, 3))
    surface = albedo * shade[..., None] + noise
    rgb = accumulation[..., None] * surface + (1 - accumulation[..., None])
    depth = 4.0 - height
    cache.write(0, rgb, depth, torch.eye(4)[:3], accumulation)

    file_size = cache.view_path(0).stat().st_size
    with zipfile.ZipFile(cache.view_path(0)) as archive:
        members = {info.filename: info.compress_size for info in archive.infolist()}
    print(f"800x800 view: {file_size} bytes; members {members}")
    assert file_size < 1_000_000
    assert cache.read(0).rgb.shape == (size, size, 3)
