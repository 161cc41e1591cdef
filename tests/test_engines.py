"""The render engine chooser (`fastest_engine`), and the model's eval renders through it (`EngineCache`).

Tiny networks; the compiled candidate is left out of the model tests (inductor's C++ build takes minutes on two busy
cores; `prepare_for_inference` is what it runs)."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from types import FrameType

import pytest
import torch
from nerfstudio.data.scene_box import SceneBox
from torch import Tensor

from nerfstudio_mobile.common.intrinsics import Intrinsics
from nerfstudio_mobile.common.metrics import psnr
from nerfstudio_mobile.mobile_r2l import engines
from nerfstudio_mobile.mobile_r2l.engine_cache import EngineCache
from nerfstudio_mobile.mobile_r2l.engines import Engine, candidate_engines, fastest_engine
from nerfstudio_mobile.mobile_r2l.int8_backbone import int8_backbone_render
from nerfstudio_mobile.mobile_r2l.model import MobileR2LModel, MobileR2LModelConfig
from nerfstudio_mobile.mobile_r2l.network import (
    LightFieldNetwork,
    LightFieldNetworkConfig,
    fold_batchnorm,
    prepare_for_inference,
)

pytestmark = pytest.mark.unit

ONNX_RUNTIME = {"ONNX Runtime fp32", "ONNX Runtime int8 (QDQ S8S8)"}


def tiny_network() -> LightFieldNetwork:
    torch.manual_seed(0)
    config = LightFieldNetworkConfig(in_channels=24, width=16, num_blocks=2, sr_channels=(8, 8, 4))
    return LightFieldNetwork(config).eval()


def exact(net: LightFieldNetwork, x: Tensor) -> Tensor:
    return prepare_for_inference(net, channels_last=False, bf16=False)(x)


def fake_engine(net: LightFieldNetwork, delay_s: float, garble: str | None = None) -> Engine:
    """Renders the example like `net` (or a garbled picture of it), taking `delay_s` per call."""

    def build(x: Tensor) -> engines.Render:
        image = exact(net, x)
        if garble == "black":
            image = torch.zeros_like(image)
        elif garble == "nan":
            image = image.masked_fill(torch.rand_like(image) < 0.01, float("nan"))
        elif garble == "noise":
            image = image + 0.2 * torch.randn_like(image)

        def render(x: Tensor) -> Tensor:
            time.sleep(delay_s)
            return image

        return render

    return Engine("fp32", build)


@pytest.mark.parametrize("fast", ["a", "b", "c"])
def test_the_fastest_engine_is_picked_by_measurement(fast: str) -> None:
    net, x = tiny_network(), torch.randn(1, 24, 4, 5)
    candidates = {name: fake_engine(net, 0.0 if name == fast else 0.2) for name in ("a", "b", "c")}
    choice = fastest_engine(net, x, candidates=candidates)
    assert choice.name == fast
    medians = {timing.name: timing.median_ms for timing in choice.table}
    assert all(medians[fast] < median for name, median in medians.items() if name != fast), medians
    torch.testing.assert_close(choice.render(x), exact(net, x))


@pytest.mark.parametrize("garble", ["black", "nan", "noise"])
def test_an_engine_that_garbles_the_picture_never_wins_however_fast(garble: str) -> None:
    net, x = tiny_network(), torch.randn(1, 24, 4, 5)
    candidates = {"garbled": fake_engine(net, 0.0, garble), "right": fake_engine(net, 0.01)}
    choice = fastest_engine(net, x, candidates=candidates)
    assert choice.name == "right"
    garbled = next(timing for timing in choice.table if timing.name == "garbled")
    assert garbled.median_ms is None and "PSNR" in (garbled.rejected or "")


def test_an_engine_that_cannot_build_here_is_left_out() -> None:
    net, x = tiny_network(), torch.randn(1, 24, 4, 5)

    def no_compiler(x: Tensor) -> engines.Render:
        raise RuntimeError("no C++ compiler")

    choice = fastest_engine(net, x, candidates={"broken": Engine("bf16", no_compiler), "ok": fake_engine(net, 0.0)})
    assert choice.name == "ok" and "no C++ compiler" in (choice.table[0].rejected or "")


def test_without_onnxruntime_the_torch_engines_remain(monkeypatch: pytest.MonkeyPatch) -> None:
    net, calibration = tiny_network(), [torch.randn(1, 24, 4, 5)]
    installed = set(candidate_engines(net, calibration))
    assert ONNX_RUNTIME <= installed  # the export extra is installed in the tests' environment
    assert set(candidate_engines(net)) == {name for name in installed if "int8" not in name}  # needs calibration
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import fails as if not installed
    remaining = set(candidate_engines(net, calibration))
    assert remaining == installed - ONNX_RUNTIME
    assert "eager fp32" in remaining and any(name.startswith("compiled") for name in remaining)


def without_compiled(net: LightFieldNetwork, calibration: tuple[Tensor, ...] = ()) -> dict[str, Engine]:
    return {name: engine for name, engine in candidate_engines(net, calibration).items() if "compiled" not in name}


def test_the_real_engines_build_run_and_render_like_the_network() -> None:
    net, x = tiny_network(), torch.randn(1, 24, 4, 5)
    calibration = tuple(torch.randn(1, 24, 4, 5) for _ in range(4))
    choice = fastest_engine(net, x, candidates=without_compiled(net, calibration))
    table = {timing.name: timing for timing in choice.table}
    assert set(table) == set(without_compiled(net, calibration))
    assert all(timing.psnr is not None for timing in table.values()), table  # each built and ran, int8 too
    assert all(timing.median_ms is not None for timing in table.values() if timing.dtype != "int8"), table
    assert table["ONNX Runtime fp32"].psnr > 60
    assert choice.render(x).shape == (1, 4, 32, 40)


def test_onnx_runtime_threads_sleep_between_runs(tmp_path: Path) -> None:
    """A race between engines times torch right after ONNX Runtime: spinning ORT threads would take its cores."""
    from nerfstudio_mobile.export.onnx import cpu_session, trace_onnx

    net, x = tiny_network(), torch.randn(1, 24, 4, 5)
    trace_onnx(fold_batchnorm(net), x, tmp_path / "tiny.onnx", "rays", ("image",))
    options = cpu_session(tmp_path / "tiny.onnx", threads=2).get_session_options()
    for pool in ("intra_op", "inter_op"):
        assert options.get_session_config_entry(f"session.{pool}.allow_spinning") == "0"


def test_the_int8_backbone_renders_like_the_network_unless_its_calibration_is_wrong() -> None:
    net = tiny_network()
    with torch.no_grad():
        net.stem[0].weight.mul_(4)  # a picture that depends on the rays, so a wrong backbone shows
        net.rgb_head.weight.mul_(100)
    rays = [2 * torch.rand(1, 24, 6, 5) - 1 for _ in range(5)]  # encoded rays lie in [-1, 1]
    x, calibration = rays[0], rays[1:]
    image = int8_backbone_render(net, x, calibration)(x)
    assert image.shape == (1, 4, 48, 40)
    assert psnr(exact(net, x)[:, :3], image[:, :3]) > engines.MIN_PSNR
    # The chooser's fidelity check catches int8 activations calibrated on the wrong range (here 1000x too wide: every
    # ray quantizes to about zero).
    miscalibrated = Engine("int8", lambda x: int8_backbone_render(net, x, [c * 1000 for c in calibration]))
    choice = fastest_engine(net, x, candidates={"miscalibrated": miscalibrated, "right": fake_engine(net, 0.0)})
    assert choice.name == "right" and "PSNR" in (choice.table[0].rejected or ""), choice.table


@pytest.fixture
def no_compile(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(engines, "candidate_engines", lambda net, calibration=(): without_compiled(net, calibration))


def tiny_model(**options: bool) -> MobileR2LModel:
    torch.manual_seed(0)
    config = MobileR2LModelConfig(network=LightFieldNetworkConfig(width=16, num_blocks=2), **options)
    scene_box = SceneBox(torch.tensor([[-1.0] * 3, [1.0] * 3]))
    return config.setup(scene_box=scene_box, num_train_data=1, metadata={"mobile_r2l": {"near_far": (2.0, 6.0)}})


CAMERA = Intrinsics(40.0, 40.0, 20.0, 12.0, 40, 24).cameras(torch.eye(4)[None, :3])


def plain_render(model: MobileR2LModel) -> dict[str, Tensor]:
    model.config.fastest_cpu_engine = False
    outputs = model.get_outputs_for_camera(CAMERA)
    model.config.fastest_cpu_engine = True
    return outputs


def test_eval_renders_go_through_the_fastest_engine_and_match_the_training_network(no_compile: None) -> None:
    model = tiny_model().eval()
    outputs = model.get_outputs_for_camera(CAMERA)
    assert model.engine_cache.chosen is not None
    for name, plain in plain_render(model).items():  # bf16 autocast against the chosen engine
        assert outputs[name].shape == plain.shape == (24, 40, 3 if name == "rgb" else 1)
        torch.testing.assert_close(outputs[name], plain, atol=3e-2, rtol=3e-2)


def test_an_eval_render_after_an_optimizer_step_shows_the_new_weights(no_compile: None) -> None:
    model = tiny_model().eval()
    before = model.get_outputs_for_camera(CAMERA)["rgb"]
    assert model.engine_cache.chosen is not None
    optimizer = torch.optim.AdamW(model.network.parameters(), lr=0.05)
    model.train()
    model.get_outputs(CAMERA)["rgb"].mean().backward()
    optimizer.step()
    model.eval()
    after = model.get_outputs_for_camera(CAMERA)["rgb"]
    assert (before - after).abs().max() > 0.1  # the step changed the picture, and the render shows it
    torch.testing.assert_close(after, plain_render(model)["rgb"], atol=3e-2, rtol=0)


@pytest.mark.parametrize(("option", "training"), [(False, False), (True, True)], ids=["option off", "training"])
def test_the_option_off_and_training_use_the_training_network(no_compile: None, option: bool, training: bool) -> None:
    model = tiny_model(fastest_cpu_engine=option).train(training)
    with torch.no_grad():
        model.get_outputs(CAMERA)
    assert model.engine_cache.chosen is None


def test_the_engine_waits_until_the_weights_settle_and_renders_the_settled_weights(no_compile: None) -> None:
    net, x = tiny_network(), torch.randn(1, 24, 4, 5)
    clock = [0.0]
    cache = EngineCache(clock=lambda: clock[0])
    plain_calls = []

    def plain(x: Tensor) -> Tensor:
        plain_calls.append(clock[0])
        return exact(net, x)

    cache.render(net, x, plain)
    first = cache.chosen
    assert first is not None and not plain_calls  # weights never seen changing: at once
    for now in (10.0, 20.0, 30.0):  # a training step every 10 s
        clock[0] = now
        with torch.no_grad():
            net.stem[0].bias.add_(0.5)
        torch.testing.assert_close(cache.render(net, x, plain), exact(net, x))
        assert cache.chosen is None
    clock[0] = 49.0  # unchanged for 19 s: less than twice the last 10 s
    cache.render(net, x, plain)
    assert plain_calls == [10.0, 20.0, 30.0, 49.0] and cache.chosen is None
    clock[0] = 51.0
    torch.testing.assert_close(cache.render(net, x, plain), exact(net, x), atol=3e-2, rtol=0)
    settled = cache.chosen
    assert settled is not None and settled is not first and len(plain_calls) == 4
    other_shape = torch.randn(1, 24, 3, 6)  # built for this shape, not chosen again
    assert cache.render(net, other_shape, plain).shape == (1, 4, 24, 48) and cache.chosen is settled


def test_a_viewer_interrupt_cannot_cut_an_engine_build_half_way(no_compile: None) -> None:
    """nerfstudio's viewer raises from a line tracer when the camera moves: the build finishes first."""
    net, x = tiny_network(), torch.randn(1, 24, 4, 5)

    class CameraMoved(Exception):
        pass

    def viewer_tracer(frame: FrameType, event: str, arg: object) -> object:
        if event == "line" and frame.f_code is fastest_engine.__code__:
            raise CameraMoved
        return viewer_tracer

    cache = EngineCache()
    sys.settrace(viewer_tracer)
    try:
        cache.render(net, x, plain=lambda x: exact(net, x))
    finally:
        sys.settrace(None)
    assert cache.chosen is not None
