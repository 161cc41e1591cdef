import json
import math

import pytest
import torch
from nerfstudio.cameras.cameras import Cameras
from support import WORLD_UP, look_at
from torch.nn.functional import normalize

from nerfstudio_mobile.common.intrinsics import Intrinsics
from nerfstudio_mobile.mobile_r2l.datamanager import is_real_step, shifted_window
from nerfstudio_mobile.mobile_r2l.encoding import pinhole_rays
from nerfstudio_mobile.mobile_r2l.views import (
    MAX_POLAR_DEG,
    MIN_POLAR_DEG,
    ForwardFacingViewSampler,
    PseudoViewSamplerConfig,
    SphereViewSampler,
    ViewCrops,
    detect_layout,
    make_view_sampler,
    view_sampler_from_dict,
)

F64 = torch.float64  # rigs are built in float64 and handed to the samplers as float32
CENTRE = torch.tensor([0.3, -0.2, 0.1], dtype=F64)


def hemisphere_rig(num_cameras: int = 60, radii: tuple[float, float] = (3.5, 4.5)) -> torch.Tensor:
    """Cameras above CENTRE at polar angles 10°..70°, looking at it (a Blender-like 360 capture)."""
    generator = torch.Generator().manual_seed(1)
    polar = torch.deg2rad(10 + 60 * torch.rand(num_cameras, generator=generator, dtype=F64))
    azimuth = 2 * math.pi * torch.arange(num_cameras, dtype=F64) / num_cameras
    radius = radii[0] + (radii[1] - radii[0]) * torch.rand(num_cameras, generator=generator, dtype=F64)
    unit = torch.stack([polar.sin() * azimuth.cos(), polar.sin() * azimuth.sin(), polar.cos()], dim=-1)
    return torch.stack([look_at(CENTRE + r * u, CENTRE) for r, u in zip(radius, unit, strict=True)]).float()


def forward_facing_rig(num_cameras: int = 20, focus_distance: float | None = None) -> torch.Tensor:
    """Cameras on a small patch of the plane z = 0 looking along -z (or converging at `focus_distance`)."""
    generator = torch.Generator().manual_seed(2)
    xy = torch.rand(num_cameras, 2, generator=generator, dtype=F64) - 0.5
    positions = torch.cat([xy, torch.zeros(num_cameras, 1, dtype=F64)], dim=-1)
    if focus_distance is None:
        rotation = torch.eye(3, dtype=F64).expand(num_cameras, 3, 3)
        return torch.cat([rotation, positions[:, :, None]], dim=-1).float()
    target = torch.tensor([0.0, 0.0, -focus_distance], dtype=F64)
    up = torch.tensor([0.0, 1.0, 0.0], dtype=F64)
    return torch.stack([look_at(position, target, up) for position in positions]).float()


def arc_rig() -> torch.Tensor:
    """A 360 capture that only covers a 90° arc: directions agree within 45°, but the rig surrounds CENTRE."""
    azimuth = torch.deg2rad(torch.linspace(0, 90, 12, dtype=F64))
    height = torch.full_like(azimuth, 0.3)
    positions = CENTRE + 4 * torch.stack([azimuth.cos(), azimuth.sin(), height], dim=-1)
    return torch.stack([look_at(p, CENTRE) for p in positions]).float()


def assert_close(actual: torch.Tensor, expected: torch.Tensor, atol: float = 1e-5) -> None:
    # Not torch.testing.assert_close: its first call imports seconds' worth of torch.distributed.
    assert actual.shape == expected.shape and (actual - expected).abs().max() <= atol


def assert_rotations_proper(poses: torch.Tensor) -> None:
    rotation = poses[:, :, :3].double()
    identity = torch.eye(3, dtype=F64).expand_as(rotation)
    assert_close(rotation.transpose(1, 2) @ rotation, identity)
    assert_close(torch.linalg.det(rotation), torch.ones(len(poses), dtype=F64))


def test_detect_layout() -> None:
    assert detect_layout(hemisphere_rig()) == "360"
    assert detect_layout(arc_rig()) == "360"
    assert detect_layout(forward_facing_rig()) == "forward-facing"
    assert detect_layout(forward_facing_rig(focus_distance=8.0)) == "forward-facing"
    # 4x4 matrices are accepted too.
    bottom_row = torch.tensor([0.0, 0.0, 0.0, 1.0]).expand(20, 1, 4)
    assert detect_layout(torch.cat([forward_facing_rig(), bottom_row], dim=1)) == "forward-facing"


