"""Checks of a written .mlpackage that need no Core ML runtime (which exists only on Apple systems).

They read the package's own protobuf spec and weight descriptions, so they also hold for a package
made elsewhere: inputs and outputs against the manifest, every op available in the deployment
target's opset, weights stored in the precision asked, and the weight size that implies.
"""
from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np

from edgefm.contract.manifest import disk_bytes
from edgefm.contract.records import Check

# The package's array types for the manifest's dtypes (Core ML has no int64 inputs: ids go in as int32).
ARRAY_TYPES = {"float32": "FLOAT32", "float16": "FLOAT16", "int64": "INT32", "int32": "INT32"}
# Bits per stored weight element by MIL data type.
BITS = {"FLOAT32": 32, "FLOAT16": 16, "INT8": 8, "UINT8": 8, "INT4": 4, "UINT4": 4, "UINT6": 6, "UINT3": 3,
        "UINT2": 2, "UINT1": 1}
QUANTIZATION_PARAMS = ("scale", "offset", "zero_point")  # stored beside compressed weights, not weights
BLOB_OVERHEAD = 128  # bytes per stored constant: its metadata header plus 64-byte alignment


def _programs(spec) -> list[tuple[str, list, list]]:
    """(opset, ops, output names) of the package's program, or of each chunk of a chunked (pipeline) package."""
    models = spec.pipeline.models if spec.WhichOneof("Type") == "pipeline" else [spec]
    functions = [model.mlProgram.functions["main"] for model in models]
    blocks = [(f.opset, f.block_specializations[f.opset]) for f in functions]
    return [(opset, list(block.operations), list(block.outputs)) for opset, block in blocks]


def _output_names(spec) -> set[str]:
    """The program's outputs. A constant among them (SAM 2's image position encoding) is a declared
    float32 output, so kept in float32 whatever the weights' precision, and not a weight."""
    return {name for _, _, outputs in _programs(spec) for name in outputs}


def _constants(spec, skip: set[str] = frozenset()):
    """(role, MIL data type, elements, rank, stored in the weight file) of every constant tensor of the program:
    `const` ops' values, the attributes iOS 17's `constexpr_*` ops keep their quantized data in, and the
    inline input values of iOS 18's."""
    from coremltools.proto import MIL_pb2

    for op in (op for _, ops, _ in _programs(spec) for op in ops):
        if op.type == "const" and {o.name for o in op.outputs} & skip:
            continue
        inline = [(role, arg.value) for role, binding in op.inputs.items() for arg in binding.arguments
                  if arg.HasField("value")]
        for role, value in [*op.attributes.items(), *inline]:
            if value.type.WhichOneof("type") != "tensorType":
                continue
            tensor = value.type.tensorType
            size = int(np.prod([d.constant.size for d in tensor.dimensions]))
            dtype, rank = MIL_pb2.DataType.Name(tensor.dataType), tensor.rank
            if op.type == "constexpr_lut_to_dense" and role == "indices" and rank == 1:
                dtype, size, rank = _packed_lut_indices(op)
            yield role, dtype, size, rank, value.WhichOneof("value") == "blobFileValue"


def _packed_lut_indices(op) -> tuple[str, int, int]:
    """iOS 16/17's look-up-table op packs its n-bit indices into bytes: (UINT<n>, dense elements, dense rank)."""
    lut = op.attributes["lut"].type.tensorType
    bits = int(np.log2(lut.dimensions[-1].constant.size))
    shape = np.frombuffer(op.attributes["shape"].immediateValue.tensor.bytes.values, np.uint32)
    return f"UINT{bits}", int(np.prod(shape)), len(shape)


def weight_storage(spec) -> Counter:
    """Stored elements per MIL data type, over the weights: float or compressed constants of rank >= 2
    (integer index tables such as position ids are not weights)."""
    stored: Counter = Counter()
    for role, dtype, size, rank, _ in _constants(spec, skip=_output_names(spec)):
        if rank >= 2 and dtype in BITS and role not in QUANTIZATION_PARAMS:
            stored[dtype] += size
    return stored


