"""camseg.heat.cam: the analytic CAM identity, autograd vs independent references, purity,
thread safety and argument errors.

References here are written independently of ``camseg.heat.cam``: activations come from a
forward hook on ``model.forward`` (not ``run_until``/``run_from``), gradients from
``torch.autograd.grad`` on the full graph, and the four combination rules are
re-implemented from their papers.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from camseg.core.errors import InvalidInputError, NotFoundError
from camseg.heat.cam import (
    CAMS,
    FUSED_LAYERS,
    METHODS,
    Cam,
    RawCam,
    cam_from_activations,
    cam_of,
    compute_cam,
    dihedral,
    normalise_maps,
    raw_cam,
    tta_cam,
    undo_dihedral,
)
from camseg.heat.methods import CamMethod, parse_method
from camseg.models import Classifier

ModelFactory = Callable[..., Classifier]
FOUR = ["gradcam", "gradcam++", "hirescam", "layercam"]
SIZE = 64  # a 4x4 last stage: small, but maps with real spatial structure


# ------------------------------------------------------------------ references
def hooked_acts_and_grads(
    model: Classifier, x: Tensor, layers: list[str], targets: Tensor
) -> tuple[Tensor, list[Tensor], list[Tensor]]:
    """Logits, activations of ``layers`` captured by forward hooks during ``model(x)``,
    and d score / d activations. Hooks are removed before returning."""
    captured: dict[str, Tensor] = {}
    handles = [
        model.stages[name].register_forward_hook(
            lambda _m, _i, out, name=name: captured.__setitem__(name, out)
        )
        for name in layers
    ]
    try:
        with torch.enable_grad():
            xx = x.clone().requires_grad_(True)  # makes every activation part of the graph
            logits = model(xx)
            acts = [captured[name] for name in layers]
            score = logits.gather(1, targets[:, None]).sum()
            grads = list(torch.autograd.grad(score, acts))
    finally:
        for h in handles:
            h.remove()
    return logits.detach(), [a.detach() for a in acts], grads


def ref_combine(method: str, a: Tensor, g: Tensor) -> Tensor:
    """The four rules, from their papers, in float64."""
    a, g = a.double(), g.double()
    if method == "gradcam":  # Selvaraju et al. 2017, eq. 1-2
        cam = (g.mean(dim=(2, 3))[:, :, None, None] * a).sum(1)
    elif method == "hirescam":  # Draelos & Carin 2020
        cam = (g * a).sum(1)
    elif method == "layercam":  # Jiang et al. 2021
        cam = (g.clamp_min(0) * a).sum(1)
    elif method == "gradcam++":  # Chattopadhay et al. 2018, eq. 19 with exp(score)
        denom = 2 * g**2 + a.sum(dim=(2, 3), keepdim=True) * g**3
        alpha = torch.where(denom != 0, g**2 / torch.where(denom != 0, denom, 1.0), 0.0)
        w = (alpha * g.clamp_min(0)).sum(dim=(2, 3))
        cam = (w[:, :, None, None] * a).sum(1)
    else:
        raise AssertionError(method)
    return cam.clamp_min(0)


def minmax(maps: Tensor) -> Tensor:
    """Per-map min-max to [0, 1]; a constant map (all zero after ReLU) becomes zeros."""
    flat = maps.reshape(len(maps), -1)
    lo, hi = flat.min(1, keepdim=True).values, flat.max(1, keepdim=True).values
    span = hi - lo
    return torch.where(span > 0, (flat - lo) / torch.where(span > 0, span, 1.0), 0.0).reshape(
        maps.shape
    )


def up(maps: Tensor, size: tuple[int, int]) -> Tensor:
    return F.interpolate(maps[:, None].float(), size=size, mode="bilinear", align_corners=False)[
        :, 0
    ]


def plain_cam(model: Classifier, x: Tensor, targets: Tensor) -> Tensor:
    """CAM (Zhou et al. 2016): ReLU(sum_k W[c, k] A_k) at the last stage, not normalised."""
    _, (acts,), _ = hooked_acts_and_grads(model, x, [model.layer_names[-1]], targets)
    w = model.fc.weight.detach()[targets]
    return torch.einsum("nk,nkhw->nhw", w, acts).clamp_min(0)


def all_hooks(model: nn.Module) -> list[tuple[str, str]]:
    kinds = (
        "_forward_hooks",
        "_forward_pre_hooks",
        "_backward_hooks",
        "_backward_pre_hooks",
        "_state_dict_hooks",
        "_load_state_dict_pre_hooks",
    )
    return [
        (name, kind)
        for name, m in model.named_modules()
        for kind in kinds
        if getattr(m, kind, None)
    ]


def perturb(model: Classifier, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.3 * p.std().nan_to_num(0.1) * torch.randn(p.shape, generator=gen))


@pytest.fixture(scope="module")
def model64(make_model: ModelFactory) -> Classifier:
    return make_model("densenet", size=SIZE, seed=4)


@pytest.fixture(scope="module")
def x64() -> Tensor:
    return torch.rand(4, 1, SIZE, SIZE, generator=torch.Generator().manual_seed(0))


# ------------------------------------------------------------------ the analytic identity
@pytest.mark.parametrize("arch", ["densenet", "resnet", "mobilenet", "xception", "inception", "nasnet"])
def test_gradcam_equals_cam_up_to_scale(make_model: ModelFactory, arch: str) -> None:
    """GAP + linear head: dy_c/dA_k = W[c, k] / (h w), so Grad-CAM = CAM / (h w)."""
    model = make_model(arch, size=SIZE, seed=1)
    x = torch.rand(4, 1, SIZE, SIZE, generator=torch.Generator().manual_seed(1))
    live = 0
    for round_ in range(2):
        if round_:
            perturb(model, seed=11)  # the identity holds for any weights
        for target in (0, 1):
            t = torch.full((4,), target)
            cam = plain_cam(model, x, t)
            h, w = cam.shape[-2:]
            live += int((cam.flatten(1).amax(1) > 0).sum())
            raw = compute_cam(
                model, x, targets=target, analytic=False, normalise=False, size=(h, w)
            )
            torch.testing.assert_close(raw.heatmaps, cam / (h * w), rtol=1e-4, atol=1e-7)
            got = compute_cam(model, x, targets=target, analytic=False).heatmaps
            expected = normalise_maps(up(cam, (SIZE, SIZE)))
            torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)
            # and against a min-max written here, with the map's hottest pixel at 1
            torch.testing.assert_close(got, minmax(up(cam, (SIZE, SIZE))), atol=1e-5, rtol=0)
    assert live >= 8, "too few non-degenerate maps for the comparison to mean anything"


@pytest.mark.parametrize("method", FOUR)
def test_analytic_equals_autograd_at_last_stage(
    model64: Classifier, x64: Tensor, method: str
) -> None:
    for targets in (1, [0, 1, 1, 0]):
        fast = compute_cam(model64, x64, method=method, targets=targets, analytic=True)
        slow = compute_cam(model64, x64, method=method, targets=targets, analytic=False)
        torch.testing.assert_close(fast.heatmaps, slow.heatmaps, atol=1e-5, rtol=0)
        torch.testing.assert_close(fast.logits, slow.logits, atol=1e-5, rtol=1e-5)
        assert torch.equal(fast.targets, slow.targets)
        assert fast.heatmaps.amax(dim=(1, 2)).min() == 1.0  # non-degenerate maps


@pytest.mark.parametrize("method", FOUR)
@pytest.mark.parametrize("layer", ["stage4", "stage3", "stage2"])
def test_autograd_matches_hook_reference(
    model64: Classifier, x64: Tensor, method: str, layer: str
) -> None:
    t = torch.tensor([1, 0, 1, 1])
    logits, (acts,), (grads,) = hooked_acts_and_grads(model64, x64, [layer], t)
    raw = ref_combine(method, acts, grads)
    res = compute_cam(
        model64,
        x64,
        method=method,
        targets=t,
        layer=layer,
        analytic=False,
        normalise=False,
        size=(int(raw.shape[-2]), int(raw.shape[-1])),
    )
    torch.testing.assert_close(
        res.heatmaps.double(), raw, rtol=1e-4, atol=1e-6 * float(raw.abs().max())
    )
    got = compute_cam(model64, x64, method=method, targets=t, layer=layer).heatmaps
    torch.testing.assert_close(got, minmax(up(raw, (SIZE, SIZE))), atol=1e-5, rtol=0)
    torch.testing.assert_close(res.logits, logits, atol=1e-5, rtol=1e-5)
    assert res.layers == (layer,)


def test_stage3_gradient_by_finite_differences(model64: Classifier, x64: Tensor) -> None:
    """The hook reference's gradient is itself right: a central difference along it."""
    t = torch.tensor([1, 0, 1, 1])
    _, (acts,), (grads,) = hooked_acts_and_grads(model64, x64, ["stage3"], t)
    k = model64.check_layer("stage3")
    acts, grads = acts.double(), grads.double()  # the perturbation must not round away
    d = grads / grads.norm()

    def score(a: Tensor) -> float:
        with torch.no_grad():
            logits, _ = model64.double().run_from(a, k + 1)
        return float(logits.gather(1, t[:, None]).sum())

    try:
        eps = 1e-4
        fd = (score(acts + eps * d) - score(acts - eps * d)) / (2 * eps)
    finally:
        model64.float()
    assert fd == pytest.approx(float((grads * d).sum()), rel=1e-3)


