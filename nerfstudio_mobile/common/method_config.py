"""The TrainerConfig of our `ns-train` methods: what ns-train does with it before the trainer exists (print it, save
config.yml) refuses bad input in one line too, and config.yml is written whole or not at all."""

from __future__ import annotations

from dataclasses import dataclass, field

import yaml
from nerfstudio.engine.trainer import TrainerConfig
from nerfstudio.utils.rich_utils import CONSOLE

from nerfstudio_mobile.common.checkpoints import AtomicCheckpointTrainer
from nerfstudio_mobile.common.cli import usage_errors_in_one_line
from nerfstudio_mobile.common.files import atomic_write, make_dirs


@dataclass
class MethodTrainerConfig(TrainerConfig):
    """nerfstudio's TrainerConfig, trained by AtomicCheckpointTrainer.

    ns-train builds the config from its flags (tyro), prints it, saves it, and only then makes the trainer. Settings
    that need reading or checking are resolved by `resolve` when the config is printed or saved, not while tyro builds
    it: an error there would be tyro's boxed usage message, and config.yml holds what was read."""

    _target: type = field(default_factory=lambda: AtomicCheckpointTrainer)

    def resolve(self) -> None:
        """Read what a setting names (a file) into the config and refuse settings that cannot be trained, with a
        UsageError that says what to do; before any data is loaded. Called again on a resolved config (ns-train
        prints, then saves; `--load-config` reads a saved one), where it must change nothing."""

    def print_to_terminal(self) -> None:
        with usage_errors_in_one_line(f"ns-train {self.method_name}", CONSOLE):
            self.resolve()
        super().print_to_terminal()

    def save_config(self) -> None:
        """nerfstudio's save_config, but a folder that cannot be made (a file in the way, no permission) or a full
        disk is one line and exit status 2, and no half-written config.yml is left."""
        with usage_errors_in_one_line(f"ns-train {self.method_name}", CONSOLE):
            self.resolve()
            base_dir = self.get_base_dir()
            make_dirs(base_dir)
            CONSOLE.log(f"Saving config to: {base_dir / 'config.yml'}")
            atomic_write(base_dir / "config.yml", yaml.dump(self))
