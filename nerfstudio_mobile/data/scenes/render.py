"""Rendering one view of the synthetic scene: supersampled rays through the camera's lens, traced in chunks."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import Tensor

from nerfstudio_mobile.data.scenes.cameras import ray_directions
from nerfstudio_mobile.data.scenes.config import Distortion
from nerfstudio_mobile.data.scenes.world import trace

_MAX_SAMPLES_PER_CHUNK = 1 << 18
"""Sub-pixel rays traced at once; bounds memory independently of the image size."""


@contextmanager
def single_thread() -> Iterator[None]:
    """Run torch ops on one intra-op thread, restoring the caller's setting afterwards.

    The renderer issues many small elementwise ops; with several OpenMP threads on a busy machine the threads'
    spin-waiting costs far more than they gain, and one thread is never much slower at these sizes.
    """
    previous = torch.get_num_threads()
    if previous != 1:
        torch.set_num_threads(1)
    try:
        yield
    finally:
        if previous != 1:
            torch.set_num_threads(previous)


def _check_sizes(image_size: int, supersample: int) -> None:
    if image_size < 1 or supersample < 1:
        raise ValueError("image_size and supersample must be >= 1")


def _traced_chunks(
    c2w: Tensor, image_size: int, camera_angle_x: float, supersample: int, distortion: Distortion, unbounded: bool
) -> Iterator[tuple[slice, Tensor, Tensor, Tensor, Tensor]]:
    """Trace the s x s stratified sub-pixel rays of one view in chunks of whole rows: per chunk its rows, the rays'
    camera-frame directions [R, W, s*s, 3] (z = -1), colours [R, W, s*s, 3], hits and distances [R, W, s*s]."""
    c2w = torch.as_tensor(c2w, dtype=torch.float32).cpu()
    rot = c2w[:3, :3]
    origin = (float(c2w[0, 3]), float(c2w[1, 3]), float(c2w[2, 3]))
    size, s = int(image_size), int(supersample)
    ss = s * s
    offsets = (torch.arange(s, dtype=torch.float32) + 0.5) / s
    sub_v, sub_u = (g.reshape(-1) for g in torch.meshgrid(offsets, offsets, indexing="ij"))  # [s*s]
    u = torch.arange(size, dtype=torch.float32)[None, :, None] + sub_u[None, None, :]  # [1, W, s*s]
    rows_per_chunk = max(1, _MAX_SAMPLES_PER_CHUNK // (size * ss))
    with single_thread():
        for r0 in range(0, size, rows_per_chunk):
            rows = torch.arange(r0, min(size, r0 + rows_per_chunk), dtype=torch.float32)
            v = rows[:, None, None] + sub_v[None, None, :]  # [R, 1, s*s]
            cam = ray_directions(*torch.broadcast_tensors(u, v), size, camera_angle_x, distortion)
            flat = cam.reshape(-1, 3)
            # Elementwise, not a matmul, so the bytes never depend on BLAS threading (deterministic PNGs).
            world = flat[:, :1] * rot[:, 0] + flat[:, 1:2] * rot[:, 1] + flat[:, 2:] * rot[:, 2]
            dirs = torch.nn.functional.normalize(world, dim=-1)  # also tolerates a slightly scaled c2w
            colour, hit, distance = trace(origin, dirs, unbounded)
            shape = (rows.shape[0], size, ss)
            yield slice(r0, r0 + shape[0]), cam, colour.view(*shape, 3), hit.view(shape), distance.view(shape)


@torch.no_grad()
def render_view(
    c2w: Tensor,
    image_size: int,
    camera_angle_x: float,
    supersample: int = 3,
    *,
    distortion: Distortion = (0.0, 0.0, 0.0, 0.0),
    unbounded: bool = False,
) -> Tensor:
    """Render the synthetic scene from one camera: RGBA [H,W,4] in [0,1] (float32, CPU).

    Args:
        c2w: camera-to-world, [3,4] or [4,4], Blender/OpenGL convention (columns right, up, back).
            The camera must be outside the solids (anywhere around the scene is fine).
        image_size: H = W in pixels, principal point at the image centre.
        camera_angle_x: horizontal field of view of the pinhole camera in radians.
        supersample: s x s stratified sub-pixel rays per pixel (an odd s keeps a ray at the pixel centre).
        distortion: OpenCV k1 k2 p1 p2 the image is seen through (zeros: a pinhole image).
        unbounded: surround the scene with a far ground and sky.

    Returns:
        Straight (non-premultiplied) colour; alpha = fraction of sub-pixel rays that hit something, colour = mean
        colour of those rays (0 where alpha = 0).
    """
    _check_sizes(image_size, supersample)
    rgba = torch.zeros(image_size, image_size, 4)
    for rows, _, colour, hit, _ in _traced_chunks(c2w, image_size, camera_angle_x, supersample, distortion, unbounded):
        count = hit.sum(-1)
        rgba[rows, :, :3] = colour.sum(-2) / count.clamp_min(1).float()[..., None]
        rgba[rows, :, 3] = count.float() / hit.shape[-1]
    return rgba


@torch.no_grad()
def render_depth(
    c2w: Tensor,
    image_size: int,
    camera_angle_x: float,
    *,
    distortion: Distortion = (0.0, 0.0, 0.0, 0.0),
    unbounded: bool = False,
) -> Tensor:
    """The z-depth [H,W] (float32, CPU) at each pixel centre, as an RGB-D capture records it: the distance along the
    camera's optical axis to what the pixel sees; 0 where it sees nothing. Arguments as for `render_view`."""
    _check_sizes(image_size, 1)
    depth = torch.zeros(image_size, image_size)
    for rows, cam, _, hit, distance in _traced_chunks(c2w, image_size, camera_angle_x, 1, distortion, unbounded):
        z = distance[..., 0] / cam[..., 0, :].norm(dim=-1)  # the camera-frame direction has z = -1
        depth[rows] = torch.where(hit[..., 0], z, 0.0)
    return depth
