"""The three scene layouts the toolkit reads (Blender, nerfstudio, LLFF) and the dataparser each needs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

from nerfstudio.data.dataparsers.base_dataparser import DataParserConfig
from nerfstudio.data.dataparsers.blender_dataparser import BlenderDataParserConfig
from nerfstudio.data.dataparsers.nerfstudio_dataparser import NerfstudioDataParserConfig

from nerfstudio_mobile.data.errors import SceneError
from nerfstudio_mobile.data.llff import LLFFDataParserConfig

SceneFormat = Literal["blender", "nerfstudio", "llff"]


def scene_format(data: Path) -> SceneFormat:
    """Which of the three layouts a scene folder is in; one clear error when none, or when its camera JSON files
    cannot be parsed."""
    if (data / "transforms_train.json").is_file():
        kind: SceneFormat = "blender"
    elif (data / "transforms.json").is_file():
        kind = "nerfstudio"
    elif (data / "poses_bounds.npy").is_file():
        return "llff"
    else:
        raise _not_a_scene(data)
    for path in sorted(data.glob("transforms*.json")):
        try:
            json.loads(path.read_bytes())
        except ValueError as error:  # json.JSONDecodeError and UnicodeDecodeError
            raise SceneError(
                f"{path} is not valid JSON ({error}): restore it, or write it again (ns-process-data)."
            ) from None
    return kind


def _not_a_scene(data: Path) -> SceneError:
    hint = "" if data.is_dir() else " (the folder does not exist)"
    return SceneError(
        f"{data}{hint} is not a Blender (transforms_train.json), nerfstudio (transforms.json) or LLFF "
        "(poses_bounds.npy) scene; convert your images with ns-process-data first."
    )


def dataparser_for(data: Path) -> tuple[DataParserConfig, tuple[float, float]]:
    """The dataparser a scene folder needs, and the near/far that suits its normalised frame."""
    kind = scene_format(data)
    if kind == "blender":  # cameras at radius ~4 around the object
        return BlenderDataParserConfig(data=data), (2.0, 6.0)
    if kind == "nerfstudio":  # instant-ngp style: poses scaled into [-1, 1]
        return NerfstudioDataParserConfig(data=data), (0.05, 4.0)
    return LLFFDataParserConfig(data=data, downscale_factor=1), (1.0, 6.0)  # the parser's bounds override these
