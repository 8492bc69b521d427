"""fp16 as TensorRT computes it, on the CPU: the gate's view of a typed graph.

ONNX Runtime's CPU provider has no fp16 kernel for many ops (Mul, Sqrt, Softmax, ...): it runs them in
fp32 and drops the casts between two such ops, so an fp16 graph run there never overflows where
TensorRT's would (measured: x*x of 16000 gives 2.56e8 instead of inf). The gate therefore runs an
emulation: the fp32-typed graph where every value the written graph stores in fp16 is rounded through
fp16 by explicit casts, which ONNX Runtime keeps. Values are stored as fp16 exactly where the engine
stores them (rounding, overflow to inf); each op's arithmetic is fp32, as TensorRT's fp16 kernels
accumulate in fp32.
"""
from __future__ import annotations

from pathlib import Path


def tensor_types(model) -> dict[str, int]:
    """ONNX element type of every tensor, inferred afresh from the graph (not from stale annotations)."""
    import onnx
    from onnxruntime.transformers.onnx_model import OnnxModel

    bare = onnx.ModelProto()
    bare.CopyFrom(model)
    del bare.graph.value_info[:]
    OnnxModel(bare).topological_sort()  # the float16 converter appends its input casts last
    inferred = onnx.shape_inference.infer_shapes(bare)
    types = {v.name: v.type.tensor_type.elem_type for v in [*inferred.graph.value_info, *inferred.graph.input,
                                                              *inferred.graph.output]}
    types.update({i.name: i.data_type for i in model.graph.initializer})
    return types


def emulate(typed: Path, fp32_typed: Path, out: Path, external: bool) -> Path:
    """Write `out`: `fp32_typed` (the graph before the fp16 conversion) where every node input the written graph
    `typed` reads in fp16 is rounded through fp16 (weights, activations and the casts of graph inputs alike),
    and every graph output the written graph casts from fp16 too; return `out`. Rounding is per edge: a
    pinned node reading a tensor that fp16 nodes also read gets the fp32 value, as in the written graph."""
    import onnx
    from onnx import TensorProto

    written = onnx.load(str(typed), load_external_data=False)
    written_types = tensor_types(written)
    # a value was stored in fp16 if it is fp16, or an fp32 cast of an fp16 value (before a pinned node, at outputs)
    upcasts = {n.output[0] for n in written.graph.node if n.op_type == "Cast"
               and written_types.get(n.input[0]) == TensorProto.FLOAT16}
    stored_half = {name for name, kind in written_types.items() if kind == TensorProto.FLOAT16} | upcasts
    reads_half = {n.name: [i in stored_half for i in n.input] for n in written.graph.node}
    half_outputs = {o.name for o in written.graph.output} & stored_half
    # types from the structure alone: shape inference refuses models past 2 GB with their weights loaded
    float_tensors = {name for name, kind in tensor_types(onnx.load(str(fp32_typed), load_external_data=False)).items()
                     if kind == TensorProto.FLOAT}
    model = onnx.load(str(fp32_typed))
    rounded, nodes = set(), []
    for node in model.graph.node:
        for index, (name, half) in enumerate(zip(node.input, reads_half.get(node.name, []))):
            if half and name in float_tensors:
                if name not in rounded:
                    nodes += _round_trip(name, f"{name}__fp16_rounded")
                    rounded.add(name)
                node.input[index] = f"{name}__fp16_rounded"
        nodes.append(node)
        for index, name in enumerate(node.output):
            if name in half_outputs:
                node.output[index] = f"{name}__fp32"
                nodes += _round_trip(f"{name}__fp32", name)
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    onnx.save_model(model, str(out), save_as_external_data=external, location=f"{out.name}.data")
    return out


def _round_trip(source: str, target: str) -> list:
    """`target` = `source` stored in fp16 and read back: fp16's rounding and overflow, as explicit casts."""
    from onnx import TensorProto, helper

    return [helper.make_node("Cast", [source], [f"{target}__fp16"], to=TensorProto.FLOAT16, name=f"{target}__to_fp16"),
            helper.make_node("Cast", [f"{target}__fp16"], [target], to=TensorProto.FLOAT, name=f"{target}__from_fp16")]