@pytest.mark.parametrize(
    ("rig", "sampler_type"),
    [(hemisphere_rig, SphereViewSampler), (forward_facing_rig, ForwardFacingViewSampler)],
)
def test_auto_layout_picks_sampler(rig, sampler_type) -> None:
    assert isinstance(make_view_sampler(PseudoViewSamplerConfig(), rig()), sampler_type)


@pytest.mark.parametrize("quasi_random", [False, True])
@pytest.mark.parametrize("layout", ["360", "forward-facing"])
def test_pose_is_a_function_of_seed_and_index_only(layout, quasi_random) -> None:
    rig = hemisphere_rig() if layout == "360" else forward_facing_rig()
    config = PseudoViewSamplerConfig(layout=layout, seed=7, quasi_random=quasi_random)
    sampler = make_view_sampler(config, rig)
    batch = sampler.poses(range(40))
    # Other batches, other orders, another fit of the same rig, and one at a time: identical bits.
    refitted = make_view_sampler(config, rig.clone())
    assert torch.equal(refitted.poses([39, 3, 17]), batch[[39, 3, 17]])
    assert torch.equal(sampler.poses(list(range(39, -1, -1))), batch.flip(0))
    assert torch.equal(torch.stack([sampler.pose(i) for i in range(40)]), batch)
    assert len(torch.unique(batch.reshape(40, -1), dim=0)) == 40
    other_seed = make_view_sampler(PseudoViewSamplerConfig(layout=layout, seed=8, quasi_random=quasi_random), rig)
    assert not torch.equal(other_seed.poses(range(40)), batch)
    assert sampler.poses([]).shape == (0, 3, 4)


@pytest.mark.parametrize("quasi_random", [False, True])
@pytest.mark.parametrize("layout", ["360", "forward-facing"])
def test_json_round_trip_reproduces_poses(layout, quasi_random) -> None:
    rig = hemisphere_rig() if layout == "360" else forward_facing_rig()
    sampler = make_view_sampler(PseudoViewSamplerConfig(layout=layout, seed=3, quasi_random=quasi_random), rig)
    state = sampler.to_dict()
    assert ("quasi_random" in state) == quasi_random  # random poses: the identity caches had before the option
    rebuilt = view_sampler_from_dict(json.loads(json.dumps(state)))
    assert rebuilt == sampler
    assert torch.equal(rebuilt.poses(range(10)), sampler.poses(range(10)))


def test_quasi_random_views_spread_out_where_random_ones_clump() -> None:
    """Each quasi-random view keeps farther from its nearest neighbour: a view budget covers more viewpoints."""

    def nearest_neighbour_degrees(quasi_random: bool, seed: int) -> torch.Tensor:
        config = PseudoViewSamplerConfig(layout="360", seed=seed, quasi_random=quasi_random)
        sampler = make_view_sampler(config, hemisphere_rig())
        offsets = sampler.poses(range(100))[:, :, 3].double() - torch.tensor(sampler.centre, dtype=F64)
        directions = normalize(offsets, dim=-1)
        degrees = torch.rad2deg(torch.arccos((directions @ directions.T).clamp(-1, 1)))
        return degrees.fill_diagonal_(180).min(dim=1).values

    for seed in range(3):
        random, quasi = nearest_neighbour_degrees(False, seed), nearest_neighbour_degrees(True, seed)
        assert quasi.mean() > 1.2 * random.mean()
        assert quasi.min() > 2 * random.min()  # no two views nearly coincide


def test_sphere_fit_recovers_rig() -> None:
    sampler = SphereViewSampler.fit(hemisphere_rig(radii=(3.5, 4.5)))
    assert_close(torch.tensor(sampler.centre, dtype=F64), CENTRE)
    assert torch.dot(torch.tensor(sampler.up, dtype=F64), WORLD_UP) > 0.95
    assert 3.5 <= sampler.radius_range[0] < 3.7 and 4.3 < sampler.radius_range[1] <= 4.5
    assert 30 < sampler.polar_mean_deg < 50


def test_sphere_poses_stay_on_the_training_shell_and_look_at_the_centre() -> None:
    sampler = SphereViewSampler.fit(hemisphere_rig(), polar_std_deg=60.0)  # wide: exercises both clips
    poses = sampler.poses(range(500)).double()
    assert_rotations_proper(poses)
    centre, up = torch.tensor(sampler.centre, dtype=F64), torch.tensor(sampler.up, dtype=F64)
    offsets = poses[:, :, 3] - centre
    radii = offsets.norm(dim=-1)
    assert radii.min() >= sampler.radius_range[0] - 1e-4 and radii.max() <= sampler.radius_range[1] + 1e-4
    polar_deg = torch.rad2deg(torch.arccos((normalize(offsets, dim=-1) @ up).clamp(-1, 1)))
    assert polar_deg.min() >= MIN_POLAR_DEG - 1e-2 and polar_deg.max() <= MAX_POLAR_DEG + 1e-2
    # -z points at the centre, and the camera's up is as close to `up` as looking there allows.
    assert_close(-poses[:, :, 2], normalize(-offsets, dim=-1))
    assert (poses[:, :, 1] @ up).min() >= -1e-6
    assert_close(poses[:, :, 0] @ up, torch.zeros(500, dtype=F64))