def check_io(spec, entry, shapes: dict[str, list]) -> Check:
    """Names, dtypes and shapes of the package's inputs (and names, dtypes of its outputs) vs the manifest."""
    from coremltools.proto import FeatureTypes_pb2

    problems = []
    array_type = FeatureTypes_pb2.ArrayFeatureType.ArrayDataType.Name
    for kind, specs, features in (("input", entry.inputs, spec.description.input),
                                  ("output", entry.outputs, spec.description.output)):
        found = {f.name: f.type.multiArrayType for f in features}
        if sorted(found) != sorted(s.name for s in specs):
            problems.append(f"{kind}s {sorted(found)} vs manifest {sorted(s.name for s in specs)}")
            continue
        for tensor in specs:
            array = found[tensor.name]
            if array_type(array.dataType) != ARRAY_TYPES[tensor.dtype]:
                problems.append(f"{tensor.name}: {array_type(array.dataType)} for {tensor.dtype}")
            if kind == "input":
                got = _input_shape(array)
                if got != shapes[tensor.name]:
                    problems.append(f"{tensor.name}: shape {got} vs {shapes[tensor.name]}")
    return Check("io_matches_manifest", float(not problems), 1.0, detail={"problems": problems})


def _input_shape(array) -> list:
    """Fixed sizes as ints, ranged ones as [lower, upper]."""
    if array.WhichOneof("ShapeFlexibility") == "shapeRange":
        return [r.lowerBound if r.lowerBound == r.upperBound else [r.lowerBound, r.upperBound]
                for r in array.shapeRange.sizeRanges]
    return list(array.shape)


def check_opset(spec, target) -> Check:
    """Every op of the program exists in the deployment target's opset (the converter's registry)."""
    from coremltools.converters.mil.mil.ops.registry import SSAOpRegistry

    programs = _programs(spec)
    opset = sorted({opset for opset, _, _ in programs})
    types = sorted({op.type for _, ops, _ in programs for op in ops})
    missing = [t for t in types if not any(v <= target for v in SSAOpRegistry.core_ops.get(t, {}))]
    return Check("ops_in_deployment_target", float(not missing), 1.0,
                 detail={"opset": opset, "target": target.name, "op_types": len(types), "missing": missing})


def check_storage(spec, expected: str, compressed_elements: int | None = None) -> Check:
    """Weights stored in the expected MIL type (FLOAT32 / FLOAT16 for float packages: all of them;
    INT8, INT4 or UINT<bits> for compressed ones: every element the torch-side compression touched)."""
    stored = weight_storage(spec)
    if compressed_elements is None:
        value = stored[expected] / (sum(stored.values()) or 1)
    elif compressed_elements:
        value = stored[expected] / compressed_elements
    else:  # nothing the scheme could cut (e.g. convs no int4 block divides): nothing may claim to be cut either
        value = 1.0 if stored[expected] == 0 else 0.0
    return Check(f"weights_stored_{expected.lower()}", value, 1.0,
                 detail={"elements": dict(stored), "compressed_in_torch": compressed_elements})


def check_size(package: Path, spec) -> Check:
    """The weight file's size over what its stored elements need (each blob adds a 64-byte header and
    alignment, counted in), so a weight stored wider than its type says shows up here."""
    blobs = [(dtype, size) for _, dtype, size, _, in_file in _constants(spec) if in_file]
    need = sum(size * BITS.get(dtype, 32) / 8 + BLOB_OVERHEAD for dtype, size in blobs)
    weights = Path(package) / "Data" / "com.apple.CoreML" / "weights"
    got = disk_bytes(weights) if weights.exists() else 0
    return Check("weight_file_over_expected", got / need if need else 1.0, 1.1, higher_is_better=False,
                 detail={"weight_bytes": got, "expected_bytes": int(need), "package_bytes": disk_bytes(package)})
