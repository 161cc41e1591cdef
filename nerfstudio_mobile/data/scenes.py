"""Offline generator of small synthetic scenes in Blender (NeRF-synthetic) format.

Tests, demos and users must be able to train and evaluate without downloading anything, so we render
our own scenes with our own code. The scene has real geometry (spheres, rotated boxes, capped cylinders,
a ground slab) and procedural textures (checkerboards, stripes, gradients) with Lambert + ambient
shading and hard shadows from a fixed light, so a trained NeRF's PSNR measures something real rather
than the colour of a flat blob.

The output is exactly what nerfstudio's ``blender-data`` dataparser reads::

    <output_dir>/
        transforms_{train,val,test}.json   # {"camera_angle_x": ..., "frames": [{"file_path": "./train/r_0",
                                           #   "transform_matrix": 4x4 camera-to-world}, ...]}
        {train,val,test}/r_<i>.png         # RGBA, straight (non-premultiplied) alpha, background alpha = 0
        scene.json                         # the config that produced the scene (used for reuse checks)

Cameras follow the Blender/OpenGL convention: the columns of the camera-to-world rotation are camera
right, up and back, so a camera looks along -z of its own frame. World +z is up.

Ground-truth depth is not written to disk (to keep the Blender layout clean); call :func:`render_view`
to get RGBA plus depth for any camera.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import imageio.v2 as imageio
import numpy as np
import torch
import tyro
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from torch import Tensor

__all__ = [
    "SceneConfig",
    "camera_poses",
    "entrypoint",
    "focal_length",
    "generate_scene",
    "render_view",
]

CONSOLE = Console()

SCENE_FORMAT_VERSION = 1
"""Bumped whenever the rendered content changes, so a stale scene on disk is never silently reused."""

SPLITS: tuple[str, ...] = ("train", "val", "test")
CAMERA_RADIUS = 4.0
"""Distance of the cameras from the origin; matches Blender lego (nerfstudio uses near 2, far 6)."""

_MAX_SAMPLES_PER_CHUNK = 1 << 18
"""Sub-pixel rays traced at once; bounds memory (~100 MB peak) independently of the image size."""

_EPS = 1e-4


# ----------------------------------------------------------------------------------------------------------
# Configuration
# ----------------------------------------------------------------------------------------------------------


def _check_int(name: str, value: Any, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")


@dataclass
class SceneConfig:
    """Render a small synthetic scene in Blender (NeRF-synthetic) format, fully offline.

    Every field except output_dir and overwrite determines the rendered bytes (recorded in scene.json).
    """

    output_dir: Path = Path("data/nsm-synthetic")
    """Directory the scene is written to (created atomically)."""
    layout: Literal["360", "forward-facing"] = "360"
    """'360': cameras on the upper hemisphere looking at the origin (like Blender lego); 'forward-facing':
    cameras in a small rectangle in front of the scene, all looking the same way (like LLFF)."""
    image_size: int = 100
    """Square images, H = W = image_size."""
    num_train: int = 100
    """Number of training views."""
    num_val: int = 8
    """Number of validation views."""
    num_test: int = 8
    """Number of test views."""
    camera_angle_x: float = 0.6911112070083618
    """Horizontal field of view in radians (Blender lego's)."""
    supersample: int = 3
    """Antialiasing: supersample x supersample rays per pixel, so alpha edges are soft like real renders."""
    seed: int = 0
    """Seed of the training camera positions (the only random part of the scene)."""
    overwrite: bool = False
    """Replace an existing, different scene in output_dir."""

    def __post_init__(self) -> None:
        self.output_dir = Path(self.output_dir)
        self.validate()

    def validate(self) -> None:
        """Raise ValueError on values that cannot produce a usable scene (checked before any work is done)."""
        if self.layout not in ("360", "forward-facing"):
            raise ValueError(f"layout must be '360' or 'forward-facing', got {self.layout!r}")
        _check_int("image_size", self.image_size, 8)
        for name in ("num_train", "num_val", "num_test"):
            _check_int(name, getattr(self, name), 1)
        _check_int("supersample", self.supersample, 1)
        _check_int("seed", self.seed, 0)
        if not (0.0 < float(self.camera_angle_x) < math.pi):
            raise ValueError(f"camera_angle_x must be in (0, pi) radians, got {self.camera_angle_x!r}")

    def content_dict(self) -> dict[str, Any]:
        """The fields that determine the rendered bytes; this is what reuse of an existing scene compares."""
        d = asdict(self)
        d.pop("output_dir")
        d.pop("overwrite")
        d["camera_angle_x"] = float(d["camera_angle_x"])
        return d

    def split_sizes(self) -> dict[str, int]:
        return {"train": self.num_train, "val": self.num_val, "test": self.num_test}


# ----------------------------------------------------------------------------------------------------------
# Geometry: primitives with analytic ray intersection
# ----------------------------------------------------------------------------------------------------------
#
# Rays are passed as separate x/y/z components ("structure of arrays"): elementwise ops on contiguous
# [N] tensors are several times faster on CPU than reductions over a trailing dimension of size 3, and a
# shared camera origin stays a plain Python float. Every solid is convex and every ray starts outside it
# (cameras are outside the scene; shadow rays start slightly off the lit side of a surface), so only the
# entry point of each solid is needed.

Scalar = Tensor | float
Vec3 = tuple[Scalar, Scalar, Scalar]

TextureFn = Callable[[Tensor, Tensor], Tensor]
"""(local hit points [N,3], local normals [N,3]) -> albedo [N,3] in [0,1]."""


def _rgb(r: float, g: float, b: float) -> Tensor:
    return torch.tensor([r, g, b], dtype=torch.float32)


def _lerp(a: Tensor, b: Tensor, w: Tensor) -> Tensor:
    return a + (b - a) * w[..., None]


def _checker(*coords: Tensor) -> Tensor:
    """1.0 on 'odd' cells of a unit-cell checkerboard over the given (pre-scaled) coordinates, else 0.0."""
    total = torch.floor(coords[0])
    for c in coords[1:]:
        total = total + torch.floor(c)
    return torch.remainder(total, 2.0)


def _rotation(axis: tuple[float, float, float], degrees: float) -> np.ndarray:
    """Rodrigues rotation matrix (columns = local axes expressed in world coordinates)."""
    a = np.asarray(axis, dtype=np.float64)
    a = a / np.linalg.norm(a)
    th = math.radians(degrees)
    k = np.array([[0.0, -a[2], a[1]], [a[2], 0.0, -a[0]], [-a[1], a[0], 0.0]])
    return np.eye(3) + math.sin(th) * k + (1.0 - math.cos(th)) * (k @ k)


class _Primitive:
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


class _Sphere(_Primitive):
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
        return torch.where((disc >= 0.0) & (t > _EPS), t, math.inf)

    def surface(self, p: Tensor) -> tuple[Tensor, Tensor]:
        local = p - torch.tensor(self.center)
        n = local / self.radius
        return n, self.texture(local, n)


class _Box(_Primitive):
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
        return torch.where((t_near <= t_far) & (t_near > _EPS), t_near, math.inf)

    def surface(self, p: Tensor) -> tuple[Tensor, Tensor]:
        rot = torch.eye(3) if self.rot is None else torch.tensor(self.rot)
        local = (p - torch.tensor(self.center)) @ rot  # R^T (p - c) for each row
        axis = (local.abs() / torch.tensor(self.half)).argmax(-1)
        n_local = torch.nn.functional.one_hot(axis, 3).float() * torch.sign(local)
        return n_local @ rot.T, self.texture(local, n_local)


class _Cylinder(_Primitive):
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
        t = torch.where((disc >= 0.0) & (t > _EPS) & (z >= self.z0) & (z <= self.z1), t, math.inf)
        # Only the cap facing the ray can be its entry point.
        t_cap = (torch.where(dz < 0.0, self.z1, self.z0) - oz) / dz
        px, py = ox + t_cap * dx, oy + t_cap * dy
        on_cap = (t_cap > _EPS) & (px * px + py * py <= self.radius**2) & (t_cap < t)
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


# ---- procedural textures (scales chosen so a ~100 px image resolves them: cells >= ~8 px) ----


def _tex_ground(p: Tensor, n: Tensor) -> Tensor:
    """Cream / slate-blue checkerboard on top with a radial fall-off; brown banded sides."""
    top = _lerp(_rgb(0.92, 0.87, 0.74), _rgb(0.22, 0.33, 0.58), _checker(p[:, 0] / 0.275, p[:, 1] / 0.275))
    top = top * (1.0 - 0.3 * (p[:, :2].norm(dim=-1) / 1.6))[:, None]
    sides = _lerp(_rgb(0.50, 0.32, 0.18), _rgb(0.30, 0.18, 0.10), _checker((p[:, 0] + p[:, 1]) / 0.2))
    return torch.where((n[:, 2] > 0.5)[:, None], top, sides)


def _tex_globe(p: Tensor, n: Tensor) -> Tensor:
    """Longitude stripes alternating a red->yellow and a teal->blue latitude gradient."""
    lon = torch.atan2(n[:, 1], n[:, 0])
    h = 0.5 * (n[:, 2] + 1.0)
    warm = _lerp(_rgb(0.85, 0.15, 0.12), _rgb(0.98, 0.85, 0.20), h)
    cool = _lerp(_rgb(0.05, 0.50, 0.55), _rgb(0.20, 0.25, 0.85), h)
    return _lerp(warm, cool, _checker(lon / (2.0 * math.pi) * 12.0))


def _tex_ball(p: Tensor, n: Tensor) -> Tensor:
    """Purple / pale checkerboard in latitude-longitude."""
    lon = torch.atan2(n[:, 1], n[:, 0])
    lat = torch.asin(n[:, 2].clamp(-1.0, 1.0))
    return _lerp(_rgb(0.95, 0.90, 0.95), _rgb(0.45, 0.18, 0.65), _checker(lon / (math.pi / 5), lat / (math.pi / 6)))


_FACE_COLOURS = torch.tensor(
    [
        [0.90, 0.45, 0.10],  # -x orange
        [0.20, 0.60, 0.25],  # -y green
        [0.85, 0.80, 0.15],  # -z yellow
        [0.70, 0.15, 0.45],  # +x magenta
        [0.15, 0.45, 0.80],  # +y blue
        [0.85, 0.85, 0.85],  # +z light grey
    ]
)


def _tex_box(p: Tensor, n: Tensor) -> Tensor:
    """A distinct colour per face with darker diagonal stripes, so box orientation is visible."""
    axis = n.abs().argmax(-1)
    face = axis + 3 * (n.gather(-1, axis[:, None])[:, 0] > 0).long()
    base = _FACE_COLOURS[face]
    u = p.sum(-1)  # diagonal stripes on every face
    shade = 1.0 - 0.45 * _checker(u / 0.11)
    return base * shade[:, None]


def _tex_column(p: Tensor, n: Tensor) -> Tensor:
    """Green / white rings with an angular gradient; orange caps."""
    theta = torch.atan2(p[:, 1], p[:, 0])
    rings = _lerp(_rgb(0.92, 0.92, 0.86), _rgb(0.15, 0.62, 0.30), _checker(p[:, 2] / 0.12))
    rings = rings * (0.75 + 0.25 * torch.cos(theta))[:, None]
    cap = torch.ones_like(p) * _rgb(0.95, 0.55, 0.15)
    return torch.where((n[:, 2].abs() > 0.5)[:, None], cap, rings)


def _tex_pedestal(p: Tensor, n: Tensor) -> Tensor:
    return _lerp(_rgb(0.35, 0.35, 0.38), _rgb(0.75, 0.75, 0.78), (p[:, 2] + 0.2) / 0.4)


def _build_scene() -> list[_Primitive]:
    """The fixed scene: everything lies inside [-1.1, 1.1] x [-1.1, 1.1] x [-1.0, 0.5].

    The textured "globe" sphere of radius 0.5 is centred exactly at the origin with nothing above it, so
    a camera straight above at height h sees it at depth h - 0.5 (a handy ground-truth check).
    """
    return [
        _Box((0.0, 0.0, -0.925), (1.1, 1.1, 0.075), _tex_ground),  # ground slab, top at z = -0.85
        _Sphere((0.0, 0.0, 0.0), 0.5, _tex_globe),
        _Cylinder((0.0, 0.0), 0.12, -0.85, -0.45, _tex_pedestal),
        _Box((0.6, -0.55, -0.6), (0.25, 0.22, 0.25), _tex_box, _rotation((0.0, 0.0, 1.0), 30.0)),
        _Box((-0.55, -0.55, -0.5), (0.17, 0.17, 0.17), _tex_box, _rotation((1.0, 1.0, 0.0), 35.0)),
        _Sphere((0.55, 0.6, -0.57), 0.28, _tex_ball),
        _Cylinder((-0.65, 0.5), 0.2, -0.85, 0.35, _tex_column),
    ]


_SCENE: list[_Primitive] = _build_scene()
_KEY_LIGHT = torch.nn.functional.normalize(torch.tensor([0.45, -0.35, 0.82]), dim=0)
"""Direction towards the key light (casts shadows); the fill light only softens the unlit sides."""
_FILL_LIGHT = torch.nn.functional.normalize(torch.tensor([-0.6, 0.5, 0.3]), dim=0)
_AMBIENT, _KEY, _FILL = 0.22, 0.75, 0.2


def _scene_bounds() -> tuple[tuple[float, ...], tuple[float, ...]]:
    lo = tuple(min(prim.lo[a] for prim in _SCENE) for a in range(3))
    hi = tuple(max(prim.hi[a] for prim in _SCENE) for a in range(3))
    return lo, hi


_SCENE_LO, _SCENE_HI = _scene_bounds()


def _hits_bounds(o: Vec3, d: Vec3) -> Tensor:
    """Cheap slab test against the scene's bounding box, to skip background rays entirely."""
    t_near: Tensor | None = None
    t_far: Tensor | None = None
    for a in range(3):
        inv = 1.0 / d[a]
        t1, t2 = (_SCENE_LO[a] - o[a]) * inv, (_SCENE_HI[a] - o[a]) * inv
        assert isinstance(t1, Tensor) and isinstance(t2, Tensor)
        lo, hi = torch.minimum(t1, t2), torch.maximum(t1, t2)
        t_near = lo if t_near is None else torch.maximum(t_near, lo)
        t_far = hi if t_far is None else torch.minimum(t_far, hi)
    assert t_near is not None and t_far is not None
    return (t_near <= t_far) & (t_far > 0.0)


def _shade(origin: tuple[float, float, float], d: Tensor) -> tuple[Tensor, Tensor]:
    """Trace rays from one origin along unit directions d [N,3]: colour [N,3] (0 on miss), distance t [N]."""
    colour = torch.zeros_like(d)
    t = torch.full(d.shape[:1], math.inf)
    comps = (d[:, 0].contiguous(), d[:, 1].contiguous(), d[:, 2].contiguous())
    active = _hits_bounds(origin, comps).nonzero()[:, 0]
    if active.numel() == 0:
        return colour, t
    da = tuple(c[active] for c in comps)
    t_a = torch.full_like(da[0], math.inf)
    idx = torch.zeros_like(active)
    for k, prim in enumerate(_SCENE):
        t_k = prim.intersect(origin, da)
        closer = t_k < t_a
        t_a = torch.where(closer, t_k, t_a)
        idx = torch.where(closer, k, idx)
    hit = torch.isfinite(t_a)
    rays, t_hit, idx = active[hit], t_a[hit], idx[hit]
    t[rays] = t_hit
    if rays.numel() == 0:
        return colour, t
    p = torch.tensor(origin, dtype=torch.float32) + t_hit[:, None] * d[rays]
    normals = torch.zeros_like(p)
    albedo = torch.zeros_like(p)
    for k, prim in enumerate(_SCENE):
        m = (idx == k).nonzero()[:, 0]
        if m.numel():
            normals[m], albedo[m] = prim.surface(p[m])
    key = (normals * _KEY_LIGHT).sum(-1).clamp_min(0.0)
    lit = (key > 0.0).nonzero()[:, 0]
    if lit.numel():  # hard shadows; a convex surface lit from outside cannot shadow itself
        so = p[lit] + 1e-3 * normals[lit]
        s_origin = (so[:, 0].contiguous(), so[:, 1].contiguous(), so[:, 2].contiguous())
        s_dir = (
            torch.full_like(so[:, 0], float(_KEY_LIGHT[0])),
            torch.full_like(so[:, 0], float(_KEY_LIGHT[1])),
            torch.full_like(so[:, 0], float(_KEY_LIGHT[2])),
        )
        occluded = torch.zeros(lit.shape, dtype=torch.bool)
        for prim in _SCENE:
            occluded |= torch.isfinite(prim.intersect(s_origin, s_dir))
        key[lit] = torch.where(occluded, 0.0, key[lit])
    fill = (normals * _FILL_LIGHT).sum(-1).clamp_min(0.0)
    light = _AMBIENT + _KEY * key + _FILL * fill
    colour[rays] = (albedo * light[:, None]).clamp(0.0, 1.0)
    return colour, t


# ----------------------------------------------------------------------------------------------------------
# Rendering
# ----------------------------------------------------------------------------------------------------------


def focal_length(image_size: int, camera_angle_x: float) -> float:
    """Focal length in pixels exactly as nerfstudio's Blender dataparser derives it."""
    return 0.5 * image_size / math.tan(0.5 * camera_angle_x)


@contextmanager
def _single_thread() -> Iterator[None]:
    """Run torch ops on one intra-op thread, restoring the caller's setting afterwards.

    The renderer issues many small elementwise ops; with several OpenMP threads on a busy 2-core machine
    the spin-waiting made it 3-10x slower than a single thread (measured), and one thread is never much
    slower at these sizes.
    """
    previous = torch.get_num_threads()
    if previous != 1:
        torch.set_num_threads(1)
    try:
        yield
    finally:
        if previous != 1:
            torch.set_num_threads(previous)


@torch.no_grad()
def render_view(
    c2w: Tensor,
    image_size: int,
    camera_angle_x: float,
    supersample: int = 3,
    depth_mode: Literal["z", "ray"] = "z",
) -> tuple[Tensor, Tensor]:
    """Render the synthetic scene from one camera: RGBA [H,W,4] in [0,1] and depth [H,W] (float32, CPU).

    Args:
        c2w: camera-to-world, [3,4] or [4,4], Blender/OpenGL convention (columns right, up, back).
            The camera must be outside the solids (anywhere around the scene is fine).
        image_size: H = W in pixels. Pixel (i, j) covers [j, j+1] x [i, i+1] with the principal point at
            the image centre, the same model nerfstudio uses for Blender data (its rays pass through
            j + 0.5, i + 0.5).
        camera_angle_x: horizontal field of view in radians.
        supersample: s x s stratified sub-pixel rays per pixel (an odd s keeps a ray at the pixel centre).
        depth_mode: "z" (default): distance along the camera's viewing axis (-z of the camera frame), a
            conventional z-buffer depth. "ray": Euclidean distance from the camera centre along the ray,
            which is what nerfstudio's rendered ``depth`` estimates (its ray directions have unit norm);
            ray = z * sqrt(1 + x^2 + y^2) with x = (j + 0.5 - W/2) / f, y = (i + 0.5 - H/2) / f.

    Returns:
        rgba: straight (non-premultiplied) colour; alpha = fraction of sub-pixel rays that hit geometry,
            colour = mean colour of those rays (0 where alpha = 0).
        depth: mean depth of the sub-pixel rays that hit geometry; +inf where alpha = 0.
    """
    if depth_mode not in ("z", "ray"):
        raise ValueError(f"depth_mode must be 'z' or 'ray', got {depth_mode!r}")
    if image_size < 1 or supersample < 1:
        raise ValueError("image_size and supersample must be >= 1")
    with _single_thread():
        return _render(c2w, int(image_size), float(camera_angle_x), int(supersample), depth_mode)


def _render(
    c2w: Tensor, size: int, camera_angle_x: float, s: int, depth_mode: Literal["z", "ray"]
) -> tuple[Tensor, Tensor]:
    c2w = torch.as_tensor(c2w, dtype=torch.float32).cpu()
    rot = c2w[:3, :3]
    origin = (float(c2w[0, 3]), float(c2w[1, 3]), float(c2w[2, 3]))
    ss = s * s
    f = focal_length(size, camera_angle_x)
    offsets = (torch.arange(s, dtype=torch.float32) + 0.5) / s
    sub_y, sub_x = (g.reshape(-1) for g in torch.meshgrid(offsets, offsets, indexing="ij"))  # [s*s]
    cols = torch.arange(size, dtype=torch.float32)
    x = (cols[None, :, None] + sub_x[None, None, :] - 0.5 * size) / f  # [1, W, s*s]
    rows_per_chunk = max(1, _MAX_SAMPLES_PER_CHUNK // (size * ss))

    rgba = torch.zeros(size, size, 4)
    depth = torch.full((size, size), math.inf)
    for r0 in range(0, size, rows_per_chunk):
        rows = torch.arange(r0, min(size, r0 + rows_per_chunk), dtype=torch.float32)
        y = -(rows[:, None, None] + sub_y[None, None, :] - 0.5 * size) / f  # [R, 1, s*s]
        xx, yy = torch.broadcast_tensors(x, y)
        cam = torch.stack([xx, yy, -torch.ones_like(xx)], -1).reshape(-1, 3)  # [R*W*s*s, 3]
        norm = cam.norm(dim=-1)
        # Elementwise, not a matmul, so the bytes never depend on BLAS threading (deterministic PNGs).
        world = cam[:, :1] * rot[:, 0] + cam[:, 1:2] * rot[:, 1] + cam[:, 2:] * rot[:, 2]
        dirs = torch.nn.functional.normalize(world, dim=-1)  # also tolerates a slightly scaled c2w
        colour, t = _shade(origin, dirs)
        n_rows = rows.shape[0]
        colour, t, norm = (
            colour.view(n_rows, size, ss, 3),
            t.view(n_rows, size, ss),
            norm.view(n_rows, size, ss),
        )
        hit = torch.isfinite(t)
        count = hit.sum(-1)
        safe = count.clamp_min(1).float()
        d = t if depth_mode == "ray" else t / norm
        mean_depth = torch.where(hit, d, 0.0).sum(-1) / safe
        out = slice(r0, r0 + n_rows)
        rgba[out, :, :3] = colour.sum(-2) / safe[..., None]
        rgba[out, :, 3] = count.float() / ss
        depth[out] = torch.where(count > 0, mean_depth, math.inf)
    return rgba, depth


# ----------------------------------------------------------------------------------------------------------
# Cameras
# ----------------------------------------------------------------------------------------------------------


def _c2w_from_forward(position: np.ndarray, forward: np.ndarray) -> np.ndarray:
    """4x4 Blender-convention camera-to-world looking along ``forward`` with world +z as up."""
    back = -forward / np.linalg.norm(forward)
    right = np.cross(np.array([0.0, 0.0, 1.0]), back)
    right /= np.linalg.norm(right)
    up = np.cross(back, right)
    c2w = np.eye(4)
    c2w[:3, 0], c2w[:3, 1], c2w[:3, 2], c2w[:3, 3] = right, up, back, position
    return c2w


def _spherical(azimuth: float, elevation: float, radius: float = CAMERA_RADIUS) -> np.ndarray:
    ce = math.cos(elevation)
    return radius * np.array([ce * math.cos(azimuth), ce * math.sin(azimuth), math.sin(elevation)])


def camera_poses(config: SceneConfig) -> dict[str, np.ndarray]:
    """Camera-to-world matrices [N,4,4] (float64) per split for ``config``'s layout and seed.

    360: train cameras uniformly (by area) on the band of the upper hemisphere between 5 and 80 degrees
    of elevation, radius 4, looking at the origin; val/test on a 30-degree turntable ring, test azimuths
    offset half a step from val's so the two splits are distinct views.

    forward-facing: the central camera sits at radius 4, 20 degrees above the -y side, looking at the
    origin; train centres are uniform in a 0.9 x 0.6 rectangle in that camera's image plane with up to
    1.5 degrees of yaw/pitch jitter; val/test centres are evenly spaced on an ellipse inside the same
    rectangle (interleaved with the train centres) with the central camera's orientation.
    """
    rng = np.random.default_rng(config.seed)
    n = config.split_sizes()
    poses: dict[str, list[np.ndarray]] = {split: [] for split in SPLITS}
    if config.layout == "360":
        z_lo, z_hi = math.sin(math.radians(5.0)), math.sin(math.radians(80.0))
        for _ in range(n["train"]):
            azimuth = rng.uniform(0.0, 2.0 * math.pi)
            elevation = math.asin(rng.uniform(z_lo, z_hi))
            pos = _spherical(azimuth, elevation)
            poses["train"].append(_c2w_from_forward(pos, -pos))
        for split, phase in (("val", 0.0), ("test", 0.5)):
            for i in range(n[split]):
                pos = _spherical(2.0 * math.pi * (i + phase) / n[split], math.radians(30.0))
                poses[split].append(_c2w_from_forward(pos, -pos))
    else:
        centre = _spherical(-0.5 * math.pi, math.radians(20.0))
        base = _c2w_from_forward(centre, -centre)
        right, up, forward = base[:3, 0], base[:3, 1], -base[:3, 2]
        half_w, half_h = 0.45, 0.3
        max_jitter = math.tan(math.radians(1.5))
        for _ in range(n["train"]):
            u, v = rng.uniform(-1.0, 1.0, size=2)
            yaw, pitch = rng.uniform(-max_jitter, max_jitter, size=2)
            pos = centre + u * half_w * right + v * half_h * up
            poses["train"].append(_c2w_from_forward(pos, forward + yaw * right + pitch * up))
        for split, phase in (("val", 0.0), ("test", 0.5)):
            for i in range(n[split]):
                a = 2.0 * math.pi * (i + phase) / n[split]
                pos = centre + 0.7 * (math.cos(a) * half_w * right + math.sin(a) * half_h * up)
                poses[split].append(_c2w_from_forward(pos, forward))
    return {split: np.stack(p) for split, p in poses.items()}


# ----------------------------------------------------------------------------------------------------------
# Writing the dataset
# ----------------------------------------------------------------------------------------------------------


def _scene_record(config: SceneConfig) -> dict[str, Any]:
    return {
        "generator": "nerfstudio_mobile.data.scenes",
        "format_version": SCENE_FORMAT_VERSION,
        "config": config.content_dict(),
    }


def _existing_state(path: Path, config: SceneConfig) -> tuple[str, str]:
    """Classify what is at ``path``: ("absent"|"complete"|"other", human-readable reason)."""
    if not path.exists():
        return "absent", ""
    if not path.is_dir():
        return "other", "it is a file, not a directory"
    if not any(path.iterdir()):
        return "absent", ""
    record_path = path / "scene.json"
    if not record_path.is_file():
        return "other", "it has no scene.json (not a scene made by this generator)"
    try:
        record = json.loads(record_path.read_text())
    except (OSError, ValueError):
        return "other", "its scene.json is unreadable"
    expected = _scene_record(config)
    if record != expected:
        old = record.get("config", {}) if isinstance(record, dict) else {}
        diffs = [f"{k}: {old.get(k)!r} -> {v!r}" for k, v in expected["config"].items() if old.get(k) != v] or [
            "generator format version"
        ]
        return "other", "it holds a scene made with a different config (" + "; ".join(diffs) + ")"
    for split in SPLITS:
        try:
            meta = json.loads((path / f"transforms_{split}.json").read_text())
        except (OSError, ValueError):
            return "other", f"transforms_{split}.json is missing or unreadable"
        if len(meta.get("frames", [])) != config.split_sizes()[split]:
            return "other", f"transforms_{split}.json has the wrong number of frames"
        for frame in meta["frames"]:
            if not (path / (frame["file_path"].replace("./", "", 1) + ".png")).is_file():
                return "other", f"image {frame['file_path']}.png is missing"
    return "complete", ""


def _looks_like_dataset(path: Path) -> bool:
    """Only directories that look like Blender-format scenes may be deleted by ``overwrite``."""
    return path.is_dir() and ((path / "scene.json").exists() or any(path.glob("transforms_*.json")))


def _to_png_bytes_array(rgba: Tensor) -> np.ndarray:
    return (rgba.clamp(0.0, 1.0) * 255.0 + 0.5).floor().to(torch.uint8).numpy()


def _write_scene(config: SceneConfig, root: Path) -> None:
    poses = camera_poses(config)
    total = sum(len(p) for p in poses.values())
    with (
        _single_thread(),
        Progress(
            TextColumn("[bold blue]Rendering {task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=CONSOLE,
            transient=False,
        ) as progress,
    ):
        task = progress.add_task(f"{config.layout} scene", total=total)
        for split in SPLITS:
            (root / split).mkdir()
            frames = []
            for i, c2w in enumerate(poses[split]):
                rgba, _ = render_view(
                    torch.from_numpy(c2w), config.image_size, config.camera_angle_x, config.supersample
                )
                imageio.imwrite(root / split / f"r_{i}.png", _to_png_bytes_array(rgba), format="png")
                frames.append({"file_path": f"./{split}/r_{i}", "transform_matrix": c2w.tolist()})
                progress.advance(task)
            meta = {"camera_angle_x": float(config.camera_angle_x), "frames": frames}
            (root / f"transforms_{split}.json").write_text(json.dumps(meta, indent=2) + "\n")
    # Written last: its presence (after the atomic rename) is what marks a scene as complete.
    (root / "scene.json").write_text(json.dumps(_scene_record(config), indent=2) + "\n")


def generate_scene(config: SceneConfig) -> Path:
    """Render the scene described by ``config`` into ``config.output_dir`` and return that path.

    Everything is written into a hidden temporary sibling directory that is renamed into place at the
    end, so an interrupted run never leaves a half scene that looks complete. If the output directory
    already holds a complete scene with the same config it is reused as is (generation is deterministic,
    so it would be byte-identical anyway). Anything else there raises FileExistsError unless
    ``config.overwrite`` is set; even then, only directories that look like a dataset (scene.json or
    transforms_*.json) are replaced, so a mistyped --output-dir cannot wipe unrelated files.

    Raises:
        ValueError: invalid config values.
        FileExistsError: output_dir holds something else and overwrite is False (or it is not a dataset).
    """
    config.validate()
    out = Path(config.output_dir)
    state, reason = _existing_state(out, config)
    if state == "complete":
        CONSOLE.print(f"[green]Reusing existing scene[/green] at {out} (same config).")
        return out
    if state == "other":
        if not config.overwrite:
            raise FileExistsError(
                f"{out} already exists and {reason}. Pass --overwrite to replace it, or choose another --output-dir."
            )
        if not _looks_like_dataset(out):
            raise FileExistsError(
                f"{out} already exists and does not look like a scene ({reason}); refusing to delete it even "
                f"with --overwrite. Remove it yourself or choose another --output-dir."
            )

    out.parent.mkdir(parents=True, exist_ok=True)
    # Not tempfile.mkdtemp: that creates mode 0700, and the scene should get the user's normal permissions.
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        _write_scene(config, tmp)
        if out.exists() and state == "absent":  # an empty directory: rename(2) cannot replace it portably
            out.rmdir()
        if state == "other":
            trash = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
            os.replace(out, trash / "old")
            os.replace(tmp, out)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            try:
                os.replace(tmp, out)
            except OSError:
                # A concurrent run may have finished the same scene first; that is fine if it matches.
                if _existing_state(out, config)[0] != "complete":
                    raise
                CONSOLE.print(f"[green]Reusing scene written concurrently[/green] at {out} (same config).")
                return out
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)

    counts = config.split_sizes()
    CONSOLE.print(
        f"[bold green]Scene written[/bold green] to {out} "
        f"({counts['train']} train / {counts['val']} val / {counts['test']} test views, "
        f"{config.image_size}x{config.image_size}, layout {config.layout})."
    )
    CONSOLE.print(f"Next: [bold]ns-train nas-nerf --data {out}[/bold]")
    return out


def entrypoint() -> None:
    """Console script ``ns-make-scene``: parse a SceneConfig from the command line and generate it."""
    try:
        config = tyro.cli(SceneConfig)
        generate_scene(config)
    except (ValueError, FileExistsError) as err:
        CONSOLE.print(f"[bold red]Error:[/bold red] {err}")
        raise SystemExit(1) from err


if __name__ == "__main__":
    entrypoint()