def test_sphere_falls_back_to_origin_and_camera_up_when_ill_determined() -> None:
    # Parallel viewing axes meet nowhere: the centre is the origin (nerfstudio centres scenes).
    sampler = SphereViewSampler.fit(forward_facing_rig())
    assert sampler.centre == (0.0, 0.0, 0.0)
    # A level ring surrounds its centre, so "mean direction to the cameras" is ~0: use the cameras' up.
    azimuth = torch.linspace(0, 2 * math.pi, 25, dtype=F64)[:-1]
    positions = 4 * torch.stack([azimuth.cos(), azimuth.sin(), torch.zeros_like(azimuth)], dim=-1)
    ring = torch.stack([look_at(position, torch.zeros(3, dtype=F64)) for position in positions])
    ring_sampler = SphereViewSampler.fit(ring.float())
    assert_close(torch.tensor(ring_sampler.up, dtype=F64), WORLD_UP)
    assert ring_sampler.polar_mean_deg == pytest.approx(90.0, abs=1e-3)


def test_forward_facing_poses_stay_in_enlarged_boxes() -> None:
    rig = forward_facing_rig(focus_distance=6.0)
    sampler = ForwardFacingViewSampler.fit(rig, box_scale=1.1)
    poses = sampler.poses(range(500)).double()
    assert_rotations_proper(poses)
    positions = rig[:, :, 3].double()
    low, high = positions.min(dim=0).values, positions.max(dim=0).values
    margin = (high - low) * 0.05 + 1e-6
    assert ((poses[:, :, 3] >= low - margin) & (poses[:, :, 3] <= high + margin)).all()
    # Some samples use the enlargement.
    assert ((poses[:, :, 3] < low) | (poses[:, :, 3] > high)).any()
    # Viewing axes stay about as close to the mean training axis as the training axes are.
    training_directions = -rig[:, :, 2].double()
    mean_direction = normalize(training_directions.mean(dim=0), dim=0)
    assert (-poses[:, :, 2] @ mean_direction).min() > (training_directions @ mean_direction).min() - 0.01
    # Up stays close to the training cameras' up (+y here).
    assert poses[:, 1, 1].min() > 0.95


FRAME = Intrinsics(fx=50.0, fy=52.0, cx=47.5, cy=40.0, width=96, height=80)


def test_crop_windows_lie_on_the_ray_grid_inside_the_frame() -> None:
    crops = ViewCrops.fit(FRAME, fraction=0.5, block=8, seed=3)
    assert (crops.height, crops.width) == (40, 48)
    corners = {crops.corner(index) for index in range(200)}
    assert len(corners) > 20  # windows move around the frame
    for top, left in corners:
        assert top % 8 == 0 and left % 8 == 0
        assert 0 <= top <= FRAME.height - crops.height and 0 <= left <= FRAME.width - crops.width


def test_crop_window_is_a_function_of_seed_and_index_only() -> None:
    crops = ViewCrops.fit(FRAME, fraction=0.5, block=8, seed=3)
    forward = [crops.corner(i) for i in range(10)]
    assert [crops.corner(i) for i in reversed(range(10))] == forward[::-1]
    assert ViewCrops.fit(FRAME, fraction=0.5, block=8, seed=3).corner(7) == forward[7]
    other_seed = ViewCrops.fit(FRAME, fraction=0.5, block=8, seed=4)
    assert [crops.corner(i) for i in range(20)] != [other_seed.corner(i) for i in range(20)]


def test_a_window_camera_casts_the_rays_of_that_window_of_the_frame() -> None:
    """What the teacher renders for a crop is exactly the crop of its whole-frame render, ray for ray."""
    crops = ViewCrops.fit(FRAME, fraction=0.5, block=8, seed=0)
    c2w = SphereViewSampler.fit(hemisphere_rig()).poses([0, 1, 2])
    frame_rays = FRAME.cameras(c2w).generate_rays(camera_indices=torch.arange(3)[:, None])
    window_rays = crops.cameras([0, 1, 2], c2w).generate_rays(camera_indices=torch.arange(3)[:, None])
    for view in range(3):
        top, left = crops.corner(view)
        expected = frame_rays.directions[top : top + crops.height, left : left + crops.width, view]
        torch.testing.assert_close(window_rays.directions[:, :, view], expected)