# ------------------------------------------------------------------ outputs
@pytest.mark.parametrize("method", METHODS)
def test_outputs_in_unit_range_and_shapes(model64: Classifier, x64: Tensor, method: str) -> None:
    res = compute_cam(model64, x64, method=method)
    assert res.heatmaps.shape == (4, SIZE, SIZE) and res.heatmaps.dtype == torch.float32
    assert float(res.heatmaps.min()) >= 0.0 and float(res.heatmaps.max()) <= 1.0
    assert res.logits.shape == (4, 2)
    torch.testing.assert_close(res.probabilities.sum(1), torch.ones(4))
    custom = compute_cam(model64, x64, method=method, size=(20, 48))
    assert custom.heatmaps.shape == (4, 20, 48)
    assert float(custom.heatmaps.min()) >= 0.0 and float(custom.heatmaps.max()) <= 1.0


def test_logits_are_the_models(model64: Classifier, x64: Tensor) -> None:
    with torch.inference_mode():
        expected = model64(x64)
    for analytic in (True, False):
        torch.testing.assert_close(
            compute_cam(model64, x64, analytic=analytic).logits, expected, atol=1e-5, rtol=1e-5
        )
    torch.testing.assert_close(
        compute_cam(model64, x64, method="fused").logits, expected, atol=1e-5, rtol=1e-5
    )


