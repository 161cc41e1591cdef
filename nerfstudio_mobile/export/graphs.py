"""The torch graphs that are traced for export, one per input mode, and their inputs for a given camera.

* ``rays``: encoded ray grid [1, C, h, w] -> rgb [1, 3, H, W] (, depth [1, 1, H, W]): the network alone.
* ``pose``: world camera-to-world [1, 4, 4] -> the same outputs. The dataparser transform and scale, ray
  generation (`pinhole_rays` at the export's grid intrinsics), point sampling and positional encoding are
  in the graph, so an app feeds its (e.g. ARKit) pose directly. That part is kept fp32 at conversion.

Both use the network with BatchNorm folded into the convs, so the graphs hold only 1x1 convs,
conv-transposes, GELU, adds and the heads.
"""

import torch
from nerfstudio.cameras.cameras import Cameras
from nerfstudio.data.dataparsers.base_dataparser import transform_poses_to_original_space
from torch import Tensor, nn

from nerfstudio_mobile.export.sidecar import ExportFrame, InputMode
from nerfstudio_mobile.export.student import Student
from nerfstudio_mobile.mobile_r2l.encoding import encode_rays, pinhole_rays
from nerfstudio_mobile.mobile_r2l.network import LightFieldNetwork, fold_batchnorm


def split_outputs(image: Tensor) -> tuple[Tensor, ...]:
    """[1, 3 (+1), H, W] -> (rgb,) or (rgb, depth): named outputs instead of channel indices."""
    return (image[:, :3], image[:, 3:]) if image.shape[1] == 4 else (image,)


class RaysToImage(nn.Module):
    def __init__(self, network: LightFieldNetwork) -> None:
        super().__init__()
        self.network = network

    def forward(self, rays: Tensor) -> tuple[Tensor, ...]:
        return split_outputs(self.network(rays))


class PoseToImage(nn.Module):
    def __init__(self, network: LightFieldNetwork, frame: ExportFrame) -> None:
        super().__init__()
        self.network = network
        self.frame = frame
        self.register_buffer("dataparser_transform", torch.tensor(frame.dataparser_transform, dtype=torch.float32))
        # Only the translation column is scaled (nerfstudio's dataparser convention).
        self.register_buffer("column_scale", torch.tensor([1.0, 1.0, 1.0, frame.dataparser_scale]))
        grid = frame.grid
        self.register_buffer("intrinsics", torch.tensor([[grid.fx], [grid.fy], [grid.cx], [grid.cy]]))

    def forward(self, pose: Tensor) -> tuple[Tensor, ...]:
        c2w = (self.dataparser_transform @ pose) * self.column_scale  # [1, 3, 4] in the student's frame
        grid = self.frame.grid
        origins, directions = pinhole_rays(c2w, *self.intrinsics, height=grid.height, width=grid.width)
        rays = encode_rays(origins, directions, self.frame.near, self.frame.far, self.frame.encoding)
        return split_outputs(self.network(rays))


def export_graph(network: LightFieldNetwork, frame: ExportFrame, mode: InputMode) -> nn.Module:
    """The eval-mode graph of `mode` around `network`, with BatchNorm folded (before conversion or compression)."""
    folded = fold_batchnorm(network).float()
    graph = RaysToImage(folded) if mode == "rays" else PoseToImage(folded, frame)
    return graph.eval()


def graph_input(student: Student, mode: InputMode, camera: Cameras) -> Tensor:
    """What an app would feed for `camera` (student frame, export size): its encoded rays, or its world pose."""
    if mode == "rays":
        encoded, _ = student.model.encode(camera, jitter=False)
        return encoded.float()
    world = transform_poses_to_original_space(
        camera.camera_to_worlds.reshape(1, 3, 4).float(),
        student.dataparser_transform,
        student.dataparser_scale,
        camera_convention="opengl",
    )
    return torch.cat([world, torch.tensor([[[0.0, 0.0, 0.0, 1.0]]])], dim=1)
