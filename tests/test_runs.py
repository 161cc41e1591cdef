"""Runs and checkpoints, for every method: written so a kill never leaves them unloadable, read from anywhere,
refused in one line when they can't be used."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from unittest import mock

import pytest
import torch

from nerfstudio_mobile.common.runs import RunError, load_run, read_run_config

README = Path(__file__).resolve().parents[1] / "README.md"


def test_checkpoint_writes_are_atomic(tmp_path: Path) -> None:
    """A crash while writing step 2 leaves step 1 complete and loadable, and nothing else in the checkpoint folder
    (nerfstudio's resume parses every name there)."""
    from types import SimpleNamespace

    from torch.cuda.amp.grad_scaler import GradScaler

    from nerfstudio_mobile.common.checkpoints import AtomicCheckpointTrainer, checkpoint_steps

    trainer = AtomicCheckpointTrainer.__new__(AtomicCheckpointTrainer)
    trainer.checkpoint_dir = tmp_path / "nerfstudio_models"
    trainer.pipeline = torch.nn.Linear(2, 2)
    trainer.optimizers = SimpleNamespace(optimizers={}, schedulers={})
    trainer.grad_scaler = GradScaler(enabled=False)
    trainer.config = SimpleNamespace(save_only_latest_checkpoint=True)
    trainer.save_checkpoint(1)

    write_bytes = Path.write_bytes

    def killed_mid_write(path: Path, data: bytes) -> int:
        write_bytes(path, bytes(data)[: len(data) // 2])
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt), mock.patch.object(Path, "write_bytes", killed_mid_write):
        trainer.save_checkpoint(2)
    assert [p.name for p in trainer.checkpoint_dir.iterdir()] == ["step-000000001.ckpt"]
    assert torch.load(trainer.checkpoint_dir / "step-000000001.ckpt")["step"] == 1
    (trainer.checkpoint_dir / ".step-000000002.ckpt.123-abc.partial").write_bytes(b"left by a 0.1 writer")
    assert checkpoint_steps(trainer.checkpoint_dir) == [1]


def test_a_truncated_checkpoint_is_refused_in_words(nas_nerf_run: Path, tmp_path: Path) -> None:
    run = tmp_path / "outputs"
    shutil.copytree(nas_nerf_run.parents[3], run)
    config = run / "scene" / "nas-nerf" / "run" / "config.yml"
    (checkpoint,) = (config.parent / "nerfstudio_models").glob("step-*.ckpt")
    checkpoint.write_bytes(checkpoint.read_bytes()[:1000])
    with pytest.raises(RunError, match="truncated or not a checkpoint"):
        load_run(config)


def test_a_run_of_version_0_1_is_pointed_to_the_readme_and_its_sed_line_upgrades_it(
    mobile_r2l_run: Path, tmp_path: Path
) -> None:
    """0.2 moved modules that config.yml names: a 0.1 run is refused with where to look, and the README's one-line
    migration makes it load again."""
    outputs = tmp_path / "outputs"
    shutil.copytree(mobile_r2l_run.parents[3], outputs)
    config = outputs / "scene" / "mobile-r2l" / "run" / "config.yml"
    text = config.read_text()
    trainer = "AtomicCheckpointTrainer"
    old = text.replace(f"nerfstudio_mobile.common.checkpoints.{trainer}", f"nas_nerf.runs.{trainer}")
    newer = "nerfstudio_mobile.mobile_r2l.configs.MobileR2LTrainerConfig"  # a class 0.1 did not have: left as it is
    old = old.replace("nerfstudio_mobile.mobile_r2l.", "nerfstudio_mobile.").replace(
        newer.replace("mobile_r2l.", ""), newer
    )
    assert old != text
    config.write_text(old)
    with pytest.raises(RunError, match="Upgrading from 0.1"):
        read_run_config(config)
    (sed_line,) = [line for line in README.read_text().splitlines() if line.startswith("sed -i -E")]
    subprocess.run(re.sub(r"outputs/\S+$", str(config), sed_line), shell=True, check=True)
    assert config.read_text() == text
    read_run_config(config)
