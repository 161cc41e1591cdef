"""Where the real scenes are: ../shared/data beside the checkout (licences in SOURCES.md there).

Benchmarks read them in place and train on shrunk copies under benchmarks/work/ (git-ignored,
nerfstudio_mobile.data.scene_copies); nothing of them is ever copied into the package.
"""

from __future__ import annotations

from pathlib import Path

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
