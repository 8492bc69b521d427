"""transformers' SAM 2 video model driven on the same pixels as edgefm's tracker, for parity tests.

Sam2VideoProcessor needs torchvision, whose wheel does not load with the CPU torch here, so the
inference session is filled directly with what the processor would put in it: pixels preprocessed
as the artifact does, prompts rescaled per axis to the model's input size.
"""
from __future__ import annotations

import numpy as np
import torch
import transformers
from PIL import Image

from edgefm.runtimes.pipelines.sam2 import pixels


def iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 1.0


def clip_of(photo, frames: int) -> list[np.ndarray]:
    """A short clip: a 120x160 window sliding over a real photo."""
    image = np.asarray(Image.open(photo).convert("RGB"))
    return [image[40 + 5 * t:160 + 5 * t, 30 + 7 * t:190 + 7 * t] for t in range(frames)]


class ReferenceVideo:
    """Offline transformers tracking: add prompts on any frame, run that frame, propagate onwards."""

    def __init__(self, model, clip: list[np.ndarray], task: dict):
        self.model, self.size = model, task["image_size"]
        self.height, self.width = clip[0].shape[:2]
        pixel_values = np.concatenate([pixels(f, task["preprocess"])[0] for f in clip])
        self.session = transformers.Sam2VideoInferenceSession(
            video=torch.from_numpy(pixel_values), video_height=self.height, video_width=self.width,
            dtype=torch.float32)
        self.outputs: dict = {}  # frame -> the model's output for all objects

    def add(self, obj_id, frame: int, points=None, labels=None, mask=None) -> None:
        index = self.session.obj_id_to_idx(obj_id)
        if mask is not None:
            self.session.add_mask_inputs(index, frame, torch.from_numpy(mask.astype(np.float32))[None, None])
        else:
            scale = torch.tensor([self.size / self.width, self.size / self.height])
            coords = torch.tensor(points, dtype=torch.float32) * scale
            self.session.add_point_inputs(index, frame, {
                "point_coords": coords[None, None],
                "point_labels": torch.tensor(labels, dtype=torch.int32)[None, None]})
        self.session.obj_with_new_inputs = list(dict.fromkeys(self.session.obj_with_new_inputs + [obj_id]))

    def run(self, frame: int) -> None:
        with torch.no_grad():
            self.outputs[frame] = self.model(inference_session=self.session, frame_idx=frame)

    def propagate(self, start: int, stop: int | None = None) -> None:
        with torch.no_grad():
            for out in self.model.propagate_in_video_iterator(self.session, start_frame_idx=start):
                self.outputs[out.frame_idx] = out
                if out.frame_idx == stop:
                    break

    def logits(self, frame: int) -> dict:
        """{obj_id: low-res logits [S/4, S/4]} of one frame."""
        out = self.outputs[frame]
        return {obj_id: out.pred_masks[row, 0].numpy() for row, obj_id in enumerate(out.object_ids)}
