"""Pseudo-view pose samplers: where the NeRF teacher renders the views a MobileR2L student is distilled from.

Poses are camera-to-world matrices [3, 4] in the teacher's dataparser-normalised world frame, nerfstudio /
OpenGL convention: rotation columns are right, up, back, so the camera looks along -z.

The pose of pseudo view ``i`` is a pure function of the fitted sampler, its seed and ``i``: every view draws
its random numbers from its own generator, seeded by a stable hash of (seed, i), and is computed on its own.
Any process may therefore render any subset of views, in any order and any batch, and get identical poses,
which is what makes a sharded, resumable pseudo-view cache possible.
"""

from __future__ import annotations

import hashlib
import math
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any, ClassVar, Literal

import torch
from nerfstudio.cameras.cameras import Cameras, CameraType
from torch import Tensor
from torch.nn.functional import normalize

from nerfstudio_mobile.common.intrinsics import Intrinsics

Layout = Literal["360", "forward-facing"]

# Viewing axes whose least-squares meeting point is this poorly determined (smallest eigenvalue of
# sum_i (I - d_i d_i^T), per camera) are treated as parallel: they meet nowhere in particular.
MIN_FOCUS_EIGENVALUE = 1e-2
# Forward-facing rigs look roughly one way, and their cameras spread little compared with how far away
# they look; a 360 rig, even a partial arc, fails one of the two.
MAX_FORWARD_FACING_ANGLE_DEG = 50.0
MAX_FORWARD_FACING_SPREAD_RATIO = 0.5
# MobileR2L: polar angles from a normal distribution clipped to [1°, 90°], i.e. the upper hemisphere,
# kept 1° away from the pole where "look at the centre with up close to up" is undefined.
MIN_POLAR_DEG = 1.0
MAX_POLAR_DEG = 90.0
# Keeps the truncated normal well defined when every training camera sits at one elevation.
MIN_POLAR_STD_DEG = 1.0
# A mean camera direction shorter than this says the cameras surround the centre (e.g. a horizontal
# ring), so it does not tell which way is up.
MIN_UP_AGREEMENT = 0.2

Vector3 = tuple[float, float, float]


def view_seed(seed: int, index: int) -> int:
    """Seed of pseudo view `index`: a stable hash (not Python's per-process salted `hash`)."""
    digest = hashlib.blake2b(f"{seed}/{index}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little")


def quasi_random_uniforms(seed: int, index: int, count: int) -> Tensor:
    """Point `index` of Roberts' R_d sequence in [0, 1)^count (float64), shifted by an offset drawn from `seed`: the
    first n points of it, for any n, spread over the cube evenly where n random draws leave gaps and clumps; each is
    still a function of (seed, index) alone."""
    ratio = 2.0  # the generalised golden ratio: the positive root of x^(count + 1) = x + 1
    for _ in range(64):
        ratio = (1 + ratio) ** (1 / (count + 1))
    steps = torch.tensor([ratio ** -(k + 1) for k in range(count)], dtype=torch.float64)
    generator = torch.Generator().manual_seed(view_seed(seed, 0) ^ _QUASI_RANDOM_SALT)
    offset = torch.rand(count, generator=generator, dtype=torch.float64)
    return torch.frac(offset + (index + 1) * steps)


def view_directions(c2w: Tensor) -> Tensor:
    """Unit viewing axes (-z columns) of cameras [..., 3, 4] -> [..., 3]."""
    return normalize(-c2w[..., :3, 2], dim=-1)


def focus_point(c2w: Tensor) -> Tensor | None:
    """The point closest, in least squares, to all viewing axes [3] (float64); None when the axes are
    (nearly) parallel and that point is ill-determined."""
    c2w = _as_c2w(c2w)
    origins = c2w[:, :, 3]
    directions = view_directions(c2w)
    projectors = torch.eye(3, dtype=torch.float64) - directions[:, :, None] * directions[:, None, :]
    lhs = projectors.sum(dim=0)
    if torch.linalg.eigvalsh(lhs)[0] / len(c2w) < MIN_FOCUS_EIGENVALUE:
        return None
    return torch.linalg.solve(lhs, (projectors @ origins[:, :, None]).sum(dim=0)[:, 0])


