"""The README's main command, `ns-mobile-demo`, end to end at a tiny size: every stage, the summary, the pictures,
the phone packages, and a re-run that resumes instead of retraining."""

from __future__ import annotations

import json
from pathlib import Path

import imageio.v2 as imageio
from conftest import ns_command, run_ns

TINY = [
    "--scene.image-size", "32", "--scene.num-train", "16", "--scene.num-test", "2",
    "--teacher-steps", "40", "--student-steps", "30", "--pseudo-views", "6",
    "--student.width", "16", "--student.num-blocks", "1",
]  # fmt: skip


def test_demo_runs_the_whole_story_and_resumes(tmp_path: Path) -> None:
    output = tmp_path / "demo"
    first = run_ns([ns_command("ns-mobile-demo"), "--output-dir", str(output), *TINY], cwd=tmp_path)
    summary = json.loads((output / "summary.json").read_text())
    for model in ("teacher", "student"):
        assert summary[model]["psnr"] > 5 and 0 < summary[model]["ssim"] <= 1
        assert summary[model]["ms_per_frame"] > 0
    assert summary["speedup"] == summary["teacher"]["ms_per_frame"] / summary["student"]["ms_per_frame"]
    packages = {Path(e["file"]).name: e for e in summary["exports"]}
    assert set(packages) == {"student-pose-fp16.mlpackage", "student-pose-palettize4.mlpackage", "student-pose.onnx"}
    assert all(e["verified"] and Path(e["file"]).exists() for e in packages.values())
    assert all(hours > 0 for hours in summary["full_scale_hours"].values())
    printed = " ".join(first.stdout.split())  # rich wraps lines at the terminal width
    assert "paper-scale run" in printed and "Phone packages" in printed
    # ground truth | teacher | student for each of the 2 test views; a 36-frame turntable at the scene's size
    assert imageio.imread(output / "comparison.png").shape == (2 * 32, 3 * 32, 3)
    assert len(imageio.mimread(output / "turntable.gif")) == 36

    second = run_ns([ns_command("ns-mobile-demo"), "--output-dir", str(output), *TINY], cwd=tmp_path)
    printed = " ".join(second.stdout.split())
    assert "teacher: already trained" in printed and "student: already trained" in printed
    assert json.loads((output / "summary.json").read_text())["student"]["psnr"] == summary["student"]["psnr"]
