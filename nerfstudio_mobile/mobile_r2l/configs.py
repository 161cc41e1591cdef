"""Method specification: `ns-train mobile-r2l --pipeline.datamanager.teacher-config <run>/config.yml`."""

from __future__ import annotations

from dataclasses import dataclass

from nerfstudio.configs.base_config import MachineConfig, ViewerConfig
from nerfstudio.pipelines.base_pipeline import VanillaPipelineConfig
from nerfstudio.plugins.types import MethodSpecification

from nerfstudio_mobile.common.compat import default_device_type
from nerfstudio_mobile.common.method_config import MethodTrainerConfig
from nerfstudio_mobile.mobile_r2l.datamanager import PseudoViewDataManagerConfig
from nerfstudio_mobile.mobile_r2l.model import MobileR2LModelConfig
from nerfstudio_mobile.mobile_r2l.optimization import AdamWOptimizerConfig, WarmupStepDecaySchedulerConfig

PAPER_STEPS = 600_000


@dataclass
class MobileR2LTrainerConfig(MethodTrainerConfig):
    """A mobile-r2l run: its teacher and distillation settings are checked when ns-train prints or saves the config,
    so a run that cannot be distilled leaves no run folder behind."""

    def resolve(self) -> None:
        datamanager = self.pipeline.datamanager
        assert isinstance(datamanager, PseudoViewDataManagerConfig), f"mobile-r2l distils, not {datamanager}"
        datamanager.check()


def mobile_r2l_trainer(max_steps: int = PAPER_STEPS) -> MobileR2LTrainerConfig:
    """The paper's recipe (AdamW 5e-4 with warm-up, MSE on whole images, mixed precision), with a cosine decay where
    the paper steps down: the same minutes buy 0.4 dB at the demo's scale (results/distill_ablation_fit.md)."""
    return MobileR2LTrainerConfig(
        method_name="mobile-r2l",
        steps_per_eval_batch=0,
        steps_per_eval_image=5000,
        steps_per_eval_all_images=50_000,
        steps_per_save=5000,
        max_num_iterations=max_steps,
        mixed_precision=True,  # CUDA only; on CPUs the model runs its network in bf16 itself
        pipeline=VanillaPipelineConfig(datamanager=PseudoViewDataManagerConfig(), model=MobileR2LModelConfig()),
        optimizers={
            "network": {
                "optimizer": AdamWOptimizerConfig(lr=5e-4, eps=1e-8, weight_decay=0.0),
                "scheduler": WarmupStepDecaySchedulerConfig(max_steps=max_steps, decay="cosine"),
            }
        },
        viewer=ViewerConfig(num_rays_per_chunk=1 << 15),
        vis="viewer",
        machine=MachineConfig(device_type=default_device_type()),  # type: ignore[arg-type]
    )


mobile_r2l = MethodSpecification(
    config=mobile_r2l_trainer(),
    description="MobileR2L: a 1x1-conv light field with super-resolution distilled from any trained nerfstudio "
    "model (--pipeline.datamanager.teacher-config), one forward pass per frame, exportable to Core ML/ONNX.",
)
