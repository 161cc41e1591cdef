"""The ray encoding contract: K points per ray (bounded or contracted space), sin/cos encoding, channel order."""

import math

import pytest
import torch

from nerfstudio_mobile.mobile_r2l.encoding import RayEncodingConfig, encode_rays, positional_encoding, sample_points

pytestmark = pytest.mark.unit


def test_default_channel_count() -> None:
    config = RayEncodingConfig()
    assert config.num_channels == 8 * 3 * 13 == 312
    origins = torch.zeros(2, 4, 5, 3)
    directions = torch.tensor([0.0, 0.0, 1.0]).expand(2, 4, 5, 3)
    assert encode_rays(origins, directions, 2.0, 6.0, config).shape == (2, 312, 4, 5)


def test_positional_encoding_shape() -> None:
    assert positional_encoding(torch.zeros(7, 24), num_frequencies=6).shape == (7, 24 * 13)


def test_channel_order_hand_computed() -> None:
    # Two rays on a 1 x 2 grid, K = 2 points (near = 1, far = 3), L = 2 frequencies.
    origins = torch.tensor([[[[1.0, 2.0, 3.0], [0.0, 0.0, 0.0]]]])
    directions = torch.tensor([[[[0.5, 0.0, -1.0], [1.0, 1.0, 1.0]]]])
    encoded = encode_rays(origins, directions, 1.0, 3.0, RayEncodingConfig(num_points=2, num_frequencies=2))
    assert encoded.shape == (1, 2 * 3 * 5, 1, 2)
    coords_per_pixel = [
        [1.5, 2.0, 2.0, 2.5, 2.0, 0.0],  # p0 = o + 1 d, p1 = o + 3 d, point-major, xyz-minor
        [1.0, 1.0, 1.0, 3.0, 3.0, 3.0],
    ]
    for w, c in enumerate(coords_per_pixel):
        expected = (
            [math.sin(v) for v in c]
            + [math.sin(2 * v) for v in c]
            + [math.cos(v) for v in c]
            + [math.cos(2 * v) for v in c]
            + c
        )
        torch.testing.assert_close(encoded[0, :, 0, w], torch.tensor(expected), atol=1e-6, rtol=0)


def test_sample_points_hits_near_and_far_exactly() -> None:
    # seeded: a direction component near 0 would blow up the step check below, whatever the sampling did
    generator = torch.Generator().manual_seed(0)
    origins = torch.randn(3, 4, 3, generator=generator)
    directions = torch.randn(3, 4, 3, generator=generator)
    near, far = 0.1, 0.7  # far - near + near != far in float32
    points = sample_points(origins, directions, near, far, num_points=8, jitter=False)
    assert points.shape == (3, 4, 8, 3)
    assert torch.equal(points[..., 0, :], origins + near * directions)
    assert torch.equal(points[..., -1, :], origins + far * directions)
    steps = (points[..., 1:, :] - points[..., :-1, :]) / directions[..., None, :]
    torch.testing.assert_close(steps, torch.full_like(steps, (far - near) / 7), atol=1e-4, rtol=1e-4)


def test_sample_points_per_ray_bounds() -> None:
    origins = torch.zeros(2, 3)
    directions = torch.tensor([[0.0, 0.0, 1.0], [0.0, 0.0, 2.0]])
    near, far = torch.tensor([[1.0], [2.0]]), torch.tensor([[3.0], [4.0]])
    z = sample_points(origins, directions, near, far, num_points=3, jitter=False)[..., 2]
    torch.testing.assert_close(z, torch.tensor([[1.0, 2.0, 3.0], [4.0, 6.0, 8.0]]))


def test_jitter_stays_within_bins() -> None:
    num_points, near, far = 8, 2.0, 6.0
    origins = torch.zeros(1000, 3)
    directions = torch.tensor([0.0, 0.0, 1.0]).expand(1000, 3)
    generator = torch.Generator().manual_seed(0)
    z = sample_points(origins, directions, near, far, num_points, jitter=True, generator=generator)[..., 2]
    centers = torch.linspace(near, far, num_points)
    half_bin = (far - near) / (num_points - 1) / 2
    lower = (centers - half_bin).clamp(min=near)
    upper = (centers + half_bin).clamp(max=far)
    assert bool(((z >= lower) & (z <= upper)).all())
    assert not torch.allclose(z, centers.expand_as(z))
    # Samples fill their bins (not stuck at the centres) and the generator makes them reproducible.
    assert bool((z.amin(0) < lower + 0.1 * half_bin).all() and (z.amax(0) > upper - 0.1 * half_bin).all())
    again = sample_points(
        origins, directions, near, far, num_points, jitter=True, generator=torch.Generator().manual_seed(0)
    )[..., 2]
    assert torch.equal(z, again)


@pytest.mark.parametrize("input_dtype", [torch.float32, torch.bfloat16])
def test_encoding_is_fp32_under_autocast(input_dtype: torch.dtype) -> None:
    config = RayEncodingConfig()
    origins = (torch.randn(1, 3, 4, 3) * 4).to(input_dtype)
    directions = torch.randn(1, 3, 4, 3).to(input_dtype)
    reference = encode_rays(origins.float(), directions.float(), 2.0, 6.0, config)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        encoded = encode_rays(origins, directions, 2.0, 6.0, config)
    assert encoded.dtype == torch.float32
    assert torch.equal(encoded, reference)


def test_contracted_space_matches_nerfacto_and_reaches_its_far_plane() -> None:
    """A nerfacto teacher sees to its far plane through scene contraction: the student's K points are spaced
    evenly in disparity up to that plane, and contracted exactly as nerfacto contracts space."""
    from nerfstudio.field_components.spatial_distortions import SceneContraction

    origins = torch.tensor([[[[0.3, -0.2, 0.1]]]])
    directions = torch.tensor([[[[0.0, 0.6, -0.8]]]])
    points = sample_points(origins, directions, 0.5, 1000.0, 8, jitter=False, disparity=True)
    depths = (points - origins[..., None, :]).norm(dim=-1)[0, 0, 0]
    assert torch.allclose(1.0 / depths, torch.linspace(1 / 0.5, 1 / 1000.0, 8), rtol=1e-4)
    config = RayEncodingConfig(num_points=8, num_frequencies=1, space="contracted")
    encoded = encode_rays(origins, directions, 0.5, 1000.0, config)
    identity_channels = encoded[0, 2 * 24 :, 0, 0].reshape(8, 3)  # the last D channels are the coordinates
    expected = SceneContraction(order=float("inf"))(points[0, 0, 0])
    assert torch.allclose(identity_channels, expected, atol=1e-5)
    assert identity_channels.abs().max() <= 2.0 and identity_channels[-1].abs().max() > 1.99


def test_jittered_disparity_samples_stay_in_their_bins() -> None:
    origins, directions = torch.zeros(64, 3), torch.tensor([0.0, 0.0, 1.0]).expand(64, 3)
    fixed = sample_points(origins, directions, 1.0, 100.0, 4, jitter=False, disparity=True)[..., 2]
    jittered = sample_points(origins, directions, 1.0, 100.0, 4, jitter=True, disparity=True)[..., 2]
    assert ((jittered >= 1.0) & (jittered <= 100.0)).all()
    assert not torch.equal(fixed, jittered)
    assert (jittered.diff(dim=-1) > 0).all()  # still ordered along the ray
