"""Model files stay in their folder, and their size is known before they are loaded.

A model version is a folder of files camseg reads (``model.onnx``, ``model.pt``,
``student.onnx``, ``student.pt``, and any external-data files an ONNX graph names).
Every loading path (ONNX Runtime sessions, :func:`camseg.models.onnxgraph.convert`, the
import of a foreign classifier, the checkpoints, hence the served repository and the
command line) first checks the file it reads here:

* the file resolves (symlinks followed) inside its folder, is a regular file and is at
  most ``max_bytes`` long (``CAMSEG_MAX_MODEL_BYTES``);
* an ONNX graph is parsed *without* its external data, and every tensor that has some
  (``data_location == EXTERNAL``; initializers, sparse initializers, node attributes,
  subgraphs and functions alike) must name a ``location`` that is relative, has no
  ``..`` component, resolves inside the folder, is a plain file there (not a symlink,
  as onnx's own loader requires) and holds the declared ``offset + length``;
* the bytes the graph's tensors declare (dims x element size, a sparse tensor counted
  dense, an external tensor at least its declared ``length``) must total at most
  ``max_bytes``: a graph that would allocate more is refused before anything is loaded.

Anything else is refused with :class:`ModelFileError` (INVALID_ARGUMENT), one line naming
the model file and the offending tensor or location.

The checks guard against a version that reads outside its folder or asks for more
memory than the deployment allows; they do not make a hostile repository safe (whoever
writes it decides what the service computes, see SECURITY.md), and a file swapped
between the check and the load is not caught.
"""

from __future__ import annotations

import math
import os
import stat
from collections.abc import Iterator
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import TYPE_CHECKING

from camseg.core.errors import InvalidInputError, shown
from camseg.core.lazy import LazyModule
from camseg.core.limits import DEFAULT_MAX_MODEL_BYTES

if TYPE_CHECKING:
    import onnx
    from onnx import external_data_helper
else:  # loaded when a graph is first read: importing camseg pulls in no protobuf
    onnx = LazyModule("onnx")
    external_data_helper = LazyModule("onnx.external_data_helper")

__all__ = ["ModelFileError", "check_file", "check_onnx_bytes", "check_onnx_file", "check_onnx_model", "load_onnx"]

_LOCATION_SHOWN = 200  # characters of a location echoed in a message
_SETTING = "CAMSEG_MAX_MODEL_BYTES"


class ModelFileError(InvalidInputError):
    """A model file that leaves its folder, is missing, or declares more than the limit."""


def _gib(n: int) -> str:
    return f"{n / 2**30:.3g} GiB" if n >= 2**30 else f"{n / 2**20:.3g} MiB" if n >= 2**20 else f"{n} bytes"


def check_file(path: Path | str, folder: Path | str | None = None, *,
               max_bytes: int = DEFAULT_MAX_MODEL_BYTES) -> os.stat_result:
    """The ``stat`` of ``path`` once it resolves inside ``folder`` (its parent when None),
    is a regular file and holds at most ``max_bytes``; ModelFileError otherwise."""
    path = Path(path)
    root = Path(folder) if folder is not None else path.parent
    if not path.resolve().is_relative_to(root.resolve()):
        raise ModelFileError(f"{path}: resolves outside its model folder {root} (a symlink); "
                             "model files must stay in their folder")
    try:
        st = path.stat()
    except FileNotFoundError:
        raise ModelFileError(f"{path}: no such file") from None
    if not stat.S_ISREG(st.st_mode):
        raise ModelFileError(f"{path}: not a regular file")
    if st.st_size > max_bytes:
        raise ModelFileError(f"{path}: {_gib(st.st_size)}, over the limit of {_gib(max_bytes)} ({_SETTING})")
    return st


# ---------------------------------------------------------------------- the tensors of a graph
def _node_tensors(nodes: Iterator[onnx.NodeProto] | list[onnx.NodeProto]
                  ) -> Iterator[onnx.TensorProto | onnx.SparseTensorProto]:
    for node in nodes:
        for a in node.attribute:
            if a.HasField("t"):
                yield a.t
            yield from a.tensors
            if a.HasField("sparse_tensor"):
                yield a.sparse_tensor
            yield from a.sparse_tensors
            if a.HasField("g"):
                yield from _graph_tensors(a.g)
            for g in a.graphs:
                yield from _graph_tensors(g)


def _graph_tensors(graph: onnx.GraphProto) -> Iterator[onnx.TensorProto | onnx.SparseTensorProto]:
    yield from graph.initializer
    yield from graph.sparse_initializer
    yield from _node_tensors(list(graph.node))


def model_tensors(model: onnx.ModelProto) -> Iterator[onnx.TensorProto | onnx.SparseTensorProto]:
    """Every tensor a model holds: initializers (dense and sparse) and node attributes of
    its graph, of every subgraph (If, Loop, Scan bodies) and of its functions."""
    yield from _graph_tensors(model.graph)
    for f in model.functions:
        yield from _node_tensors(list(f.node))


def _itemsize(data_type: int) -> int:
    try:
        dtype = onnx.helper.tensor_dtype_to_np_dtype(data_type)
    except (KeyError, ValueError, TypeError):
        return 1
    return 8 if dtype.kind == "O" else max(1, dtype.itemsize)  # strings: a pointer each, their bytes added


def _elements(dims: list[int] | tuple[int, ...], where: str, name: str) -> int:
    if any(d < 0 for d in dims):
        raise ModelFileError(f"{where}: tensor {shown(name)} declares negative dimensions {list(dims)}")
    return math.prod(dims)