def test_layer_size_skips_upsampling(model64: Classifier, x64: Tensor) -> None:
    t = torch.ones(4, dtype=torch.long)
    _, (acts,), (grads,) = hooked_acts_and_grads(model64, x64, ["stage4"], t)
    res = compute_cam(model64, x64, size=(4, 4))
    torch.testing.assert_close(
        res.heatmaps, minmax(ref_combine("gradcam", acts, grads)).float(), atol=1e-5, rtol=0
    )


def test_input_size_not_model_size(model64: Classifier) -> None:
    x = torch.rand(2, 1, 96, 80)
    res = compute_cam(model64, x)
    assert res.heatmaps.shape == (2, 96, 80)


def test_fused_method(model64: Classifier, x64: Tensor) -> None:
    t = torch.ones(4, dtype=torch.long)
    res = compute_cam(model64, x64, method="fused")
    assert res.layers == ("stage3", "stage4")
    assert res.heatmaps.shape == (4, SIZE, SIZE)
    assert float(res.heatmaps.min()) >= 0.0 and float(res.heatmaps.max()) == pytest.approx(1.0)
    _, acts, grads = hooked_acts_and_grads(model64, x64, ["stage3", "stage4"], t)
    parts = [
        minmax(up(ref_combine("layercam", a, g), (SIZE, SIZE)))
        for a, g in zip(acts, grads, strict=True)
    ]
    expected = minmax((parts[0] * parts[1]).sqrt())
    torch.testing.assert_close(res.heatmaps, expected, atol=1e-4, rtol=0)


