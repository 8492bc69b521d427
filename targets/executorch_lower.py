"""The ExecuTorch target's lowering: torch wrapper -> torch.export -> (quantized) -> edge -> XNNPACK -> .pte bytes.

Kept apart from targets/executorch.py so that finding the targets imports none of torch, torchao or executorch.
"""
from __future__ import annotations

import copy

import numpy as np

from edgefm.contract.errors import EdgefmError
from edgefm.runtimes.session import batch_items
from edgefm.targets.base import CompileRequest, first_and_last

PREFIX = "wrapped."  # the wrapper's attribute holding the component's module, in module names of the export


def lower(request: CompileRequest, component, options) -> tuple[bytes, dict]:
    """(the program's bytes, what the static checks read: the delegation table, each layer's weight bits, the
    layers the scheme quantizes and the bytes its weights need as stored)."""
    import torch

    params = request.scheme.params
    names = [spec.name for spec in request.entry.inputs]
    sizes = {dim: rule.get("default", 1) for dim, rule in component.dims.items()} | {"batch": 1}
    feeds = component.make_inputs(np.random.default_rng(0), sizes)
    module = _ordered(component.module.eval(), names)
    example = _args(feeds, names)
    float_layers, asked_layers = _layers(component, feeds, params)
    dynamic_quant = False
    with torch.no_grad():
        if params["weights"] == "float":
            ep = _folded(module, example)
        elif params["weights"] == "int8":
            dynamic_quant = params["activations"] == "dynamic"
            calibration = [example] if dynamic_quant else _calibration(request, names)
            ep = _int8(module, example, float_layers, dynamic_quant, params["quantized_ops"], calibration)
        else:
            ep = _int4(module, example, float_layers, params["group_size"])
    record = {"layers": _layer_bits(ep), "asked_quantized": len(asked_layers), "float_layers": float_layers,
              "weight_bytes": _weight_bytes(ep)}
    program, record["operators"] = _to_program(ep, dynamic_quant)
    return program, record


def _ordered(module, names: list[str]):
    """The wrapper called with positional inputs in the manifest's order, returning a tuple in the manifest's
    output order: the program's inputs and outputs are then the manifest's, by position."""
    import torch

    class InManifestOrder(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.wrapped = module

        def forward(self, *args):
            out = self.wrapped(**dict(zip(names, args)))
            return tuple(out) if isinstance(out, (tuple, list)) else (out,)

    return InManifestOrder()


def _args(feeds: dict[str, np.ndarray], names: list[str]) -> tuple:
    import torch

    return tuple(torch.from_numpy(np.ascontiguousarray(feeds[name])) for name in names)


def _layers(component, feeds: dict[str, np.ndarray], params: dict) -> tuple[list[str], list[str]]:
    """(layers the scheme keeps in float, layers it quantizes), as module names of the ordered wrapper."""
    import torch

    from edgefm.targets.torch_rebuild import called_layers

    if params["weights"] == "float":
        return [], []
    called = called_layers(component.module, feeds)
    kept = first_and_last(called) if params.get("ends_float") else []
    modules = dict(component.module.named_modules())
    asked = [name for name in called if name not in kept]
    if params["weights"] == "int4":  # linear layers only, whose inputs split into whole groups
        group = params["group_size"]
        asked = [name for name in asked if isinstance(modules[name], torch.nn.Linear)
                 and modules[name].in_features % group == 0]
        if not asked:
            sizes = sorted({m.in_features for m in modules.values() if isinstance(m, torch.nn.Linear)})
            raise EdgefmError(f"int4 group size {group} splits no linear layer's inputs into whole groups (input "
                              f"sizes {sizes}); use a smaller --int4-group-size, e.g. 32")
    return [PREFIX + name for name in kept], [PREFIX + name for name in asked]


def _calibration(request: CompileRequest, names: list[str]) -> list[tuple]:
    """The calibration feeds as batch-1 positional inputs at the program's sizes."""
    shapes = request.scheme.params["shapes"]
    items = [item for feed in request.calibration_feeds for item in batch_items(request.entry.inputs, feed)]
    fitting = [_args(item, names) for item in items
               if all(list(item[name].shape) == shapes[name] for name in names)]
    if not fitting:
        raise EdgefmError(f"{request.component}: none of the {len(items)} calibration feeds has the program's sizes "
                          f"{shapes}; static int8 needs them")
    return fitting


def _folded(module, example):
    """Exported with its constant subgraphs folded (what convert_pt2e does for the quantized graphs)."""
    import torch
    from torchao.quantization.pt2e.constant_fold import constant_fold

    graph = torch.export.export(module, example).module()
    constant_fold(graph)
    return torch.export.export(graph, example)


def _int8(module, example, float_layers: list[str], dynamic: bool, ops: str, calibration: list[tuple]):
    """pt2e int8: `ops` "all" (every pattern the XNNPACK quantizer knows: also adds, muls, concats) or
    "linear_conv" (only the layers: the residual stream stays float). Dynamic activations still need one run
    for the weight observers (its activation observers record nothing used)."""
    import torch
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
        XNNPACKQuantizer,
        get_symmetric_quantization_config,
    )
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e
    from torchao.quantization.pt2e.quantizer import get_module_name_filter

    graph = torch.export.export(module, example).module()
    config = get_symmetric_quantization_config(is_per_channel=True, is_dynamic=dynamic)
    quantizer = XNNPACKQuantizer()
    if ops == "all":
        quantizer.set_global(config)
    else:
        for op in (torch.ops.aten.linear.default, torch.ops.aten.conv2d.default):
            quantizer.set_operator_type(op, config)
    if float_layers:  # set_module_name(name, None) is "not supported yet" (executorch 1.5): filter them out
        in_float = [get_module_name_filter(name) for name in float_layers]
        quantizer.set_filter_function(lambda node: not any(f(node) for f in in_float))
    prepared = prepare_pt2e(graph, quantizer)
    for args in calibration:
        prepared(*args)
    return torch.export.export(convert_pt2e(prepared), example)


