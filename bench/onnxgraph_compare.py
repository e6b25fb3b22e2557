"""camseg's ONNX → torch converter (``camseg.models.onnxgraph``) against onnx2torch and
onnx2pytorch, on the foreign classifiers of the test suite and on camseg's own exports.

What is measured
----------------
Cases: the four foreign models of ``tests/foreign.py`` (trained as the tests train them;
``cumsum`` holds an operator camseg's converter lacks) and camseg's own exports of
``--archs`` (random weights, ``camseg.models.export.to_onnx``, opset 18, the graph the
served models carry). Each case names its CAM layer (an ONNX tensor: the deepest block
of a foreign model, ``activations`` of a camseg export) and its score (the logits: a
Softmax output's input, else the graph output).

For each case and converter:

* **converts**: the conversion's error, if any, and its time (median of ``--repeats``);
* **parity**: max |difference| of every graph output against ONNX Runtime on one batch;
* **Grad-CAM at the layer**: how the converter reaches that ONNX tensor (camseg: the tensor
  by name, as a leaf; onnx2torch: the torch.fx graph rewritten to return it; onnx2pytorch:
  a forward hook on the submodule that produces it), then ``torch.autograd.grad`` of the
  summed logits of each image's top class; ``grad diff`` is the max |difference| of that
  gradient against the torch module the ONNX was exported from (its layer caught by a hook);
* **threads**: ``--threads`` threads computing Grad-CAM at once on their own batches,
  ``--thread-repeats`` times each, against the same batches run one after another
  (max |difference| of the maps; an exception counts as unsafe);
* **pruning**: what one Grad-CAM call costs: the aten operators its forward dispatches and
  the autograd nodes it records, and its median time. camseg's converter runs only the
  nodes the layer and the score need and records only what is downstream of the layer;
  onnx2torch's fx graph can drop dead nodes (``eliminate_dead_code``) but records the whole
  forward; onnx2pytorch runs every node.

onnx2torch and onnx2pytorch import ``torchvision`` for detection operators no classifier
uses. The ``torchvision`` wheel on PyPI is a CUDA build that cannot load beside a CPU-only
torch; where it cannot be imported, a stand-in module whose functions raise takes its place,
so only those operators are lost.

How to run
----------
From the repository root, with the ``bench`` extra installed: ``python
bench/onnxgraph_compare.py`` (about two minutes on two cores, most of it training the
foreign models and exporting camseg's). It prints a table and writes
``bench/results/onnxgraph_compare.json``.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import operator
import os
import platform
import statistics
import sys
import threading
import time
import types
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import torch
from rich.console import Console
from rich.table import Table
from torch import Tensor, fx, nn
from torch.utils._python_dispatch import TorchDispatchMode

from camseg.models import Classifier, ModelSpec, build
from camseg.models.export import to_onnx
from camseg.models.onnxgraph import convert
from tests import foreign

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "onnxgraph_compare.json"
CONVERTERS = ("camseg", "onnx2torch", "onnx2pytorch")
PEERS = ("onnx2torch", "onnx2pytorch")

# A Grad-CAM call: the layer's activation and the logits, the activation in the logits' graph.
Forward = Callable[[Tensor], tuple[Tensor, Tensor]]


@dataclass
class Case:
    """One ONNX classifier: its bytes, an input batch, its CAM layer and score tensors."""

    name: str
    source: str
    data: bytes
    make_input: Callable[[int], Tensor]  # seed -> a batch in the model's input domain
    layer: str
    score: str
    original: Forward  # the torch module the ONNX came from: (the layer's output, logits)


# --------------------------------------------------------------------------- cases


def _score_tensor(model: onnx.ModelProto) -> str:
    """The logits: the input of the Softmax that makes the first output, else that output."""
    out = model.graph.output[0].name
    for node in model.graph.node:
        if out in node.output and node.op_type == "Softmax":
            return str(node.input[0])
    return str(out)


def _producer_of(model: onnx.ModelProto, op_type: str) -> str:
    """The output of the last node of ``op_type`` (the deepest such layer)."""
    return str([n for n in model.graph.node if n.op_type == op_type][-1].output[0])


def _batch(shape: tuple[int, ...], transform: Callable[[Tensor], Tensor]) -> Callable[[int], Tensor]:
    def make(seed: int) -> Tensor:
        g = torch.Generator().manual_seed(seed)
        return transform(torch.rand(*shape, generator=g)).contiguous()

    return make


def _hooked(module: nn.Module, submodule: str, logits: Callable[[Tensor], Tensor]) -> Forward:
    """(the submodule's output, logits) of a torch module, the output caught by a hook."""

    def forward(x: Tensor) -> tuple[Tensor, Tensor]:
        kept: list[Tensor] = []
        handle = module.get_submodule(submodule).register_forward_hook(lambda m, a, out: kept.append(out))
        try:
            out = logits(x)
        finally:
            handle.remove()
        return kept[-1], out

    return forward


def foreign_cases(batch: int) -> list[Case]:
    deepest = {"tflike": "a3", "rgbnet": "head_conv", "graynet": "act2", "cumsum": "act"}
    cases = []
    for f in [*(build_fn() for build_fn in foreign.BUILDERS.values()), foreign.cumsum_net()]:
        model = onnx.load_from_string(f.onnx_bytes)
        cfg = f.config["input"]
        layer = f.tensor(deepest[f.name]) if f.layers else _producer_of(model, "Relu")
        shape = (batch, cfg["channels"], cfg["height"], cfg["width"])
        original = _hooked(f.module, deepest[f.name], getattr(f.module, "logits", f.module))
        cases.append(Case(f.name, "foreign (tests/foreign.py)", f.onnx_bytes, _batch(shape, f.to_input), layer,
                          _score_tensor(model), original))
    return cases


def camseg_cases(archs: list[str], size: int, batch: int) -> list[Case]:
    cases = []
    for arch in archs:
        torch.manual_seed(0)
        net = build(ModelSpec(arch, input_size=size, width=16)).eval()
        data = to_onnx(net)
        model = onnx.load_from_string(data)

        def original(x: Tensor, net: Classifier = net) -> tuple[Tensor, Tensor]:
            act = net.run_until(x, len(net.stages) - 1)  # what to_onnx exports as "activations"
            return act, net.head(act)

        cases.append(Case(f"camseg {arch}", "camseg export (to_onnx)", data,
                          _batch((batch, 1, size, size), lambda x: x), "activations", _score_tensor(model), original))
    return cases


# --------------------------------------------------------------------------- peers


def _torchvision_stand_in() -> str:
    """Import torchvision, or put a stand-in in its place; say which."""
    try:
        import torchvision  # noqa: F401  (the peers' dependency: probed, then used by them)
        return "torchvision " + importlib.metadata.version("torchvision")
    except (ImportError, RuntimeError) as exc:
        for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
            del sys.modules[name]
        reason = f"{type(exc).__name__}: {exc}"

    def missing(qualified: str) -> Callable[..., Any]:
        def fail(*args: Any, **kwargs: Any) -> Any:
            raise RuntimeError(f"{qualified} is unavailable (torchvision stand-in)")

        return fail

    parent = types.ModuleType("torchvision")
    for name in ("torchvision", "torchvision.ops", "torchvision.io"):
        module = parent if name == "torchvision" else types.ModuleType(name)

        def attr(key: str, qualified: str = name) -> Any:
            if key.startswith("__"):  # introspection (inspect, importlib) must see a plain module
                raise AttributeError(key)
            return missing(f"{qualified}.{key}")

        module.__getattr__ = attr  # type: ignore[method-assign]
        sys.modules[name] = module
        if module is not parent:
            setattr(parent, name.rsplit(".", 1)[1], module)
    return f"stand-in ({reason[:120]})"


def load_peers() -> tuple[dict[str, Any], str]:
    """The peer libraries (bench-only, imported after the torchvision probe) and what stood in."""
    vision = _torchvision_stand_in()
    import onnx2pytorch  # the bench extra's peers; their import needs the torchvision probe first
    import onnx2torch

    return {"onnx2torch": onnx2torch, "onnx2pytorch": onnx2pytorch}, vision


class Unreachable(Exception):
    """The converter gives no way to reach the CAM layer's tensor."""


def _onnx2torch_forward(gm: fx.GraphModule, layer: str, score: str) -> tuple[Forward, str]:
    """The fx graph rewritten to return (layer, score), dead nodes dropped."""
    graph = gm.graph
    found: dict[str, fx.Node] = {}
    for node in list(graph.nodes):
        if node.op != "call_module":
            continue
        converted: Any = gm.get_submodule(str(node.target))  # an onnx2torch module, with its ONNX names
        outputs = list(converted.onnx_mapping.outputs)
        for name in (layer, score):
            if name in outputs:
                if len(outputs) == 1:
                    found[name] = node
                else:
                    with graph.inserting_after(node):
                        found[name] = graph.call_function(operator.getitem, (node, outputs.index(name)))
    missing = [n for n in (layer, score) if n not in found]
    if missing:
        raise Unreachable(f"no fx node produces {missing}")
    before = sum(1 for n in graph.nodes if n.op == "call_module")
    old = next(n for n in graph.nodes if n.op == "output")
    with graph.inserting_before(old):
        graph.output((found[layer], found[score]))
    graph.erase_node(old)
    graph.eliminate_dead_code()
    gm.recompile()
    after = sum(1 for n in graph.nodes if n.op == "call_module")

    def forward(x: Tensor) -> tuple[Tensor, Tensor]:
        act, logits = gm(x)
        return act, logits

    return forward, f"fx rewrite, {after} of {before} modules kept"


def _onnx2pytorch_forward(model: Any, layer: str, score: str) -> tuple[Forward, str]:
    """A forward hook on the submodule producing ``layer``, its capture kept per thread."""
    mapping: dict[str, str] = model.mapping
    graph_outputs = list(model.output_names)
    if score not in graph_outputs:
        target = mapping.get(score)
        if target is None or not isinstance(getattr(model, target), nn.Module):
            raise Unreachable(f"score {score!r} is no graph output and no hookable module produces it")
    name = mapping.get(layer)
    producer = getattr(model, name) if name else None
    if not isinstance(producer, nn.Module):
        raise Unreachable(f"{layer!r} is produced by {type(producer).__name__}, not a module with hooks")
    captured = threading.local()

    def keep(module: nn.Module, args: Any, output: Any) -> None:
        captured.__dict__.setdefault("values", []).append(output)

    producer.register_forward_hook(keep)
    score_module = None if score in graph_outputs else getattr(model, mapping[score])
    if score_module is not None:
        score_module.register_forward_hook(lambda m, a, out: captured.__dict__.setdefault("score", []).append(out))

    def forward(x: Tensor) -> tuple[Tensor, Tensor]:
        captured.values, captured.score = [], []
        out = model(x)
        outs = out if isinstance(out, (tuple, list)) else [out]
        logits = captured.score[-1] if score_module is not None else outs[graph_outputs.index(score)]
        return captured.values[-1], logits

    return forward, "forward hook, whole graph runs"


def _camseg_forward(gm: Any, layer: str, score: str) -> tuple[Forward, str]:
    def forward(x: Tensor) -> tuple[Tensor, Tensor]:
        out = gm.run({gm.input_names[0]: x}, outputs=[score], leaves=[layer])
        return out[layer], out[score]

    return forward, "tensor by name as a leaf, only needed nodes"


# --------------------------------------------------------------------------- measures


def gradcam(forward: Forward, x: Tensor, targets: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """(gradient at the layer, Grad-CAM maps, targets) for each image's top (or given) class."""
    with torch.enable_grad():
        act, logits = forward(x)
        logits = logits.reshape(logits.shape[0], -1)
        if targets is None:
            targets = logits.argmax(1)
        chosen = logits.gather(1, targets[:, None]).sum()
        (grad,) = torch.autograd.grad(chosen, [act])
    cam = torch.relu((grad.mean(dim=(2, 3), keepdim=True) * act).sum(1))
    return grad.detach(), cam.detach(), targets


class _CountOps(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        self.count += 1
        return func(*args, **(kwargs or {}))


def _autograd_nodes(t: Tensor) -> int:
    seen, stack = set(), [t.grad_fn]
    while stack:
        fn = stack.pop()
        if fn is None or fn in seen:
            continue
        seen.add(fn)
        stack.extend(next_fn for next_fn, _ in fn.next_functions)
    return len(seen)


def cost(forward: Forward, x: Tensor) -> dict[str, int]:
    """aten operators dispatched by one Grad-CAM forward, and autograd nodes it records."""
    with torch.enable_grad():
        with _CountOps() as counter:
            _, logits = forward(x)
        return {"aten_ops": counter.count, "autograd_nodes": _autograd_nodes(logits)}


def thread_check(forward: Forward, make_input: Callable[[int], Tensor], threads: int,
                 repeats: int) -> tuple[float | None, str | None]:
    """Max |concurrent - sequential| Grad-CAM over ``threads`` threads, or the first exception."""
    inputs = [make_input(100 + i) for i in range(threads)]
    sequential = [gradcam(forward, x)[1] for x in inputs]
    results: list[list[Tensor]] = [[] for _ in range(threads)]
    errors: list[BaseException] = []
    start = threading.Barrier(threads)

    def work(i: int) -> None:
        try:
            start.wait()
            for _ in range(repeats):
                results[i].append(gradcam(forward, inputs[i])[1])
        except BaseException as exc:  # any failure is the measurement
            errors.append(exc)

    pool = [threading.Thread(target=work, args=(i,)) for i in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    if errors:
        return None, _short(errors[0])
    return max(float((r - sequential[i]).abs().max()) for i in range(threads) for r in results[i]), None


def median_seconds(fn: Callable[[], Any], repeats: int, min_sample_s: float) -> float:
    """Median seconds per call over ``repeats`` samples, each lasting at least ``min_sample_s``."""
    samples = []
    for _ in range(repeats):
        calls, t0 = 0, time.perf_counter()
        while True:
            fn()
            calls += 1
            elapsed = time.perf_counter() - t0
            if elapsed >= min_sample_s:
                break
        samples.append(elapsed / calls)
    return statistics.median(samples)


def _short(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}".replace("\n", " ")
    return text if len(text) <= 160 else text[:157] + "..."


def measure(case: Case, peers: dict[str, Any], args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    x = case.make_input(0)
    session = ort.InferenceSession(case.data, providers=["CPUExecutionProvider"])
    ref_outputs = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    ref_grad, ref_cam, targets = gradcam(case.original, x)  # every converter explains the same classes
    converters: dict[str, Callable[[onnx.ModelProto], Any]] = {
        "camseg": convert,
        "onnx2torch": lambda m: peers["onnx2torch"].convert(m, attach_onnx_mapping=True),
        "onnx2pytorch": lambda m: peers["onnx2pytorch"].ConvertModel(m),
    }
    builders: dict[str, Callable[[Any, str, str], tuple[Forward, str]]] = {
        "camseg": _camseg_forward, "onnx2torch": _onnx2torch_forward, "onnx2pytorch": _onnx2pytorch_forward,
    }
    rows: dict[str, dict[str, Any]] = {}
    cams: dict[str, tuple[Tensor, Tensor]] = {}
    for name in CONVERTERS:
        row: dict[str, Any] = {"converts": False}
        rows[name] = row
        try:
            module = converters[name](onnx.load_from_string(case.data))
            row["convert_ms"] = 1e3 * median_seconds(
                lambda: converters[name](onnx.load_from_string(case.data)), args.repeats,  # noqa: B023
                args.min_sample_ms / 1e3)
            row["converts"] = True
        except Exception as exc:  # a refusal is the measurement
            row["error"] = _short(exc)
            continue
        try:
            with torch.no_grad():
                out = module(x)
            outs = list(out) if isinstance(out, (tuple, list)) else [out]
            row["parity_max_abs"] = max(float(np.abs(o.detach().numpy() - r).max())
                                        for o, r in zip(outs, ref_outputs, strict=True))
        except Exception as exc:
            row["error"] = "forward: " + _short(exc)
            continue
        try:
            forward, how = builders[name](module, case.layer, case.score)
            row["layer_access"] = how
            grad, cam, _ = gradcam(forward, x, targets)
            cams[name] = (grad, cam)
        except Exception as exc:
            row["layer_access"] = "unreachable: " + _short(exc)
            continue
        row.update(cost(forward, x))
        row["gradcam_ms"] = 1e3 * median_seconds(lambda: gradcam(forward, x), args.repeats,  # noqa: B023
                                                 args.min_sample_ms / 1e3)
        row["thread_max_abs"], row["thread_error"] = thread_check(forward, case.make_input, args.threads,
                                                                  args.thread_repeats)
    for name, (grad, cam) in cams.items():
        rows[name]["grad_max_abs_vs_original"] = float((grad - ref_grad).abs().max())
        rows[name]["cam_max_abs_vs_original"] = float((cam - ref_cam).abs().max())
        rows[name]["original_grad_abs_max"] = float(ref_grad.abs().max())  # the scale of the differences
    return rows


# --------------------------------------------------------------------------- report


def _fmt(row: dict[str, Any], key: str, spec: str) -> str:
    v = row.get(key)
    return "-" if v is None else format(v, spec)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--archs", nargs="+", default=["resnet", "mobilenet"], help="camseg exports to convert")
    p.add_argument("--size", type=int, default=64, help="input size of camseg's exports")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--threads", type=int, default=8)
    p.add_argument("--thread-repeats", type=int, default=3)
    p.add_argument("--repeats", type=int, default=5, help="samples per timing (median)")
    p.add_argument("--min-sample-ms", type=float, default=100.0, help="shortest timing sample")
    p.add_argument("--torch-threads", type=int, default=1, help="torch intra-op threads")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = p.parse_args(argv)
    console = Console()
    console = Console(width=max(console.width, 150))  # the table's eleven columns, also in a log
    torch.set_num_threads(args.torch_threads)

    # the exports first: torch.onnx's exporter looks for a real torchvision, not the stand-in
    cases = camseg_cases(args.archs, args.size, args.batch) + foreign_cases(args.batch)
    peers, vision = load_peers()
    results = {case.name: measure(case, peers, args) for case in cases}

    table = Table(title="ONNX → torch converters: Grad-CAM at an ONNX tensor")
    for col in ("model", "converter", "converts", "convert ms", "parity vs ORT", "layer by", "grad diff vs torch",
                "threads", "aten ops", "autograd nodes", "Grad-CAM ms"):
        left = col in ("model", "converter", "converts", "layer by")
        table.add_column(col, justify="left" if left else "right", no_wrap=col in ("model", "converter"))
    refusals: list[str] = []
    for case in cases:
        for name in CONVERTERS:
            row = results[case.name][name]
            if row.get("error"):
                refusals.append(f"[{len(refusals) + 1}] {case.name}, {name}: {row['error']}")
            access = row.get("layer_access", "-")
            table.add_row(
                case.name, name, "yes" if row["converts"] else f"no [{len(refusals)}]",
                _fmt(row, "convert_ms", ".1f"), _fmt(row, "parity_max_abs", ".1e"),
                "-" if access == "-" else access.split(",")[0].split(" as ")[0],
                _fmt(row, "grad_max_abs_vs_original", ".1e"),
                "raised" if row.get("thread_error") else _fmt(row, "thread_max_abs", ".1e"),
                _fmt(row, "aten_ops", "d"), _fmt(row, "autograd_nodes", "d"), _fmt(row, "gradcam_ms", ".2f"),
            )
        table.add_section()
    console.print(table)
    for line in refusals:
        console.print(line)
    console.print(f"torchvision: {vision}")

    report = {
        "environment": {"python": platform.python_version(), "torch": torch.__version__,
                        "onnxruntime": ort.__version__, "onnx": onnx.__version__,
                        "onnx2torch": importlib.metadata.version("onnx2torch"),
                        "onnx2pytorch": importlib.metadata.version("onnx2pytorch"),
                        "torchvision": vision, "cpu_count": os.cpu_count(),
                        "load_average": os.getloadavg()[0]},
        "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "cases": {c.name: {"source": c.source, "layer": c.layer, "score": c.score,
                           "operators": sorted({n.op_type for n in onnx.load_from_string(c.data).graph.node})}
                  for c in cases},
        "results": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2, default=float) + "\n")
    console.print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