# ------------------------------------------------------------------ targets
def test_targets_per_image(model64: Classifier, x64: Tensor) -> None:
    per_image = compute_cam(model64, x64, targets=[0, 1, 1, 0])
    assert per_image.targets.tolist() == [0, 1, 1, 0]
    for c in (0, 1):
        single = compute_cam(model64, x64, targets=c)
        rows = [i for i, t in enumerate([0, 1, 1, 0]) if t == c]
        torch.testing.assert_close(
            per_image.heatmaps[rows], single.heatmaps[rows], atol=1e-6, rtol=0
        )
    as_tensor = compute_cam(model64, x64, targets=torch.tensor([0, 1, 1, 0]))
    torch.testing.assert_close(as_tensor.heatmaps, per_image.heatmaps)
    # the two classes' maps really differ, and the default is the last class (tumor)
    zero, one = compute_cam(model64, x64, targets=0), compute_cam(model64, x64, targets=1)
    assert (zero.heatmaps - one.heatmaps).abs().max() > 0.1
    default = compute_cam(model64, x64)
    assert default.targets.tolist() == [1, 1, 1, 1]
    torch.testing.assert_close(default.heatmaps, one.heatmaps)


# ------------------------------------------------------------------ cam_from_activations
@pytest.mark.parametrize("method", FOUR)
def test_cam_from_activations_equals_compute_cam(
    model64: Classifier, x64: Tensor, method: str
) -> None:
    t = torch.tensor([1, 0, 1, 0])
    with torch.inference_mode():
        acts = model64.run_until(x64, len(model64.layer_names) - 1)
    maps = cam_from_activations(
        acts, model64.fc.weight.detach(), t, method=method, size=(SIZE, SIZE)
    )
    expected = compute_cam(model64, x64, method=method, targets=t).heatmaps
    torch.testing.assert_close(maps, expected, atol=1e-5, rtol=0)
    assert cam_from_activations(acts, model64.fc.weight.detach(), t, method=method).shape == (
        4,
        4,
        4,
    )


def test_cam_from_activations_refuses_fused(model64: Classifier) -> None:
    with pytest.raises(InvalidInputError, match="fused"):
        cam_from_activations(
            torch.rand(1, 4, 2, 2), torch.rand(2, 4), torch.tensor([1]), method="fused"
        )


# ------------------------------------------------------------------ purity
def test_model_left_as_it_was(make_model: ModelFactory) -> None:
    model = make_model("resnet", size=32, seed=2)
    model.train()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.rand(3, 1, 32, 32)
    x_before = x.clone()
    for method in METHODS:
        for analytic in (True, False):
            compute_cam(model, x, method=method, analytic=analytic)
        compute_cam(model, x, method=method, layer="stage2")
    assert model.training and all(m.training for m in model.modules())
    assert all(p.grad is None for p in model.parameters())
    assert all(p.requires_grad for p in model.parameters())
    assert all_hooks(model) == []
    assert (
        not nn.modules.module._global_forward_hooks and not nn.modules.module._global_backward_hooks
    )
    after = model.state_dict()
    assert all(torch.equal(state[k], after[k]) for k in state), "BatchNorm statistics changed"
    assert torch.equal(x, x_before) and not x.requires_grad and x.grad is None


def test_eval_model_stays_in_eval(model64: Classifier, x64: Tensor) -> None:
    compute_cam(model64, x64, analytic=False)
    assert not model64.training and not any(m.training for m in model64.modules())


def test_mixed_mode_submodules_are_restored(make_model: ModelFactory) -> None:
    """A training model with a frozen (eval-mode) BatchNorm keeps that BatchNorm frozen."""
    model = make_model("resnet", size=32, seed=2)
    model.train()
    frozen = model.stages["stem"]
    stage1: Any = model.stages["stage1"]
    stage1[0].bn1.eval()
    frozen.eval()
    compute_cam(model, torch.rand(2, 1, 32, 32))
    assert model.training and model.stages["stage2"].training
    assert not stage1[0].bn1.training, (
        "a frozen submodule was switched to train mode"
    )
    assert not frozen.training


def test_results_independent_of_training_flag(make_model: ModelFactory) -> None:
    model = make_model("densenet", size=32, seed=5)
    x = torch.rand(3, 1, 32, 32)
    ref = compute_cam(model, x, analytic=False).heatmaps
    model.train()
    torch.testing.assert_close(compute_cam(model, x, analytic=False).heatmaps, ref)


