"""camseg.models: every architecture builds, runs, and splits into composable stages."""

from __future__ import annotations

import pytest
import torch

from camseg.core.errors import NotFoundError
from camseg.models import ARCHITECTURES, PAPER_NAMES, ModelSpec, build, count_parameters

STAGES = ["stem", "stage1", "stage2", "stage3", "stage4"]


@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
@pytest.mark.parametrize("in_channels", [1, 3])
@pytest.mark.parametrize("num_classes", [2, 3])
@pytest.mark.parametrize("size", [64, 128])
def test_builds_and_forward_shape(arch: str, in_channels: int, num_classes: int, size: int) -> None:
    torch.manual_seed(0)
    model = build(
        ModelSpec(
            arch=arch, in_channels=in_channels, num_classes=num_classes, input_size=size, width=8
        )
    ).eval()
    assert model.layer_names == STAGES and model.cam_layer == "stage4"
    x = torch.rand(2, in_channels, size, size)
    with torch.inference_mode():
        logits = model(x)
        last = model.run_until(x, len(STAGES) - 1)
    assert logits.shape == (2, num_classes) and torch.isfinite(logits).all()
    # every network downsamples 16x and keeps the last stage at that resolution
    assert last.shape[-2:] == (size // 16, size // 16)
    assert last.shape[1] == model.fc.in_features


@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
def test_run_until_then_run_from_equals_forward(arch: str) -> None:
    torch.manual_seed(1)
    model = build(ModelSpec(arch=arch, in_channels=1, num_classes=3, input_size=64, width=8))
    # non-trivial normalisation and BN statistics, so every path must apply them
    model.set_input_stats(0.4, 0.2)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                assert m.running_mean is not None and m.running_var is not None
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
        model.fc.weight.normal_(0, 1)
    model.eval()
    x = torch.rand(3, 1, 64, 64)
    with torch.inference_mode():
        ref = model(x)
        for k in range(len(STAGES)):
            acts = model.run_until(x, k)
            logits, captured = model.run_from(acts, k + 1, capture=range(k + 1, len(STAGES)))
            torch.testing.assert_close(logits, ref, atol=1e-5, rtol=1e-5)
            assert sorted(captured) == list(range(k + 1, len(STAGES)))
            if k + 1 < len(STAGES):
                torch.testing.assert_close(
                    captured[len(STAGES) - 1],
                    model.run_until(x, len(STAGES) - 1),
                    atol=1e-5,
                    rtol=1e-5,
                )
        logits, captured = model.run_from(x, 0, capture=[2])
        torch.testing.assert_close(logits, ref, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(captured[2], model.run_until(x, 2), atol=1e-6, rtol=1e-6)
        torch.testing.assert_close(model.head(model.run_until(x, 4)), ref, atol=1e-5, rtol=1e-5)


def test_normalisation_is_part_of_the_model() -> None:
    model = build(ModelSpec(arch="resnet", input_size=64, width=8)).eval()
    x = torch.rand(2, 1, 64, 64)
    model.set_input_stats(0.5, 0.25)
    torch.testing.assert_close(model.normalise(x), (x - 0.5) / 0.25)
    model.set_input_stats(0.5, 0.0)  # a zero std is clamped, never a division by zero
    assert torch.isfinite(model.normalise(x)).all()
    assert "input_stats" in model.state_dict()


def test_check_layer_names_valid_stages() -> None:
    model = build(ModelSpec(arch="mobilenet", input_size=64, width=8))
    assert model.check_layer("stem") == 0 and model.check_layer("stage4") == 4
    with pytest.raises(NotFoundError) as info:
        model.check_layer("layer4")
    msg = str(info.value)
    assert "'layer4'" in msg and all(name in msg for name in STAGES)
    assert model.has_linear_gap_head("stage4") and not model.has_linear_gap_head("stage3")


def test_unknown_architecture() -> None:
    with pytest.raises(NotFoundError, match="vgg"):
        build(ModelSpec(arch="vgg"))


def test_registry_and_parameter_counts() -> None:
    assert set(PAPER_NAMES) == set(ARCHITECTURES)
    small = count_parameters(build(ModelSpec(arch="xception", width=8)))
    large = count_parameters(build(ModelSpec(arch="xception", width=16)))
    assert 0 < small < large


def test_build_is_seeded() -> None:
    torch.manual_seed(3)
    a = build(ModelSpec(arch="inception", input_size=64, width=8)).state_dict()
    torch.manual_seed(3)
    b = build(ModelSpec(arch="inception", input_size=64, width=8)).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
def test_dilation_doubles_the_cam_resolution_and_keeps_the_graph(arch: str) -> None:
    """``extra={"dilated": 1}``: the last downsampling stage keeps stride 1 and dilates,
    so the Grad-CAM layer is 8x8 instead of 4x4 at 64 px, with the same parameters."""
    plain = build(ModelSpec(arch, input_size=64, width=8)).eval()
    dilated = build(ModelSpec(arch, input_size=64, width=8, extra={"dilated": 1})).eval()
    assert count_parameters(plain) == count_parameters(dilated)
    dilated.load_state_dict(plain.state_dict())  # the same weights fit: only strides and dilations differ
    x = torch.rand(2, 1, 64, 64)
    k = plain.check_layer(plain.cam_layer)
    assert plain.run_until(x, k).shape[-2:] == (4, 4)
    assert dilated.run_until(x, k).shape[-2:] == (8, 8)
    assert dilated(x).shape == (2, 2)
    # every stage before the dilated one is untouched
    assert torch.equal(plain.run_until(x, 1), dilated.run_until(x, 1))