def detect_layout(c2w: Tensor) -> Layout:
    """Returns "forward-facing" when all cameras look within ~50° of their mean direction and the rig
    spreads (sideways) less than half the distance to where the cameras look, "360" otherwise."""
    c2w = _as_c2w(c2w)
    directions = view_directions(c2w)
    mean_direction = normalize(directions.mean(dim=0), dim=0)
    max_angle = torch.rad2deg(torch.arccos((directions @ mean_direction).clamp(-1.0, 1.0))).max()
    if max_angle > MAX_FORWARD_FACING_ANGLE_DEG:
        return "360"
    focus = focus_point(c2w)
    if focus is None:
        return "forward-facing"
    origins = c2w[:, :, 3]
    focus_depth = ((focus - origins) @ mean_direction).mean()
    if focus_depth <= 0:
        # Diverging axes meet behind the cameras: nothing is surrounded.
        return "forward-facing"
    offsets = origins - origins.mean(dim=0)
    lateral_offsets = offsets - (offsets @ mean_direction)[:, None] * mean_direction
    spread = lateral_offsets.norm(dim=-1).max()
    return "forward-facing" if spread < MAX_FORWARD_FACING_SPREAD_RATIO * focus_depth else "360"


class ViewSampler(ABC):
    """A sampler fitted to the training cameras; `pose(i)` depends only on the fitted fields and `i`."""

    layout: ClassVar[Layout]
    # How many uniform random numbers one pose consumes.
    num_uniforms: ClassVar[int]
    seed: int
    quasi_random: bool

    def pose(self, index: int) -> Tensor:
        """c2w [3, 4] float32 of pseudo view `index`."""
        if index < 0:
            raise ValueError(f"pseudo view indices are non-negative, got {index}")
        if self.quasi_random:
            uniforms = quasi_random_uniforms(self.seed, index, self.num_uniforms)
        else:
            generator = torch.Generator().manual_seed(view_seed(self.seed, index))
            uniforms = torch.rand(self.num_uniforms, generator=generator, dtype=torch.float64)
        return self._pose_from_uniforms(uniforms).float()

    def poses(self, indices: Sequence[int]) -> Tensor:
        """c2w [len(indices), 3, 4] float32. Poses are computed one at a time on purpose: vectorised and
        scalar kernels of sin/cos may differ in the last bit, which would make a pose depend on its batch."""
        if len(indices) == 0:
            return torch.empty(0, 3, 4)
        return torch.stack([self.pose(index) for index in indices])

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fitted state (e.g. for a cache's meta); `view_sampler_from_dict` rebuilds it exactly. Random
        poses leave `quasi_random` out, so caches made before it existed keep their identity."""
        state = {"layout": self.layout, **asdict(self)}
        if not self.quasi_random:
            del state["quasi_random"]
        return state

    @abstractmethod
    def _pose_from_uniforms(self, uniforms: Tensor) -> Tensor:
        """Map `num_uniforms` numbers in [0, 1) (float64) to a c2w [3, 4] (float64)."""


@dataclass(frozen=True)
class SphereViewSampler(ViewSampler):
    """360 scenes: cameras on a spherical shell around `centre`, looking at it, on the side `up` points to."""

    seed: int
    centre: Vector3
    up: Vector3
    radius_range: tuple[float, float]
    polar_mean_deg: float
    polar_std_deg: float
    quasi_random: bool = False

    layout: ClassVar[Layout] = "360"
    num_uniforms: ClassVar[int] = 3

    @classmethod
    def fit(cls, train_c2w: Tensor, seed: int = 0, polar_std_deg: float | None = None) -> SphereViewSampler:
        """Centre: focus point of the viewing axes (the origin when ill-determined, as nerfstudio centres
        scenes); radii: [min, max] camera distance to it; up: mean direction from it to the cameras; polar
        angle: normal with the training cameras' mean and std (or `polar_std_deg`)."""
        c2w = _as_c2w(train_c2w)
        focus = focus_point(c2w)
        centre = torch.zeros(3, dtype=torch.float64) if focus is None else focus
        offsets = c2w[:, :, 3] - centre
        radii = offsets.norm(dim=-1)
        mean_offset = normalize(offsets, dim=-1).mean(dim=0)
        up_direction = mean_offset if mean_offset.norm() >= MIN_UP_AGREEMENT else c2w[:, :, 1].mean(dim=0)
        up = normalize(up_direction, dim=0)
        polar_deg = torch.rad2deg(torch.arccos((normalize(offsets, dim=-1) @ up).clamp(-1.0, 1.0)))
        fitted_std = polar_deg.std().item() if len(polar_deg) > 1 else 0.0
        return cls(
            seed=seed,
            centre=_vector3(centre),
            up=_vector3(up),
            radius_range=(radii.min().item(), radii.max().item()),
            polar_mean_deg=polar_deg.mean().item(),
            polar_std_deg=max(fitted_std if polar_std_deg is None else polar_std_deg, MIN_POLAR_STD_DEG),
        )

    def _pose_from_uniforms(self, uniforms: Tensor) -> Tensor:
        radius_min, radius_max = self.radius_range
        radius = radius_min + uniforms[0] * (radius_max - radius_min)
        # Truncated normal on [MIN_POLAR_DEG, MAX_POLAR_DEG] by inverse CDF; the clamp only guards the
        # infinities ndtri returns when the mean lies far outside the range.
        mean, std = self.polar_mean_deg, self.polar_std_deg
        cdf_low = torch.special.ndtr(torch.tensor((MIN_POLAR_DEG - mean) / std, dtype=torch.float64))
        cdf_high = torch.special.ndtr(torch.tensor((MAX_POLAR_DEG - mean) / std, dtype=torch.float64))
        polar_deg = mean + std * torch.special.ndtri(cdf_low + uniforms[1] * (cdf_high - cdf_low))
        polar = torch.deg2rad(polar_deg.clamp(MIN_POLAR_DEG, MAX_POLAR_DEG))
        azimuth = 2 * math.pi * uniforms[2]
        up = torch.tensor(self.up, dtype=torch.float64)
        first, second = _perpendicular_basis(up)
        back = polar.cos() * up + polar.sin() * (azimuth.cos() * first + azimuth.sin() * second)
        position = torch.tensor(self.centre, dtype=torch.float64) + radius * back
        return _c2w_from_axes(back, up, position)

    def orbit(self, frames: int) -> Tensor:
        """A turntable path [frames, 3, 4]: mid radius, median polar angle, azimuth sweeping once around."""
        uniforms = [torch.tensor([0.5, 0.5, i / frames], dtype=torch.float64) for i in range(frames)]
        return torch.stack([self._pose_from_uniforms(u) for u in uniforms]).float()


@dataclass(frozen=True)
class ForwardFacingViewSampler(ViewSampler):
    """LLFF-like scenes: camera centres and viewing axes uniform in enlarged boxes of the training ones."""

    seed: int
    position_low: Vector3
    position_high: Vector3
    direction_low: Vector3
    direction_high: Vector3
    up: Vector3
    quasi_random: bool = False

    layout: ClassVar[Layout] = "forward-facing"
    num_uniforms: ClassVar[int] = 6

    @classmethod
    def fit(cls, train_c2w: Tensor, seed: int = 0, box_scale: float = 1.1) -> ForwardFacingViewSampler:
        """Boxes: axis-aligned bounding boxes of the training centres and viewing axes, scaled by `box_scale`
        about their centres; up: mean training camera up."""
        c2w = _as_c2w(train_c2w)
        position_low, position_high = _scaled_bounds(c2w[:, :, 3], box_scale)
        direction_low, direction_high = _scaled_bounds(view_directions(c2w), box_scale)
        return cls(
            seed=seed,
            position_low=_vector3(position_low),
            position_high=_vector3(position_high),
            direction_low=_vector3(direction_low),
            direction_high=_vector3(direction_high),
            up=_vector3(normalize(c2w[:, :, 1].mean(dim=0), dim=0)),
        )

    def _pose_from_uniforms(self, uniforms: Tensor) -> Tensor:
        position = _lerp(self.position_low, self.position_high, uniforms[:3])
        direction = normalize(_lerp(self.direction_low, self.direction_high, uniforms[3:]), dim=0)
        return _c2w_from_axes(-direction, torch.tensor(self.up, dtype=torch.float64), position)


@dataclass(frozen=True)
class ViewCrops:
    """The part of its frame each pseudo view covers, and at which zoom. The teacher renders, and the student learns
    from, a `height`×`width` window of the frame zoomed `zoom(index)` times (focal length and size multiplied, the
    camera a viewer asks for at that resolution), whose corner lies on the student's ray grid of the zoomed frame
    (multiples of `block` pixels). Zoom and corner are a pure function of (seed, index).

    Crops: the same teacher pixels buy many more poses, and the student's 1×1 convs and local super-resolution see
    every window as they see that part of a whole frame. Zooms: a window of 1/z of the frame at z× its ray density has
    a whole view's pixel count (batches stack, a view costs the teacher the same) and teaches the student the z× finer
    ray spacing a viewer at z× the training resolution asks for."""

    frame: Intrinsics
    height: int
    width: int
    block: int
    seed: int
    zooms: tuple[float, ...] = (1.0,)
    """Zoom levels, drawn uniformly per view (repeat a level to weight it)."""

    @classmethod
    def fit(
        cls, frame: Intrinsics, fraction: float, block: int, seed: int, zooms: tuple[float, ...] = (1.0,)
    ) -> ViewCrops:
        """Windows of `fraction` of the frame's sides, rounded to whole blocks (at least one), at `zooms`."""
        check_crops(fraction, zooms)

        def side(pixels: int) -> int:
            return min(pixels // block, max(1, round(pixels * fraction / block))) * block

        return cls(frame, side(frame.height), side(frame.width), block, seed, tuple(float(zoom) for zoom in zooms))

    @property
    def zoomed(self) -> bool:
        """Whether some views are zoomed (a level other than 1)."""
        return any(zoom != 1 for zoom in self.zooms)

    def zoom(self, index: int) -> float:
        """The zoom level of view `index`."""
        generator = torch.Generator().manual_seed(view_seed(self.seed, index) ^ _ZOOM_SALT)
        return self.zooms[int(torch.randint(len(self.zooms), (1,), generator=generator))]

    def zoomed_frame(self, index: int) -> Intrinsics:
        """The frame at view `index`'s zoom: the camera a viewer renders at that multiple of the frame's size."""
        zoom = self.zoom(index)
        return self.frame.resized(round(self.frame.width * zoom), round(self.frame.height * zoom))

    def corner(self, index: int) -> tuple[int, int]:
        """(top, left) pixel of view `index`'s window in its zoomed frame."""
        frame = self.zoomed_frame(index)
        generator = torch.Generator().manual_seed(view_seed(self.seed, index) ^ _CROP_SALT)
        rows = (frame.height - self.height) // self.block + 1
        columns = (frame.width - self.width) // self.block + 1
        top, left = (int(torch.randint(n, (1,), generator=generator)) * self.block for n in (rows, columns))
        return top, left

    def intrinsics(self, index: int) -> Intrinsics:
        """The window of view `index` as a camera of its own: the zoomed frame's focal length, principal point
        shifted."""
        top, left = self.corner(index)
        frame = self.zoomed_frame(index)
        return Intrinsics(frame.fx, frame.fy, frame.cx - left, frame.cy - top, self.width, self.height)

    def cameras(self, indices: Sequence[int], c2w: Tensor) -> Cameras:
        """The windows of views `indices` at their poses c2w [B, 3, 4] (one size, per-view intrinsics)."""
        windows = [self.intrinsics(index) for index in indices]

        def column(name: str) -> Tensor:
            return torch.tensor([[getattr(window, name)] for window in windows])

        return Cameras(
            camera_to_worlds=c2w.float(), fx=column("fx"), fy=column("fy"), cx=column("cx"), cy=column("cy"),
            width=self.width, height=self.height, camera_type=CameraType.PERSPECTIVE,
        )  # fmt: skip

    def to_dict(self) -> dict[str, Any]:
        """What decides the windows (JSON-ready, for a cache's identity). Without zoom it is what it was before zooms
        existed, so caches of crops made then keep their identity."""
        zooms = {"zooms": list(self.zooms)} if self.zoomed else {}
        return {"frame": [self.frame.height, self.frame.width], "block": self.block, **zooms}


def check_crops(fraction: float, zooms: Sequence[float]) -> None:
    """ValueError, in words, unless 0 < `fraction` <= 1 and `zooms` are one or more levels of at least 1."""
    if not 0 < fraction <= 1:
        raise ValueError(f"the crop fraction must lie in (0, 1], got {fraction}")
    if len(zooms) == 0 or not all(math.isfinite(zoom) and zoom >= 1 for zoom in zooms):
        raise ValueError(f"zoom levels must be one or more numbers of at least 1, got {tuple(zooms)}")


# Keep a view's window and zoom independent of its pose's random numbers and of each other (so a view's corner
# without zoom is the one it had before zooms existed).
_CROP_SALT = 0x5EED_C409
_ZOOM_SALT = 0x5EED_2004
_QUASI_RANDOM_SALT = 0x5EED_9A51


@dataclass
class PseudoViewSamplerConfig:
    """How pseudo-view poses are sampled around the teacher's training cameras."""

    layout: Literal["auto", "360", "forward-facing"] = "auto"
    """With "auto", `detect_layout` picks from the training cameras."""
    seed: int = 0
    """Pose of view i is a function of (fitted sampler, seed, i) only."""
    quasi_random: bool = False
    """Poses from a low-discrepancy sequence (`quasi_random_uniforms`): any number of views covers the sampled
    range evenly. Off: independent random draws, as the paper (even coverage did not pay at the demo's scale:
    benchmarks/results/distill_ablation_fit.md)."""
    polar_std_deg: float | None = None
    """360 only: std of the polar angle from up, in degrees; None fits it to the training cameras."""
    box_scale: float = 1.1
    """Forward-facing only: how much the training cameras' position and direction boxes are enlarged."""


def make_view_sampler(config: PseudoViewSamplerConfig, train_c2w: Tensor) -> ViewSampler:
    """Fit the sampler `config` asks for to the teacher's training cameras [N, 3, 4] (or [N, 4, 4])."""
    layout = detect_layout(train_c2w) if config.layout == "auto" else config.layout
    sampler: ViewSampler
    if layout == "360":
        sampler = SphereViewSampler.fit(train_c2w, seed=config.seed, polar_std_deg=config.polar_std_deg)
    else:
        sampler = ForwardFacingViewSampler.fit(train_c2w, seed=config.seed, box_scale=config.box_scale)
    return replace(sampler, quasi_random=config.quasi_random)


def view_sampler_from_dict(state: dict[str, Any]) -> ViewSampler:
    """Inverse of `ViewSampler.to_dict` (JSON turns tuples into lists; they are turned back)."""
    samplers: dict[str, type[SphereViewSampler] | type[ForwardFacingViewSampler]] = {
        "360": SphereViewSampler,
        "forward-facing": ForwardFacingViewSampler,
    }
    fields = {key: tuple(value) if isinstance(value, list) else value for key, value in state.items()}
    layout = fields.pop("layout")
    if layout not in samplers:
        raise ValueError(f"unknown pseudo-view layout {layout!r}; expected one of {sorted(samplers)}")
    return samplers[layout](**fields)


def _as_c2w(c2w: Tensor) -> Tensor:
    """[N, 3, 4] or [N, 4, 4] -> [N, 3, 4] float64 (fits are done in float64 so float32 rounding of the
    inputs is the only imprecision)."""
    if c2w.ndim != 3 or c2w.shape[1] not in (3, 4) or c2w.shape[2] != 4 or len(c2w) == 0:
        raise ValueError(f"expected camera-to-world matrices [N, 3, 4] with N >= 1, got {tuple(c2w.shape)}")
    return c2w[:, :3, :4].detach().cpu().double()


def _vector3(vector: Tensor) -> Vector3:
    x, y, z = vector.tolist()
    return (x, y, z)


def _scaled_bounds(points: Tensor, scale: float) -> tuple[Tensor, Tensor]:
    low, high = points.min(dim=0).values, points.max(dim=0).values
    middle, half_extent = (low + high) / 2, (high - low) / 2 * scale
    return middle - half_extent, middle + half_extent


def _lerp(low: Vector3, high: Vector3, weights: Tensor) -> Tensor:
    low_tensor = torch.tensor(low, dtype=torch.float64)
    return low_tensor + weights * (torch.tensor(high, dtype=torch.float64) - low_tensor)


def _perpendicular_basis(axis: Tensor) -> tuple[Tensor, Tensor]:
    """Two unit vectors completing unit `axis` to a right-handed orthonormal basis."""
    # The world axis least aligned with `axis` keeps the cross product well away from zero.
    helper = torch.zeros(3, dtype=torch.float64)
    helper[axis.abs().argmin()] = 1.0
    first = normalize(torch.linalg.cross(axis, helper), dim=0)
    return first, torch.linalg.cross(axis, first)


def _c2w_from_axes(back: Tensor, up: Tensor, position: Tensor) -> Tensor:
    """c2w [3, 4] whose -z axis is -`back` and whose y axis is `up` made orthogonal to it."""
    back = normalize(back, dim=0)
    right = normalize(torch.linalg.cross(up, back), dim=0)
    camera_up = torch.linalg.cross(back, right)
    return torch.stack([right, camera_up, back, position], dim=1)
