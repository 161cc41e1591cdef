"""The synthetic world: a fixed set of textured solids lit by a key light (with hard shadows) and a fill light,
optionally inside a far ground and sky, and the ray tracer that shades it.

Textures are procedural (checkerboards, stripes, gradients) so a trained NeRF's PSNR measures real detail rather
than the colour of a flat blob.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from nerfstudio_mobile.data.scenes.primitives import Box, Cylinder, Primitive, Sphere, Vec3, rotation


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


def _build_scene() -> list[Primitive]:
    """The fixed scene: everything lies inside [-1.1, 1.1] x [-1.1, 1.1] x [-1.0, 0.5].

    The textured "globe" sphere of radius 0.5 is centred exactly at the origin with nothing above it, so a camera
    looking at the origin always sees it at the image centre (a handy ground-truth check).
    """
    return [
        Box((0.0, 0.0, -0.925), (1.1, 1.1, 0.075), _tex_ground),  # ground slab, top at z = -0.85
        Sphere((0.0, 0.0, 0.0), 0.5, _tex_globe),
        Cylinder((0.0, 0.0), 0.12, -0.85, -0.45, _tex_pedestal),
        Box((0.6, -0.55, -0.6), (0.25, 0.22, 0.25), _tex_box, rotation((0.0, 0.0, 1.0), 30.0)),
        Box((-0.55, -0.55, -0.5), (0.17, 0.17, 0.17), _tex_box, rotation((1.0, 1.0, 0.0), 35.0)),
        Sphere((0.55, 0.6, -0.57), 0.28, _tex_ball),
        Cylinder((-0.65, 0.5), 0.2, -0.85, 0.35, _tex_column),
    ]


_SCENE: list[Primitive] = _build_scene()
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
    """Cheap slab test against the bounding box of the solids, so rays that miss them all skip their tests."""
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


def _solid_hits(origin: tuple[float, float, float], d: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Indices of the rays (unit directions d [N,3] from one origin) that hit a solid, their colours [M,3] and
    their distances to the hit [M]."""
    comps = (d[:, 0].contiguous(), d[:, 1].contiguous(), d[:, 2].contiguous())
    active = _hits_bounds(origin, comps).nonzero()[:, 0]
    if active.numel() == 0:
        return active, d.new_zeros(0, 3), d.new_zeros(0)
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
    if rays.numel() == 0:
        return rays, d.new_zeros(0, 3), d.new_zeros(0)
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
    return rays, (albedo * light[:, None]).clamp(0.0, 1.0), t_hit


# ---- the far surroundings of an unbounded scene ----

_HORIZON = 40.0
"""Radius of the far ground and of the sky dome: ten times the cameras' distance, so a teacher must model content
far outside the unit sphere it normalises the cameras into, as in a real outdoor capture."""
_GROUND_Z = -1.0
"""The far ground is level with the bottom of the slab, so the slab stands on it like a low platform."""
_HAZE = _rgb(0.86, 0.89, 0.93)
"""The colour at the horizon: the ground fades into it, and the sky starts from it, so the two meet seamlessly."""
_GROUND_LIGHT = _AMBIENT + _KEY * float(_KEY_LIGHT[2]) + _FILL * float(_FILL_LIGHT[2])
"""Lambert light on the level ground (unshadowed: the surroundings only need to be far and textured)."""


def _environment(origin: tuple[float, float, float], d: Tensor) -> tuple[Tensor, Tensor]:
    """Colour [N,3] of rays d [N,3] leaving the solids, a checkered ground fading into haze under a cloudy sky, and
    their distances to it [N]."""
    ox, oy, oz = origin
    t_ground = (_GROUND_Z - oz) / d[:, 2]  # negative (or inf) for rays that look up
    gx, gy = ox + t_ground * d[:, 0], oy + t_ground * d[:, 1]
    r = torch.sqrt(gx * gx + gy * gy)
    on_ground = (t_ground > 0.0) & (r < _HORIZON)
    field = _lerp(_rgb(0.45, 0.62, 0.30), _rgb(0.70, 0.62, 0.38), _checker(gx, gy)) * _GROUND_LIGHT
    ground = _lerp(field, _HAZE, r.clamp(max=_HORIZON) / _HORIZON)

    # Where the ray leaves the dome (the camera is inside it): a real place, so views agree on the sky too.
    b = ox * d[:, 0] + oy * d[:, 1] + oz * d[:, 2]
    t_sky = -b + torch.sqrt((b * b - (ox * ox + oy * oy + oz * oz - _HORIZON**2)).clamp_min(0.0))
    n = (torch.tensor(origin) + t_sky[:, None] * d) / _HORIZON
    lon, height = torch.atan2(n[:, 1], n[:, 0]), n[:, 2].clamp(0.0, 1.0)
    sky = _lerp(_HAZE, _rgb(0.30, 0.50, 0.85), torch.sqrt(height))
    clouds = (torch.sin(7.0 * lon) * torch.sin(11.0 * height + 2.0 * lon)).clamp_min(0.0) ** 2
    sky = _lerp(sky, _rgb(1.0, 1.0, 1.0), 0.7 * clouds)
    return torch.where(on_ground[:, None], ground, sky), torch.where(on_ground, t_ground, t_sky)


def trace(origin: tuple[float, float, float], d: Tensor, unbounded: bool) -> tuple[Tensor, Tensor, Tensor]:
    """Colour [N,3] of rays from one origin along unit directions d [N,3], which rays hit something [N] (the colour
    is 0 where none did) and how far away [N] (inf where nothing). In an unbounded world every ray hits: the ground
    or the sky."""
    colour = torch.zeros_like(d)
    hit = torch.zeros(d.shape[:1], dtype=torch.bool)
    distance = torch.full(d.shape[:1], torch.inf)
    rays, shaded, t_hit = _solid_hits(origin, d)
    colour[rays], distance[rays] = shaded, t_hit
    hit[rays] = True
    if unbounded:
        rest = (~hit).nonzero()[:, 0]
        colour[rest], distance[rest] = _environment(origin, d[rest])
        hit[:] = True
    return colour, hit, distance