def test_whole_frame_fraction_and_bad_fractions() -> None:
    whole = ViewCrops.fit(FRAME, fraction=1.0, block=8, seed=0)
    assert (whole.height, whole.width) == (80, 96) and whole.corner(7) == (0, 0)
    with pytest.raises(ValueError, match="crop fraction"):
        ViewCrops.fit(FRAME, fraction=0.0, block=8, seed=0)


ZOOMS = (1.0, 2.0, 4.0)


def test_zoom_windows_lie_on_the_ray_grid_inside_their_zoomed_frame() -> None:
    """A view at zoom z is a window of 1/z of the frame's sides at z× its focal length: a whole view's pixels."""
    crops = ViewCrops.fit(FRAME, fraction=1.0, block=8, seed=3, zooms=ZOOMS)
    counts = dict.fromkeys(ZOOMS, 0)
    for index in range(300):
        zoom, (top, left), window = crops.zoom(index), crops.corner(index), crops.intrinsics(index)
        counts[zoom] += 1
        assert (window.height, window.width) == (FRAME.height, FRAME.width)
        assert (window.fx, window.fy) == (FRAME.fx * zoom, FRAME.fy * zoom)
        assert top % 8 == 0 and left % 8 == 0
        assert 0 <= top <= FRAME.height * zoom - crops.height and 0 <= left <= FRAME.width * zoom - crops.width
    assert all(count > 70 for count in counts.values()), counts  # levels drawn uniformly
    half = ViewCrops.fit(FRAME, fraction=0.5, block=8, seed=3, zooms=(2.0,))
    assert (half.height, half.width) == (40, 48) and half.intrinsics(0).fx == 2 * FRAME.fx  # crops zoom too


def test_zoom_and_window_are_a_function_of_seed_and_index_only() -> None:
    crops = ViewCrops.fit(FRAME, fraction=1.0, block=8, seed=3, zooms=ZOOMS)
    forward = [crops.intrinsics(i) for i in range(30)]
    assert [crops.intrinsics(i) for i in reversed(range(30))] == forward[::-1]
    assert ViewCrops.fit(FRAME, fraction=1.0, block=8, seed=3, zooms=ZOOMS).intrinsics(17) == forward[17]
    other_seed = ViewCrops.fit(FRAME, fraction=1.0, block=8, seed=4, zooms=ZOOMS)
    assert [crops.zoom(i) for i in range(30)] != [other_seed.zoom(i) for i in range(30)]


def student_ray_grid(cameras: Cameras, block: int) -> torch.Tensor:
    """Ray directions [B, h, w, 3] of the student's low-resolution grid for `cameras`, as MobileR2LModel.encode casts
    them (focal length and principal point / block, one ray per block)."""
    intrinsics = (getattr(cameras, name).reshape(-1) / block for name in ("fx", "fy", "cx", "cy"))
    height, width = int(cameras.height.flatten()[0]) // block, int(cameras.width.flatten()[0]) // block
    return pinhole_rays(cameras.camera_to_worlds, *intrinsics, height=height, width=width)[1]


