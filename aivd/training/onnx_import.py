"""Load a shipped ONNX model's weights back into its torch network, so that it can be fine-tuned.

The built-in models ship as ONNX only (inference needs no torch). The exporter folds each BatchNorm into the
convolution before it, so the ONNX weights fit the network with its BatchNorms folded away: `fold_batchnorm`
turns every Conv-BatchNorm pair into one biased Conv (BatchNorm becomes Identity), and `load_onnx_weights`
then assigns the ONNX convolution and linear weights in the order the network runs its layers. The result is
checked against ONNX Runtime on a random input, so a network that does not match its file fails loudly.
Fine-tuning a folded network suits online updates: there are no batch statistics to drift on a small buffer.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from aivd.core.errors import AivdError


class WeightImportError(AivdError, ValueError):
    """An ONNX file whose weights do not fit the network; the message says where they differ."""


@torch.no_grad()
def fold_batchnorm(net: nn.Module) -> nn.Module:
    """Fold every BatchNorm2d that directly follows a Conv2d in an nn.Sequential into that Conv (in place)."""
    for module in net.modules():
        if not isinstance(module, nn.Sequential):
            continue
        layers = list(module)
        for index in range(len(layers) - 1):
            conv, norm = layers[index], layers[index + 1]
            if not (isinstance(conv, nn.Conv2d) and isinstance(norm, nn.BatchNorm2d)):
                continue
            mean, variance = norm.running_mean, norm.running_var
            if mean is None or variance is None:  # normalised with each batch's own statistics: nothing to fold
                continue
            scale = norm.weight / torch.sqrt(variance + norm.eps)
            bias = conv.bias if conv.bias is not None else torch.zeros_like(mean)
            conv.weight.mul_(scale.reshape(-1, 1, 1, 1))
            conv.bias = nn.Parameter((bias - mean) * scale + norm.bias)
            module[index + 1] = nn.Identity()
    return net


def _execution_order(net: nn.Module, example: torch.Tensor) -> list[nn.Conv2d | nn.Linear]:
    order: list[nn.Conv2d | nn.Linear] = []
    hooks = [layer.register_forward_hook(lambda *_, layer=layer: order.append(layer))
             for layer in net.modules() if isinstance(layer, (nn.Conv2d, nn.Linear))]
    try:
        with torch.no_grad():
            net(example)
    finally:
        for hook in hooks:
            hook.remove()
    return order


def load_onnx_weights(net: nn.Module, path: str | Path, example: torch.Tensor, exported: nn.Module | None = None) -> nn.Module:
    """Fold `net`'s BatchNorms and load the weights of the ONNX file at `path` into it; returns `net` in eval mode.

    `example` is an input of the network's shape; `exported` is the module that was exported (a wrapper around
    `net` that adds post-processing), used to compare outputs with ONNX Runtime. Raises `WeightImportError`.
    """
    import onnx
    import onnxruntime as ort
    from onnx import numpy_helper

    path = Path(path)
    model = onnx.load(str(path))
    initializers = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    weighted = [n for n in model.graph.node if n.op_type in ("Conv", "Gemm", "MatMul") and n.input[1] in initializers]
    fold_batchnorm(net.eval())
    layers = _execution_order(net, example)
    if len(layers) != len(weighted):
        raise WeightImportError(f"{path}: {len(weighted)} weighted layers in the file, {len(layers)} in the network")
    with torch.no_grad():
        for index, (layer, node) in enumerate(zip(layers, weighted)):
            weight = initializers[node.input[1]]
            if node.op_type == "MatMul" or (node.op_type == "Gemm" and not any(a.name == "transB" and a.i for a in node.attribute)):
                weight = weight.T
            if tuple(weight.shape) != tuple(layer.weight.shape):
                raise WeightImportError(f"{path}: layer {index} ({node.name}) has weight {weight.shape}, the network {tuple(layer.weight.shape)}")
            layer.weight.copy_(torch.from_numpy(np.array(weight)))
            bias = initializers.get(node.input[2]) if len(node.input) > 2 else None
            if bias is not None:
                if layer.bias is None:
                    raise WeightImportError(f"{path}: layer {index} ({node.name}) has a bias the network lacks")
                layer.bias.copy_(torch.from_numpy(np.array(bias)))
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    expected = session.run(None, {session.get_inputs()[0].name: example.numpy()})
    with torch.no_grad():
        got = (exported or net)(example)
    got = got if isinstance(got, (tuple, list)) else (got,)
    for index, (a, b) in enumerate(zip(expected, got)):
        difference = float(np.abs(a - b.numpy()).max())
        if difference > 1e-3:
            raise WeightImportError(f"{path}: output {index} differs from ONNX Runtime by {difference:.2g} after loading")
    return net