def _int4(module, example, float_layers: list[str], group: int):
    import torch
    from torchao.quantization import quantize_
    from torchao.quantization.granularity import PerGroup
    from torchao.quantization.quant_api import Int8DynamicActivationIntxWeightConfig
    from torchao.utils import unwrap_tensor_subclass

    module = copy.deepcopy(module)
    keep = set(float_layers)
    config = Int8DynamicActivationIntxWeightConfig(weight_dtype=torch.int4, weight_granularity=PerGroup(group))
    quantize_(module, config, filter_fn=lambda m, fqn: isinstance(m, torch.nn.Linear) and fqn not in keep
              and m.in_features % group == 0)
    unwrap_tensor_subclass(module)
    return torch.export.export(module, example)


def _to_program(ep, dynamic_quant: bool) -> tuple[bytes, dict[str, tuple[int, int]]]:
    from executorch.backends.xnnpack.partition.config.xnnpack_config import ConfigPrecisionType
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.backends.xnnpack.utils.configs import (
        get_xnnpack_edge_compile_config,
        get_xnnpack_executorch_backend_config,
    )
    from executorch.devtools.backend_debug import get_delegation_info
    from executorch.exir import to_edge_transform_and_lower

    partitioners = ([XnnpackPartitioner(config_precisions=ConfigPrecisionType.DYNAMIC_QUANT), XnnpackPartitioner()]
                    if dynamic_quant else [XnnpackPartitioner()])
    edge = to_edge_transform_and_lower(ep, partitioner=partitioners, compile_config=get_xnnpack_edge_compile_config())
    info = get_delegation_info(edge.exported_program().graph_module)
    operators = {op: (int(row.delegated), int(row.non_delegated)) for op, row in info.delegation_by_operator.items()}
    return edge.to_executorch(config=get_xnnpack_executorch_backend_config()).buffer, operators


def _is_layer(node) -> bool:
    name = str(node.target)
    return node.op == "call_function" and ("linear" in name or "conv" in name) and len(node.args) > 1


def _weight_source_bits(weight) -> int:
    """Bits of a layer's weight as stored: a dequantize op's integer range, else the float tensor's width."""
    if weight.op == "call_function" and "dequantize" in str(weight.target):
        ints = [a for a in weight.args if isinstance(a, int) and not isinstance(a, bool)]
        span = max(ints) - min(ints) if len(ints) >= 2 else 255
        return max(1, span.bit_length())
    value = weight.meta.get("val")
    return value.element_size() * 8 if value is not None else 32


def _layer_bits(ep) -> list[int]:
    """Per linear / conv op of the exported graph, the bits its weight is stored in (32 / 16: float)."""
    return [_weight_source_bits(node.args[1]) for node in ep.graph.nodes if _is_layer(node)]


def _weight_bytes(ep) -> int:
    """Bytes the graph's weights need as stored: 4-bit weights (int8 tensors holding int4 values) at half a byte."""
    signature = ep.graph_signature
    lifted = {**signature.inputs_to_parameters, **signature.inputs_to_buffers,
              **signature.inputs_to_lifted_tensor_constants}
    tensors = {**ep.state_dict, **ep.constants}
    four_bit = {node.args[0].name for node in ep.graph.nodes
                if node.op == "call_function" and "dequantize" in str(node.target) and node.users
                and hasattr(node.args[0], "name") and _weight_source_bits(node) == 4}
    used = {node.name for node in ep.graph.nodes if node.op == "placeholder" and node.users}
    total = 0.0
    for placeholder, key in lifted.items():  # the graph's own: an export lifts every parameter of the module
        tensor = tensors.get(key) if placeholder in used else None
        if tensor is not None and hasattr(tensor, "numel"):
            total += tensor.numel() * (0.5 if placeholder in four_bit else tensor.element_size())
    return int(total)
