"""Offline generator of small synthetic scenes, so tests, demos and users can train and evaluate without
downloading anything.

The scene has real geometry (spheres, rotated boxes, capped cylinders, a ground slab) with procedural textures,
Lambert + ambient shading and hard shadows, optionally inside a far ground and sky (an unbounded scene). It is
written as a Blender (NeRF-synthetic) scene or as a nerfstudio RGB-D capture like ns-process-data's (images and
depth maps), whose images can be seen through an OpenCV lens distortion like a phone's.

Read top to bottom: ``config`` (what a scene is), ``primitives`` and ``world`` (the solids, the surroundings and
the ray tracer), ``cameras`` (lens and camera layouts), ``render`` (one view), ``writer`` (the dataset on disk
and the ``ns-make-scene`` command).
"""

from nerfstudio_mobile.data.scenes.cameras import camera_poses, focal_length
from nerfstudio_mobile.data.scenes.config import SceneConfig, SceneConfigError, SceneExistsError
from nerfstudio_mobile.data.scenes.render import render_depth, render_view
from nerfstudio_mobile.data.scenes.writer import generate_scene

__all__ = [
    "SceneConfig",
    "SceneConfigError",
    "SceneExistsError",
    "camera_poses",
    "focal_length",
    "generate_scene",
    "render_depth",
    "render_view",
]