@pytest.mark.parametrize("zoom", [2.0, 4.0])
def test_a_zoomed_window_casts_the_rays_of_that_region_of_a_zoomed_frame(zoom: float) -> None:
    """What the teacher renders for a view at zoom z is, ray for ray, that region of the frame a viewer asks for at z×
    the resolution; and the student's ray grid of the window is that region of its ray grid for the z× frame."""
    crops = ViewCrops.fit(FRAME, fraction=1.0, block=8, seed=0, zooms=(zoom,))
    indices = [0, 1, 2]
    c2w = SphereViewSampler.fit(hemisphere_rig()).poses(indices)
    viewer = FRAME.cameras(c2w)
    viewer.rescale_output_resolution(zoom)  # what nerfstudio's viewer does for a larger render
    windows = crops.cameras(indices, c2w)
    frame_rays = viewer.generate_rays(camera_indices=torch.arange(3)[:, None])
    window_rays = windows.generate_rays(camera_indices=torch.arange(3)[:, None])
    frame_grid, window_grid = student_ray_grid(viewer, 8), student_ray_grid(windows, 8)
    for view in indices:
        top, left = crops.corner(view)
        expected = frame_rays.directions[top : top + crops.height, left : left + crops.width, view]
        torch.testing.assert_close(window_rays.directions[:, :, view], expected)
        rows, columns = slice(top // 8, (top + crops.height) // 8), slice(left // 8, (left + crops.width) // 8)
        torch.testing.assert_close(window_grid[view], frame_grid[view, rows, columns])


def test_crops_without_zoom_keep_the_windows_and_identity_they_had_before_zooms() -> None:
    """Caches of crops made before zoom levels existed stay valid: same corners, same identity."""
    for crops in (ViewCrops.fit(FRAME, 0.5, 8, 3), ViewCrops.fit(FRAME, 0.5, 8, 3, zooms=(1.0, 1.0))):
        assert [crops.corner(i) for i in range(8)] == [(32, 32), (16, 16), (40, 16), (16, 48), (24, 40), (8, 48),
                                                       (32, 0), (8, 32)]  # fmt: skip
        assert crops.to_dict() == {"frame": [80, 96], "block": 8}
    assert ViewCrops.fit(FRAME, 0.5, 8, 3, zooms=ZOOMS).to_dict()["zooms"] == [1.0, 2.0, 4.0]


def test_bad_zoom_levels() -> None:
    for zooms in ((), (0.5, 1.0), (float("inf"),)):
        with pytest.raises(ValueError, match="zoom levels must be one or more numbers of at least 1"):
            ViewCrops.fit(FRAME, fraction=1.0, block=8, seed=0, zooms=zooms)


@pytest.mark.parametrize(("shift_x", "shift_y"), [(0, 0), (3, 5), (7, 7)])
def test_a_shifted_window_moves_the_students_ray_grid_with_its_pixels(shift_x: int, shift_y: int) -> None:
    """`grid_shifts`: each block of the window's ray grid casts the ray through the centre of the block of pixels
    that the cropped target holds there, so the student learns the same ray-to-pixels map on a moved grid."""
    block, c2w = 8, SphereViewSampler.fit(hemisphere_rig()).poses([0, 1])
    frame = FRAME.cameras(c2w)
    image = torch.rand(2, FRAME.height, FRAME.width, 3)
    window, batch = shifted_window(frame, {"image": image}, shift_x, shift_y, block)
    height, width = FRAME.height - block, FRAME.width - block
    assert (int(window.height[0]), int(window.width[0])) == (height, width)
    torch.testing.assert_close(batch["image"], image[:, shift_y : shift_y + height, shift_x : shift_x + width])
    pixel_rays = frame.generate_rays(camera_indices=torch.arange(2)[:, None]).directions  # [H, W, B, 3]
    grid = student_ray_grid(window, block)
    assert grid.shape[1:3] == (height // block, width // block)
    # a block's centre lies between its middle pixels: the mean of their four rays points the same way
    rows, columns = (
        shift_y + block // 2 + block * torch.arange(grid.shape[1]),
        shift_x + block // 2 + block * torch.arange(grid.shape[2]),
    )
    middle = sum(pixel_rays[rows[:, None] - dy, columns[None] - dx] for dy in (0, 1) for dx in (0, 1))
    torch.testing.assert_close(grid, normalize(middle, dim=-1).permute(2, 0, 1, 3), atol=1e-3, rtol=0)
    if (shift_x, shift_y) != (0, 0):
        assert not torch.allclose(grid, student_ray_grid(shifted_window(frame, {}, 0, 0, block)[0], block))


def test_a_shift_outside_its_block_is_refused() -> None:
    with pytest.raises(ValueError, match="must lie inside a 8-pixel block"):
        shifted_window(FRAME.cameras(torch.eye(4)[None, :3]), {}, 8, 0, 8)


@pytest.mark.parametrize("share", [0.0, 0.2, 0.25, 1 / 3, 0.4])
def test_real_image_steps_are_the_share_spread_evenly_by_step_alone(share: float) -> None:
    """`real_image_share`: of any run of steps, the share (to within one step) trains on the real images, never
    bunched (gaps between them differ by at most one step), and which steps decides nothing but the step number, so a
    run resumed at any step draws the same kinds of batches as an uninterrupted one."""
    steps = 1500
    real = [step for step in range(steps) if is_real_step(step, share)]
    assert len(real) == math.floor(steps * share)
    for start, length in ((0, 100), (737, 250), (1234, 266)):
        window = sum(start <= step < start + length for step in real)
        assert abs(window - length * share) <= 1
    gaps = {b - a for a, b in zip(real, real[1:], strict=False)}
    assert not gaps or max(gaps) - min(gaps) <= 1
    assert [is_real_step(step, share) for step in range(900, 1000)] == [step in real for step in range(900, 1000)]
