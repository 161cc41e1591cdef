"""Ray encoding for the MobileR2L light field: K points per ray, each coordinate positionally encoded.

Every pixel of a low-resolution ray grid becomes one channel vector, so a whole frame is a single
``[B, C, h, w]`` image that the network eats in one forward pass.

Channel order (the contract an app re-implements from the exported JSON)
----------------------------------------------------------------------
For one ray with origin ``o`` and direction ``d`` (not necessarily unit length):

1. Depths with ``u_k = k / (K - 1)``, ``k = 0 .. K-1`` (both ends included; K = 1 gives ``t_0 = near``):
   ``t_k = near * (1 - u_k) + far * u_k`` in a bounded space; in a contracted space (teachers that see to
   infinity, e.g. nerfacto) evenly in disparity, ``1 / t_k = (1 - u_k) / near + u_k / far``. Points
   ``p_k = o + t_k * d``; in a contracted space each point is then contracted as nerfacto contracts space
   (L-infinity norm): ``p`` if ``|p|_inf <= 1``, else ``(2 - 1 / |p|_inf) * p / |p|_inf``, so every point
   lies in [-2, 2]^3.
2. Flatten the points point-major, xyz-minor into ``D = 3K`` coordinates::

       c = [p_0.x, p_0.y, p_0.z, p_1.x, p_1.y, p_1.z, ..., p_{K-1}.z]     (c[j], j = 3k + axis)

3. With ``L`` frequencies ``2^0 .. 2^(L-1)`` (no factor of pi), the ``C = D * (2L + 1)`` channels are::

       [sin(2^0 c), sin(2^1 c), ..., sin(2^(L-1) c),
        cos(2^0 c), cos(2^1 c), ..., cos(2^(L-1) c),
        c]

   i.e. channel ``i*D + j`` is ``sin(2^i c[j])``, channel ``(L + i)*D + j`` is ``cos(2^i c[j])``,
   and channel ``2L*D + j`` is ``c[j]`` itself.

Defaults K = 8, L = 6 give 8 * 3 * 13 = 312 channels. Everything is computed in float32: the sin/cos
arguments reach a few hundred radians, where bf16/fp16 cannot even represent the phase.
"""

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor


@dataclass
class RayEncodingConfig:
    num_points: int = 8
    """K: points sampled along each ray."""
    num_frequencies: int = 6
    """L: octaves of sin/cos per coordinate."""
    space: Literal["bounded", "contracted"] = "bounded"
    """bounded: points evenly in depth; contracted: evenly in disparity, then scene-contracted (set from the
    teacher: nerfacto-like teachers contract space)."""

    @property
    def num_channels(self) -> int:
        return self.num_points * 3 * (2 * self.num_frequencies + 1)


def sample_points(
    origins: Tensor,
    directions: Tensor,
    near: float | Tensor,
    far: float | Tensor,
    num_points: int,
    jitter: bool,
    generator: torch.Generator | None = None,
    disparity: bool = False,
) -> Tensor:
    """Points ``o + t d`` at K depths between near and far: ``[..., 3] -> [..., K, 3]`` (float32).

    ``near``/``far`` are floats or tensors broadcastable against ``origins[..., :1]`` (per-ray bounds,
    like nerfstudio's ``nears``/``fars`` of shape ``[..., 1]``). Without jitter the depths are evenly
    spaced (in disparity with ``disparity``) with both ends included. With jitter each depth is drawn uniformly
    inside its bin, the bins being bounded by midpoints between neighbours and clamped at near/far (stratified,
    as R2L's perturb).
    """
    origins, directions = origins.float(), directions.float()
    near = torch.as_tensor(near, dtype=torch.float32, device=origins.device)
    far = torch.as_tensor(far, dtype=torch.float32, device=origins.device)
    steps = torch.linspace(0.0, 1.0, num_points, device=origins.device).expand(*origins.shape[:-1], num_points)
    if jitter:
        mids = 0.5 * (steps[..., 1:] + steps[..., :-1])
        lower = torch.cat([steps[..., :1], mids], dim=-1)
        upper = torch.cat([mids, steps[..., -1:]], dim=-1)
        u = torch.rand(steps.shape, generator=generator, device=steps.device)
        steps = lower + (upper - lower) * u
    if disparity:
        depths = 1.0 / ((1.0 - steps) / near + steps / far)
    else:
        depths = near * (1.0 - steps) + far * steps  # [..., K]; this form hits near and far exactly
    return origins[..., None, :] + directions[..., None, :] * depths[..., :, None]


def contract(points: Tensor) -> Tensor:
    """nerfacto's scene contraction (L-infinity norm): the unit cube stays, everything else maps into [-2, 2]."""
    norm = points.abs().amax(dim=-1, keepdim=True).clamp_min(1e-6)
    return torch.where(norm <= 1.0, points, (2.0 - 1.0 / norm) * points / norm)


def positional_encoding(x: Tensor, num_frequencies: int) -> Tensor:
    """``[..., D] -> [..., D * (2L + 1)]`` as ``[sin(2^i x) for i<L, cos(2^i x) for i<L, x]`` (float32)."""
    x = x.float()
    freqs = 2.0 ** torch.arange(num_frequencies, dtype=torch.float32, device=x.device)
    scaled = (x[..., None, :] * freqs[:, None]).flatten(-2)  # frequency-major, coordinate-minor
    return torch.cat([torch.sin(scaled), torch.cos(scaled), x], dim=-1)


def encode_rays(
    origins: Tensor,
    directions: Tensor,
    near: float | Tensor,
    far: float | Tensor,
    config: RayEncodingConfig,
    jitter: bool = False,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Ray grid ``[B, h, w, 3]`` (origins, directions) -> network input ``[B, C, h, w]`` float32."""
    # An enclosing bf16/fp16 autocast must not touch the encoding (see module docstring).
    with torch.autocast(device_type=origins.device.type, enabled=False):
        contracted = config.space == "contracted"
        points = sample_points(origins, directions, near, far, config.num_points, jitter, generator, contracted)
        if contracted:
            points = contract(points)
        features = positional_encoding(points.flatten(-2), config.num_frequencies)  # [B, h, w, C]
    return features.permute(0, 3, 1, 2).contiguous()


def pinhole_rays(
    c2w: Tensor, fx: Tensor, fy: Tensor, cx: Tensor, cy: Tensor, height: int, width: int
) -> tuple[Tensor, Tensor]:
    """Rays through the pixel centres of pinhole cameras, as nerfstudio generates them: c2w [B, 3, 4]
    (OpenGL: x right, y up, looking along -z), intrinsics [B] in pixels -> origins, unit directions
    [B, height, width, 3] (float32). Plain tensor ops, so it also runs inside an exported graph."""
    c2w = c2w.float()
    v, u = torch.meshgrid(
        torch.arange(height, dtype=torch.float32, device=c2w.device) + 0.5,
        torch.arange(width, dtype=torch.float32, device=c2w.device) + 0.5,
        indexing="ij",
    )
    x = (u[None] - cx.float()[:, None, None]) / fx.float()[:, None, None]
    y = -(v[None] - cy.float()[:, None, None]) / fy.float()[:, None, None]
    camera_dirs = torch.stack([x, y, -torch.ones_like(x)], dim=-1)  # [B, h, w, 3]
    directions = torch.einsum("bij,bhwj->bhwi", c2w[:, :3, :3], camera_dirs)
    directions = directions / directions.norm(dim=-1, keepdim=True)
    origins = c2w[:, None, None, :3, 3].expand_as(directions)
    return origins, directions
