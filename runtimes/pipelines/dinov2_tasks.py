"""DINOv2's `edgefm run` tasks: image embeddings (CLS or patch grids) as .npy, and a picture of the patch
features' principal components."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from edgefm.contract.tasks import Task, TaskOption, TaskOutput, TaskRequest, TaskResult
from edgefm.runtimes.pipelines.inputs import image_files
from edgefm.runtimes.pipelines.pictures import beside, pca_rgb
from edgefm.runtimes.preprocess import preprocess

BATCH = 16  # images per encoder run: a large folder never becomes one huge batch


def embed(request: TaskRequest) -> TaskResult:
    """CLS embeddings [N, D], or with --patches the patch features [N, h, w, D], one row per image."""
    files = image_files(request.values["image"])
    patches = request.values["patches"]
    run = request.artifact.patch_features if patches else request.artifact.embed
    features = np.concatenate([run(files[i:i + BATCH]) for i in range(0, len(files), BATCH)]).astype(np.float32)
    np.save(request.out, features)
    what = (f"patch feature grids of [h, w, C] = {list(features.shape[1:])}" if patches else
            f"CLS embeddings of {features.shape[1]} values")
    lines = [f"row {index}: {path.name}" for index, path in enumerate(files)]
    return TaskResult([*lines, f"{len(files)} {what} in {request.out}"], [request.out],
                      {"rows": [path.name for path in files], "shape": features.shape})


def patch_pca(request: TaskRequest) -> TaskResult:
    """The image as the model sees it (resized and cropped) beside its patch features' first three principal
    components as RGB: regions the backbone finds alike share a colour."""
    artifact, image = request.artifact, request.values["image"]
    grid, explained = pca_rgb(artifact.patch_features(image)[0])
    picture = beside(_as_seen(image, artifact.manifest.task["preprocess"]), grid)
    picture.save(request.out)
    return TaskResult([f"{grid.shape[0]}x{grid.shape[1]} patches, first 3 principal components "
                       f"({explained:.0%} of the variance) as RGB beside the image; written to {request.out}"],
                      [request.out], {"grid": grid.shape[:2], "explained": explained, "size": picture.size})


def _as_seen(image: Path, config: dict) -> Image.Image:
    """The model's input undone back to 8-bit RGB: exactly the pixels the patch grid covers."""
    mean, std = (np.asarray(config[key], np.float32).reshape(3, 1, 1) for key in ("mean", "std"))
    pixels = (preprocess(image, config)[0] * std + mean) / np.float32(config.get("rescale", 1 / 255))
    return Image.fromarray(np.clip(pixels, 0, 255).round().astype(np.uint8).transpose(1, 2, 0))


TASKS = (
    Task("embed", "Image embeddings as a .npy array, one row per image: CLS embeddings, or patch grids.",
         inputs=(TaskOption("image", "Image file, or a folder of images (sorted by name).", kind=Path,
                            must_exist=True, metavar="FILE_OR_DIR"),),
         options=(TaskOption("patches", "Write the patch features [N, h, w, C] instead of the CLS embeddings.",
                             kind=bool, default=False),),
         output=TaskOutput("file", "an embeddings array", suffixes=(".npy",)), run=embed),
    Task("patch-pca", "The patch features' first three principal components as RGB, beside the image.",
         inputs=(TaskOption("image", "Image to picture.", kind=Path, must_exist=True, file_only=True, metavar="IMG"),),
         options=(), output=TaskOutput("image", "a picture of the image and its patch components"), run=patch_pca),
)