def _location_problem(location: str) -> str | None:
    if not location:
        return "no location"
    if "\x00" in location:
        return "a NUL character"
    posix, win = PurePosixPath(location), PureWindowsPath(location)
    if posix.is_absolute() or win.drive or win.root:
        return "an absolute path"
    if ".." in posix.parts or ".." in win.parts:
        return "a '..' component"
    return None


def _external_bytes(t: onnx.TensorProto, where: str, folder: Path | None) -> int:
    """The bytes ``t``'s external data will take once read, after checking its location."""
    info = {e.key: e.value for e in t.external_data}
    location = info.get("location", "")

    def refuse(why: str) -> ModelFileError:
        return ModelFileError(f"{where}: tensor {shown(t.name)} reads its data from "
                              f"{shown(location, _LOCATION_SHOWN)}: {why}")

    if folder is None:
        raise refuse("external data, in a model held in memory (load it from its file so its folder is known)")
    if problem := _location_problem(location):
        raise refuse(f"{problem}; external data must stay inside the model's folder {folder}")
    target = folder / location
    if not target.resolve().is_relative_to(folder.resolve()):
        raise refuse(f"resolves outside the model's folder {folder} (a symlink)")
    if target.is_symlink():  # as onnx's own loader: external data is read from plain files only
        raise refuse("a symlink; external data is read only from plain files in the model's folder")
    try:
        st = target.stat()
    except FileNotFoundError:
        raise refuse(f"no such file in {folder}") from None
    except OSError as exc:
        raise refuse(f"unreadable ({exc.strerror})") from None
    if not stat.S_ISREG(st.st_mode):
        raise refuse("not a regular file")
    try:
        offset = int(info.get("offset") or 0)
        length = int(info["length"]) if info.get("length") else None
    except ValueError:
        raise refuse("offset or length is not an integer") from None
    if offset < 0 or (length is not None and length < 0):
        raise refuse("negative offset or length")
    if offset > st.st_size or (length is not None and offset + length > st.st_size):
        raise refuse(f"declares bytes {offset}..{offset + (length or 0)} of a {st.st_size}-byte file")
    return length if length is not None else st.st_size - offset


def _dense_bytes(t: onnx.TensorProto, where: str, folder: Path | None) -> int:
    n = _elements(list(t.dims), where, t.name) * _itemsize(t.data_type)
    n += sum(len(s) for s in t.string_data)
    if external_data_helper.uses_external_data(t):
        n = max(n, _external_bytes(t, where, folder))
    return n


def check_onnx_model(model: onnx.ModelProto, where: Path | str, folder: Path | str | None = None, *,
                     max_bytes: int = DEFAULT_MAX_MODEL_BYTES) -> int:
    """The bytes ``model``'s tensors declare, once every external-data reference is
    checked against ``folder``, the directory of the model's file that references are
    relative to and must stay in (None: the model is held in memory and may have none),
    and the total against ``max_bytes``; ModelFileError naming ``where`` otherwise."""
    where = str(where)
    root = Path(folder) if folder is not None else None
    total = 0
    for t in model_tensors(model):
        if isinstance(t, onnx.SparseTensorProto):
            dense = _elements(list(t.dims), where, t.values.name) * _itemsize(t.values.data_type)
            n = dense + _dense_bytes(t.values, where, root) + _dense_bytes(t.indices, where, root)
            name = t.values.name
        else:
            n = _dense_bytes(t, where, root)
            name = t.name
        total += n
        if total > max_bytes:
            raise ModelFileError(f"{where}: its tensors declare more than {_gib(max_bytes)} (reached at tensor "
                                 f"{shown(name)}, {_gib(n)}), over the limit ({_SETTING}); refused before loading")
    return total


def check_onnx_file(path: Path | str, *, max_bytes: int = DEFAULT_MAX_MODEL_BYTES) -> onnx.ModelProto:
    """``path`` parsed without its external data, once the file and every tensor are
    checked (:func:`check_file`, :func:`check_onnx_model`) against the file's folder,
    which its external data is read from."""
    path = Path(path)
    root = path.parent
    check_file(path, root, max_bytes=max_bytes)
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # onnx raises DecodeError and friends
        raise InvalidInputError(f"{path}: not a readable ONNX model ({type(exc).__name__})") from None
    check_onnx_model(model, path, root, max_bytes=max_bytes)
    return model


def check_onnx_bytes(data: bytes, where: str = "a serialised ONNX model", *,
                     max_bytes: int = DEFAULT_MAX_MODEL_BYTES) -> None:
    """A serialised model has no folder: any external-data reference is refused (it would
    resolve against the working directory), as is one over ``max_bytes``."""
    if len(data) > max_bytes:
        raise ModelFileError(f"{where}: {_gib(len(data))}, over the limit of {_gib(max_bytes)} ({_SETTING})")
    try:
        model = onnx.load_from_string(data)
    except Exception as exc:
        raise InvalidInputError(f"{where}: not a readable ONNX model ({type(exc).__name__})") from None
    check_onnx_model(model, where, None, max_bytes=max_bytes)


def load_onnx(path: Path | str, *, max_bytes: int = DEFAULT_MAX_MODEL_BYTES) -> onnx.ModelProto:
    """``path`` with its external data, read only once :func:`check_onnx_file` passed."""
    path = Path(path)
    model = check_onnx_file(path, max_bytes=max_bytes)
    if any(isinstance(t, onnx.TensorProto) and external_data_helper.uses_external_data(t)
           for t in model_tensors(model)):
        try:
            external_data_helper.load_external_data_for_model(model, str(path.parent))
        except Exception as exc:  # onnx's ValidationError, OSError, ValueError
            raise ModelFileError(f"{path}: its external data cannot be read ({exc})") from None
    return model
