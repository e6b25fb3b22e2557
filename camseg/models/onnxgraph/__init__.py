"""A compact ONNX graph → differentiable torch module converter.

Why: gradient-based class-activation methods (Grad-CAM and friends) need the gradient of a
class score with respect to an intermediate layer, and ONNX Runtime computes no
gradients. This package interprets the ONNX graph with plain torch operations instead:
every operator is a small function of torch tensors, so autograd sees the whole
computation, any tensor of the graph can be captured or made a leaf by its ONNX name, and
the part of the graph upstream of a leaf runs without recording.
``bench/onnxgraph_compare.py`` measures it against onnx2torch (which refuses camseg's
opset-18 exports) and onnx2pytorch (tensors reached only through hooks, every node run and
recorded); both also need torchvision.

What it covers: the operators CNN classifiers exported by ``torch.onnx``, tf2onnx and
similar tools use (convolution, normalisation, activations, pooling, elementwise
arithmetic, reductions, Gemm/MatMul, shape manipulation including the dynamic
``Shape → Gather → Unsqueeze → Concat → Reshape`` flatten, Pad, Slice, Resize, Softmax,
...), each following the ONNX operator semantics of the model's default-domain opset,
old (attribute) and new (input) forms alike; see :data:`SUPPORTED_OPERATORS`. A graph
holding anything else is refused up front with :class:`UnsupportedOperatorError`, as are
operator variants outside the inference subset (e.g. MaxPool's Indices output,
BatchNormalization in training mode, Resize's tf_crop_and_resize or antialias).

Where: :mod:`~camseg.models.onnxgraph.graph` walks the graph (folding constants, planning
and running the nodes a call needs, cutting at leaves) and
:mod:`~camseg.models.onnxgraph.ops` holds the operators, a registry from op_type to a
torch function.
"""

from camseg.models.onnxgraph.graph import GraphModule, UnsupportedOperatorError, convert, unsupported_operators
from camseg.models.onnxgraph.ops import SUPPORTED_OPERATORS

__all__ = [
    "SUPPORTED_OPERATORS",
    "GraphModule",
    "UnsupportedOperatorError",
    "convert",
    "unsupported_operators",
]