# ------------------------------------------------------------------ thread safety
def _run_threads(fn: Callable[[int], None], n: int) -> list[BaseException]:
    errors: list[BaseException] = []
    barrier = threading.Barrier(n)

    def wrapped(i: int) -> None:
        try:
            barrier.wait(timeout=30)
            fn(i)
        except BaseException as exc:  # surfaced by the caller
            errors.append(exc)

    threads = [threading.Thread(target=wrapped, args=(i,)) for i in range(n)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(timeout=120)
    assert not any(th.is_alive() for th in threads)
    return errors


@pytest.mark.parametrize("analytic", [True, False])
def test_concurrent_calls_match_sequential(make_model: ModelFactory, analytic: bool) -> None:
    model = make_model("densenet", size=32, seed=6)
    gen = torch.Generator().manual_seed(7)
    inputs = [torch.rand(2, 1, 32, 32, generator=gen) for _ in range(8)]
    methods = [FOUR[i % 4] for i in range(8)]
    layers = ["stage4", "stage3"] * 4
    sequential = [
        compute_cam(model, x, method=m, layer=ly, analytic=analytic).heatmaps
        for x, m, ly in zip(inputs, methods, layers, strict=True)
    ]
    results: dict[int, list[Tensor]] = {i: [] for i in range(8)}

    def work(i: int) -> None:
        for _ in range(3):
            results[i].append(
                compute_cam(
                    model, inputs[i], method=methods[i], layer=layers[i], analytic=analytic
                ).heatmaps
            )

    assert _run_threads(work, 8) == []
    for i in range(8):
        for got in results[i]:
            assert torch.equal(got, sequential[i]), f"thread {i} differs from its sequential result"
    assert all_hooks(model) == []


def test_concurrent_calls_on_a_training_model(make_model: ModelFactory) -> None:
    """The eval-mode switch for a training model must not race: every call sees eval-mode
    BatchNorm, and the running statistics never change."""
    model = make_model("densenet", size=32, seed=6)
    gen = torch.Generator().manual_seed(8)
    inputs = [torch.rand(2, 1, 32, 32, generator=gen) for _ in range(8)]
    sequential = [compute_cam(model, x, analytic=False).heatmaps for x in inputs]
    model.train()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    mismatches = []

    def work(i: int) -> None:
        for _ in range(4):
            if not torch.equal(
                compute_cam(model, inputs[i], analytic=False).heatmaps, sequential[i]
            ):
                mismatches.append(i)

    assert _run_threads(work, 8) == []
    assert model.training
    changed = [k for k, v in model.state_dict().items() if not torch.equal(v, state[k])]
    assert changed == [], f"running statistics changed under concurrency: {changed[:3]}"
    assert mismatches == []


# ------------------------------------------------------------------ errors before compute
@pytest.fixture
def forward_counter(model64: Classifier) -> Any:
    calls: list[int] = []
    handles = [
        s.register_forward_pre_hook(lambda *_: calls.append(1)) for s in model64.stages.values()
    ]
    yield calls
    for h in handles:
        h.remove()


@pytest.mark.parametrize(
    ("images", "kwargs", "error", "match"),
    [
        (np.zeros((1, 1, SIZE, SIZE), np.float32), {}, TypeError, "torch.Tensor"),
        (torch.rand(1, 3, SIZE, SIZE), {}, InvalidInputError, r"\(N, 1, H, W\)"),
        (torch.rand(1, SIZE, SIZE), {}, InvalidInputError, r"\(N, 1, H, W\)"),
        (torch.rand(1, 1, 1, SIZE, SIZE), {}, InvalidInputError, r"\(N, 1, H, W\)"),
        (torch.zeros(1, 1, SIZE, SIZE, dtype=torch.uint8), {}, InvalidInputError, "floating point"),
        (torch.rand(2, 1, SIZE, SIZE), {"targets": 2}, InvalidInputError, "out of range"),
        (torch.rand(2, 1, SIZE, SIZE), {"targets": -1}, InvalidInputError, "out of range"),
        (
            torch.rand(2, 1, SIZE, SIZE),
            {"targets": [0, 1, 1]},
            InvalidInputError,
            "3 targets for 2",
        ),
        (torch.rand(2, 1, SIZE, SIZE), {"targets": [0, 5]}, InvalidInputError, "out of range"),
        (torch.rand(2, 1, SIZE, SIZE), {"layer": "layer4"}, NotFoundError, "stem, stage1"),
        (torch.rand(2, 1, SIZE, SIZE), {"method": "eigencam"}, InvalidInputError, "gradcam"),
        (torch.rand(2, 1, SIZE, SIZE), {"method": "scorecam"}, InvalidInputError, "once per channel"),
        (
            torch.rand(2, 1, SIZE, SIZE),
            {"method": "fused", "targets": 9},
            InvalidInputError,
            "out of range",
        ),
    ],
)
def test_errors_before_compute(
    model64: Classifier,
    forward_counter: list[int],
    images: object,
    kwargs: dict[str, object],
    error: type[Exception],
    match: str,
) -> None:
    with pytest.raises(error, match=match):
        compute_cam(model64, images, **kwargs)  # type: ignore[arg-type]
    assert forward_counter == [], "a stage ran before the arguments were checked"


@pytest.mark.parametrize(
    ("images", "kwargs", "match"),
    [
        (torch.rand(0, 1, SIZE, SIZE), {}, "empty"),
        (torch.rand(0, 1, SIZE, SIZE), {"method": "fused"}, "empty"),
        (torch.rand(1, 1, 4, 4), {}, "16"),  # smaller than the networks' 16x downsampling
        (torch.rand(2, 1, SIZE, SIZE), {"size": (0, 5)}, "size"),
        (torch.rand(2, 1, SIZE, SIZE), {"targets": torch.tensor([0.9, 1.2])}, "integer"),
    ],
    ids=["empty", "empty-fused", "too-small", "zero-size", "float-targets"],
)
def test_more_bad_arguments_fail_before_compute(
    model64: Classifier,
    forward_counter: list[int],
    images: Tensor,
    kwargs: dict[str, object],
    match: str,
) -> None:
    """Arguments torch would reject mid-computation (or silently truncate, for float
    targets) are refused up front with InvalidInputError, never a RuntimeError."""
    with pytest.raises(InvalidInputError, match=match):
        compute_cam(model64, images, **kwargs)  # type: ignore[arg-type]
    assert forward_counter == []


def test_float64_images_are_refused_before_compute(
    model64: Classifier, forward_counter: list[int], x64: Tensor
) -> None:
    """Another float dtype than the model's is refused up front with InvalidInputError;
    never a RuntimeError from inside the network."""
    with pytest.raises(InvalidInputError, match=r"torch\.float32 like the model, got torch\.float64"):
        compute_cam(model64, x64.double())
    assert forward_counter == []


@pytest.mark.parametrize("target", [np.int64(0), torch.tensor(0)], ids=["numpy-int", "0-d-tensor"])
def test_scalar_target_applies_to_every_image(
    model64: Classifier, x64: Tensor, target: object
) -> None:
    """A NumPy integer or a 0-d tensor is one class for all images, like a Python int."""
    res = compute_cam(model64, x64, targets=target)  # type: ignore[arg-type]
    assert res.targets.tolist() == [0, 0, 0, 0]
    torch.testing.assert_close(res.heatmaps, compute_cam(model64, x64, targets=0).heatmaps)


def test_forward_counter_sees_a_valid_call(
    model64: Classifier, x64: Tensor, forward_counter: list[int]
) -> None:
    compute_cam(model64, x64)
    assert len(forward_counter) == 5  # the fixture itself can detect computation


def test_the_registry_holds_every_method_once_and_says_what_each_needs() -> None:
    assert parse_method("GradCAM++") is CamMethod.GRADCAM_PP
    assert parse_method(CamMethod.LAYERCAM) is CamMethod.LAYERCAM
    assert set(CAMS) == set(CamMethod) and all(cam.method is m for m, cam in CAMS.items())
    assert set(METHODS) == {"gradcam", "gradcam++", "hirescam", "layercam", "fused"}  # the gradient ones
    assert {m.value for m, cam in CAMS.items() if cam.one_pass} == set(FOUR)
    assert CAMS[CamMethod.FUSED].layers == FUSED_LAYERS and not CAMS[CamMethod.SCORECAM].gradients
    with pytest.raises(InvalidInputError, match="unknown CAM method 'distilled'"):
        parse_method("distilled")  # the student is a segmenter of the pipeline, not a CAM method


@pytest.mark.parametrize("method", FOUR)
def test_each_registered_method_combines_as_its_paper(method: str) -> None:
    gen = torch.Generator().manual_seed(1)
    acts = torch.randn(3, 6, 5, 5, generator=gen).relu()  # post-ReLU activations
    grads = torch.randn(3, 6, 5, 5, generator=gen)
    torch.testing.assert_close(cam_of(method).combine(acts, grads).double(), ref_combine(method, acts, grads),
                               atol=1e-5, rtol=1e-5)
    # Grad-CAM and Grad-CAM++ differ only in their channel weights; HiResCAM and LayerCAM in the combination
    assert (type(cam_of(method)).combine is Cam.combine) == (method in ("gradcam", "gradcam++"))


def test_fused_is_layercam_of_two_layers(model64: Classifier, x64: Tensor) -> None:
    fused = raw_cam(model64, x64, method="fused", analytic=False)
    assert fused.layers == ("stage3", "stage4")
    for part, layer in zip(fused.parts, fused.layers, strict=True):
        torch.testing.assert_close(part, raw_cam(model64, x64, method="layercam", layer=layer, analytic=False,
                                                 targets=fused.targets).parts[0])


def test_normalise_maps_edge_cases() -> None:
    maps = torch.tensor([[[2.0, 4.0], [6.0, 10.0]], [[3.0, 3.0], [3.0, 3.0]]])
    out = normalise_maps(maps)
    torch.testing.assert_close(out[0], torch.tensor([[0.0, 0.25], [0.5, 1.0]]))
    assert torch.equal(out[1], torch.zeros(2, 2))  # a constant map becomes zeros, not NaN


# ------------------------------------------------------------ test-time augmentation
def test_dihedral_transforms_invert_and_form_groups() -> None:
    x = torch.arange(2 * 5 * 5, dtype=torch.float32).reshape(2, 5, 5)
    seen = set()
    for k in range(8):
        assert torch.equal(undo_dihedral(dihedral(x, k), k), x)
        seen.add(tuple(dihedral(x, k)[0].flatten().tolist()))
    assert len(seen) == 8  # the eight elements of D4 are distinct


def _fixed_cam(maps: Tensor) -> Callable[[Tensor, Tensor | None], RawCam]:
    """A heat source that explains every input with ``maps`` (whatever the transform)."""
    def cam(x: Tensor, targets: Tensor | None) -> RawCam:
        t = torch.ones(x.shape[0], dtype=torch.long) if targets is None else targets
        return RawCam((maps,), torch.zeros(x.shape[0], 2), t, ("stage",))
    return cam


@pytest.mark.parametrize("n", [4, 8])
def test_tta_of_a_symmetric_map_is_unchanged(n: int) -> None:
    yy, xx = torch.meshgrid(torch.arange(16.0), torch.arange(16.0), indexing="ij")
    disk = (-((yy - 7.5) ** 2 + (xx - 7.5) ** 2) / 20).exp()[None]  # symmetric under all of D4
    out = tta_cam(_fixed_cam(disk), torch.rand(1, 1, 16, 16), n)
    assert torch.allclose(out.render((16, 16)), normalise_maps(disk), atol=1e-6)


def test_tta_averages_an_asymmetric_map() -> None:
    ramp = torch.linspace(0, 1, 16).expand(16, 16)[None].clone()  # rises to the right
    out = tta_cam(_fixed_cam(ramp), torch.rand(1, 1, 16, 16), 4).render((16, 16))
    # the column flip cancels the ramp: the average is flat, min-max normalised to zeros
    assert torch.allclose(out, torch.zeros_like(out), atol=1e-6)


@pytest.mark.parametrize("n", [4, 8])
def test_tta_heatmaps_of_a_real_model_are_equivariant(make_model: Callable[..., Classifier], n: int) -> None:
    """Averaging over a group makes the map of a transformed image the transformed map."""
    model = make_model("resnet", size=32)
    x = torch.rand(2, 1, 32, 32, generator=torch.Generator().manual_seed(0))

    def cam(images: Tensor, targets: Tensor | None) -> RawCam:
        return raw_cam(model, images, method="layercam", layer=model.layer_names[-2], targets=targets)

    base = tta_cam(cam, x, n).render((32, 32))
    for k in range(1, n):  # each transform of the group: the 4 flips, or all 8 of D4
        turned = tta_cam(cam, dihedral(x, k), n).render((32, 32))
        assert torch.allclose(turned, dihedral(base, k), atol=1e-5), k
    single = tta_cam(cam, x, 1).render((32, 32))
    assert not torch.allclose(single, base, atol=1e-3)  # the average is not the single map
    with pytest.raises(InvalidInputError, match="1, 4 or 8"):
        tta_cam(cam, x, 3)
