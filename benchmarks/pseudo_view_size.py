"""Disk per pseudo view at full resolution: a trained teacher renders test view 0 of its scene at
`--size` (default 800×800, the paper's frame) and the view is written through `PseudoViewCache`, exactly
as distillation stores it (PNG RGB, fp16 depth, uint8 accumulation, pose).

    .venv/bin/python benchmarks/pseudo_view_size.py \
        --teacher-config benchmarks/work/distill_lego/runs/teacher/nas-nerf/run/config.yml

Writes benchmarks/results/pseudo_view_size.{json,md}.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
import tyro
from common import timed, write_results

from nerfstudio_mobile.common.files import file_size
from nerfstudio_mobile.mobile_r2l.cache import CacheMeta, PseudoViewCache
from nerfstudio_mobile.mobile_r2l.teacher import Teacher


@dataclass
class PseudoViewSize:
    teacher_config: Path
    size: int = 800

    def main(self) -> None:
        teacher = Teacher.load(self.teacher_config)
        camera = teacher.pipeline.datamanager.eval_dataset.cameras[0:1]
        camera.rescale_output_resolution(self.size / int(camera.height))
        h, w = int(camera.height), int(camera.width)
        with torch.no_grad():
            (rgb, depth, accumulation), seconds = timed(lambda: teacher.render(camera))
        with tempfile.TemporaryDirectory() as directory:
            meta = CacheMeta(1, h, w, float(camera.fx), float(camera.fy), float(camera.cx), float(camera.cy),
                             "360", seed=0)  # fmt: skip
            cache = PseudoViewCache(Path(directory), meta)
            cache.write(0, rgb, depth, camera.camera_to_worlds[0], accumulation)
            size = file_size(cache.view_path(0))
        result = {"teacher_config": str(self.teacher_config), "frame": [h, w], "bytes": size,
                  "bytes_per_pixel": size / (h * w), "render_seconds": seconds,
                  "float32_npy_bytes": h * w * 3 * 4}  # fmt: skip
        text = (
            f"## Pseudo view on disk at {h}×{w}\n\nOne teacher render ({self.teacher_config}) of test view 0: "
            f"{size / 1e6:.3f} MB ({size / (h * w):.2f} bytes per pixel; the official code's float32 .npy RGB would "
            f"be {result['float32_npy_bytes'] / 1e6:.1f} MB). Rendering it took {seconds:.0f} s on this CPU.\n"
        )
        write_results("pseudo_view_size", result, text)


if __name__ == "__main__":
    tyro.cli(PseudoViewSize).main()
