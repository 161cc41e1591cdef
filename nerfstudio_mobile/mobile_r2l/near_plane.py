"""Where the student of a contracted teacher (nerfacto, instant-ngp, depth-nerfacto) starts its rays.

The student places its K points evenly in disparity from `near` to the teacher's far plane, then contracts them
(encoding.py): the k-th point sits at about near * (K-1) / (K-1-k), so the near plane sets the whole spacing. Taken
from the teacher's renders alone it followed the teacher's convergence: a floater in front of a camera pulled it
onto the lens, a teacher still transparent except far away pushed it past the scene. So the training cameras, in
the teacher's (dataparser-normalised) frame, set its range, and the renders only choose within it:

- cap: no farther than where the cameras look (their focus of attention, along each camera's axis), nor than where
  the axis leaves the unit cube the student contracts around: beyond that cube the contraction keeps disparity
  (2 - 1/|x|), so a start there already spans the rest, while a later one would squeeze all K points into the
  contracted shell. The median over the training cameras. A lower near plane never cuts content off.
- floor: the cap / CAP_TO_FLOOR, and never nearer than the teacher's own near plane. An object-centred capture
  frames its subject from 2-4 times its radius, so the subject's nearest surface is at half to three quarters of
  the way to the focus; a third leaves room for things in front of it (the ground, a table's edge). Nearer than
  that, content is in front of few cameras: where a teacher's floaters sit.
- within [floor, cap]: where the teacher renders its nearest surface (teacher.py: 1st percentile of its opaque
  depths on a few training views, less a margin), as before; the cap when it renders no opaque pixel.

Any two teachers of one capture thus get near planes within CAP_TO_FLOOR of each other, however converged; the
value depends only on the cameras and the teacher's renders, so it is deterministic per teacher.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from nerfstudio_mobile.mobile_r2l.views import focus_point, view_directions

CAP_TO_FLOOR = 3.0


def cube_exit_distance(origins: Tensor, directions: Tensor) -> Tensor:
    """Distance [N] along each ray [N, 3] to where it leaves the cube [-1, 1]^3; inf where it meets no part of the
    cube in front of its origin."""
    nonzero = torch.where(directions == 0, torch.full_like(directions, 1e-12), directions)
    slabs = torch.stack([(-1 - origins) / nonzero, (1 - origins) / nonzero])  # [2, N, 3]
    enter, leave = slabs.amin(dim=0).amax(dim=-1), slabs.amax(dim=0).amin(dim=-1)
    return torch.where((leave >= enter) & (leave > 0), leave, torch.inf)


def geometric_near_range(camera_to_worlds: Tensor, model_near_plane: float) -> tuple[float, float]:
    """(floor, cap) of the near plane from the training cameras [N, 3, 4] alone (see the module docstring). When
    most cameras neither look at the cube nor share a focus, the cameras say nothing: (model_near_plane, inf)."""
    c2w = camera_to_worlds[:, :3, :4].detach().cpu().double()
    origins, directions = c2w[:, :, 3], view_directions(c2w)
    reach = cube_exit_distance(origins, directions)
    focus = focus_point(c2w)
    if focus is not None:
        focus_depth = ((focus - origins) * directions).sum(dim=-1)
        reach = torch.minimum(reach, torch.where(focus_depth > 0, focus_depth, torch.inf))
    cap = float(reach.quantile(0.5, interpolation="lower"))
    if not math.isfinite(cap):
        return model_near_plane, math.inf
    return max(model_near_plane, cap / CAP_TO_FLOOR), max(model_near_plane, cap)


def contracted_near(camera_to_worlds: Tensor, rendered_near: float | None, model_near_plane: float) -> float | None:
    """The student's near plane for a contracted teacher: `rendered_near` (where the teacher renders its nearest
    surface, None when it renders none) held within the range of the training cameras [N, 3, 4]. None when
    neither tells."""
    floor, cap = geometric_near_range(camera_to_worlds, model_near_plane)
    if rendered_near is None:
        return cap if math.isfinite(cap) else None
    return min(max(rendered_near, floor), cap)
