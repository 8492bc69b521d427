"""Torch op converters that coremltools 9 lacks or breaks on this stack, registered over its own.

Written by hand because coremltools has no option for either case:
- `int` / `bool` of a one-element constant: coremltools calls `int(array)` on it, which numpy 2
  refuses for arrays with a dimension ("only 0-dimensional arrays can be converted"). It shows up
  in every ViT and UNet trace (shape arithmetic), so nothing converts without it.
- `upsample_bicubic2d`: no Core ML op does bicubic resizing. The ViTs here (DINOv2, SAM 2's
  Hiera) only resize their position embeddings, which are weights, so at a fixed input size the
  result is a constant: it is computed once with torch and stored (the embeddings are "baked" for
  that resolution). A bicubic resize of real activations is refused with a clear error.
"""
from __future__ import annotations

import numpy as np


def register() -> None:
    """Install the converters (idempotent: coremltools' registry simply points at these again)."""
    from coremltools.converters.mil import Builder as mb
    from coremltools.converters.mil.frontend.torch.ops import _get_inputs
    from coremltools.converters.mil.frontend.torch.torch_op_registry import register_torch_op

    def cast(context, node, python_type, dtype_name: str):
        x = _get_inputs(context, node, expected=1)[0]
        if x.shape and not all(d == 1 for d in x.shape):
            raise ValueError(f"{node.kind} of a tensor of shape {x.shape}: only scalars can be cast")
        if x.can_be_folded_to_const():
            result = mb.const(val=python_type(np.asarray(x.val).reshape(())), name=node.name)
        else:
            result = mb.cast(x=mb.squeeze(x=x) if x.shape else x, dtype=dtype_name, name=node.name)
        context.add(result, node.name)

    @register_torch_op(torch_alias=["int"], override=True)
    def _int(context, node):  # noqa: F811 - the name is coremltools' registry key
        cast(context, node, int, "int32")

    @register_torch_op(torch_alias=["bool"], override=True)
    def _bool(context, node):  # noqa: F811
        cast(context, node, bool, "bool")

    @register_torch_op(torch_alias=["upsample_bicubic2d.vec"], override=True)
    def upsample_bicubic2d(context, node):
        import torch

        inputs = _get_inputs(context, node)
        x, size, align_corners = inputs[0], inputs[1], bool(inputs[2].val)
        if not x.can_be_folded_to_const():
            raise NotImplementedError(
                f"bicubic resize of a computed tensor ({node.name}) has no Core ML op; only constant "
                "inputs (position embeddings at a fixed input size) are supported")
        if size is not None and getattr(size, "val", None) is None:
            raise NotImplementedError(
                f"bicubic resize ({node.name}) to a size that depends on the input: Core ML has no bicubic op, so "
                "the position embeddings are baked for one input size; compile with --fixed-shapes")
        scales = inputs[3].val if len(inputs) > 3 and inputs[3] is not None else None
        resized = torch.nn.functional.interpolate(
            torch.from_numpy(np.asarray(x.val, np.float32)), mode="bicubic", align_corners=align_corners,
            size=None if size is None else tuple(int(s) for s in size.val),
            scale_factor=None if scales is None else tuple(float(s) for s in scales))
        context.add(mb.const(val=resized.numpy(), name=node.name), node.name)
