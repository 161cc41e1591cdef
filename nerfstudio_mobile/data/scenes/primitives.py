"""Convex solids with analytic ray intersection: the building blocks of the synthetic scene.

Rays are passed as separate x/y/z components ("structure of arrays"): elementwise ops on contiguous [N] tensors
are much faster on CPU than reductions over a trailing dimension of size 3, and a shared camera origin stays a
plain Python float. Every solid is convex and every ray starts outside it (cameras are outside the scene; shadow
rays start slightly off the lit side of a surface), so only the entry point of each solid is needed.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch
from torch import Tensor

Scalar = Tensor | float
Vec3 = tuple[Scalar, Scalar, Scalar]

TextureFn = Callable[[Tensor, Tensor], Tensor]
"""(local hit points [N,3], local normals [N,3]) -> albedo [N,3] in [0,1]."""

EPS = 1e-4
"""Hits closer than this are the surface a ray starts on, not a new entry point."""


def rotation(axis: tuple[float, float, float], degrees: float) -> np.ndarray:
    """Rodrigues rotation matrix (columns = local axes expressed in world coordinates)."""
    a = np.asarray(axis, dtype=np.float64)
    a = a / np.linalg.norm(a)
    th = math.radians(degrees)
    k = np.array([[0.0, -a[2], a[1]], [a[2], 0.0, -a[0]], [-a[1], a[0], 0.0]])
    return np.eye(3) + math.sin(th) * k + (1.0 - math.cos(th)) * (k @ k)


class Primitive:
    """A textured convex solid: ``intersect`` gives the ray entry parameter, ``surface`` shading inputs."""

    lo: tuple[float, float, float]
    hi: tuple[float, float, float]
    """Axis-aligned bounds, used to skip rays that miss the whole scene."""

    def intersect(self, o: Vec3, d: Vec3) -> Tensor:
        """Ray parameter t > 0 where the ray enters the solid, +inf on a miss. Components broadcast to [N]."""
        raise NotImplementedError

    def surface(self, p: Tensor) -> tuple[Tensor, Tensor]:
        """World normals [N,3] and albedo [N,3] at world points p [N,3] lying on this primitive."""
        raise NotImplementedError


class Sphere(Primitive):
    def __init__(self, center: tuple[float, float, float], radius: float, texture: TextureFn) -> None:
        self.center, self.radius, self.texture = center, radius, texture
        self.lo = tuple(c - radius for c in center)  # type: ignore[assignment]
        self.hi = tuple(c + radius for c in center)  # type: ignore[assignment]

    def intersect(self, o: Vec3, d: Vec3) -> Tensor:
        ox, oy, oz = (o[i] - self.center[i] for i in range(3))
        b = ox * d[0] + oy * d[1] + oz * d[2]
        c = ox * ox + oy * oy + oz * oz - self.radius**2
        disc = b * b - c
        assert isinstance(disc, Tensor)
        t = -b - torch.sqrt(disc.clamp_min(0.0))
        return torch.where((disc >= 0.0) & (t > EPS), t, math.inf)

    def surface(self, p: Tensor) -> tuple[Tensor, Tensor]:
        local = p - torch.tensor(self.center)
        n = local / self.radius
        return n, self.texture(local, n)


class Box(Primitive):
    """Oriented box: ``rotation`` columns are the box axes in world coordinates."""

    def __init__(
        self,
        center: tuple[float, float, float],
        half: tuple[float, float, float],
        texture: TextureFn,
        rotation: np.ndarray | None = None,
    ) -> None:
        self.center, self.half, self.texture = center, half, texture
        self.rot = None if rotation is None else [[float(v) for v in row] for row in rotation]
        extent = np.abs(np.eye(3) if rotation is None else rotation) @ np.asarray(half)
        self.lo = tuple(float(c - e) for c, e in zip(center, extent, strict=True))  # type: ignore[assignment]
        self.hi = tuple(float(c + e) for c, e in zip(center, extent, strict=True))  # type: ignore[assignment]

    def _to_local(self, x: Scalar, y: Scalar, z: Scalar) -> Vec3:
        if self.rot is None:
            return x, y, z
        r = self.rot  # local = R^T world
        return (
            r[0][0] * x + r[1][0] * y + r[2][0] * z,
            r[0][1] * x + r[1][1] * y + r[2][1] * z,
            r[0][2] * x + r[1][2] * y + r[2][2] * z,
        )

    def intersect(self, o: Vec3, d: Vec3) -> Tensor:
        ol = self._to_local(*(o[i] - self.center[i] for i in range(3)))
        dl = self._to_local(*d)
        t_near: Tensor | None = None
        t_far: Tensor | None = None
        for a in range(3):
            inv = 1.0 / dl[a]  # +-inf for axis-parallel rays; a NaN (ray in a face plane) counts as a miss
            t1, t2 = (-self.half[a] - ol[a]) * inv, (self.half[a] - ol[a]) * inv
            assert isinstance(t1, Tensor) and isinstance(t2, Tensor)
            lo, hi = torch.minimum(t1, t2), torch.maximum(t1, t2)
            t_near = lo if t_near is None else torch.maximum(t_near, lo)
            t_far = hi if t_far is None else torch.minimum(t_far, hi)
        assert t_near is not None and t_far is not None
        return torch.where((t_near <= t_far) & (t_near > EPS), t_near, math.inf)

    def surface(self, p: Tensor) -> tuple[Tensor, Tensor]:
        rot = torch.eye(3) if self.rot is None else torch.tensor(self.rot)
        local = (p - torch.tensor(self.center)) @ rot  # R^T (p - c) for each row
        axis = (local.abs() / torch.tensor(self.half)).argmax(-1)
        n_local = torch.nn.functional.one_hot(axis, 3).float() * torch.sign(local)
        return n_local @ rot.T, self.texture(local, n_local)


class Cylinder(Primitive):
    """Capped cylinder with a vertical (world z) axis."""

    def __init__(self, center_xy: tuple[float, float], radius: float, z0: float, z1: float, texture: TextureFn) -> None:
        self.cx, self.cy = center_xy
        self.radius, self.z0, self.z1, self.texture = radius, z0, z1, texture
        self.lo = (self.cx - radius, self.cy - radius, z0)
        self.hi = (self.cx + radius, self.cy + radius, z1)

    def intersect(self, o: Vec3, d: Vec3) -> Tensor:
        ox, oy, oz = o[0] - self.cx, o[1] - self.cy, o[2]
        dx, dy, dz = d
        a = (dx * dx + dy * dy).clamp_min(1e-12)  # type: ignore[union-attr]
        b = ox * dx + oy * dy
        c = ox * ox + oy * oy - self.radius**2
        disc = b * b - a * c
        t = (-b - torch.sqrt(disc.clamp_min(0.0))) / a
        z = oz + t * dz
        t = torch.where((disc >= 0.0) & (t > EPS) & (z >= self.z0) & (z <= self.z1), t, math.inf)
        # Only the cap facing the ray can be its entry point.
        t_cap = (torch.where(dz < 0.0, self.z1, self.z0) - oz) / dz
        px, py = ox + t_cap * dx, oy + t_cap * dy
        on_cap = (t_cap > EPS) & (px * px + py * py <= self.radius**2) & (t_cap < t)
        return torch.where(on_cap, t_cap, t)

    def surface(self, p: Tensor) -> tuple[Tensor, Tensor]:
        local = p - torch.tensor([self.cx, self.cy, 0.5 * (self.z0 + self.z1)])
        r = torch.sqrt(local[:, 0] ** 2 + local[:, 1] ** 2)
        on_cap = (local[:, 2].abs() - 0.5 * (self.z1 - self.z0)).abs() < (r - self.radius).abs()
        side_n = torch.stack([local[:, 0], local[:, 1], torch.zeros_like(r)], -1) / r.clamp_min(1e-9)[:, None]
        cap_n = torch.zeros_like(local)
        cap_n[:, 2] = torch.sign(local[:, 2])
        n = torch.where(on_cap[:, None], cap_n, side_n)
        return n, self.texture(local, n)
