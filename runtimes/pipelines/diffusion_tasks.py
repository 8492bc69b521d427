"""Stable Diffusion's `edgefm run` task: draw a prompt (from noise, or from a start image) into one image."""
from __future__ import annotations

import time
from pathlib import Path

from edgefm.contract.tasks import Task, TaskOption, TaskOutput, TaskRequest, TaskResult
from edgefm.runtimes.schedulers import SCHEDULERS


def text_to_image(request: TaskRequest) -> TaskResult:
    """One image of the prompt with the artifact's defaults for what is not given; image to image with --image."""
    from edgefm.runtimes.pipelines.diffusion import to_pil

    values, artifact = request.values, request.artifact
    settings = {**artifact.settings(values["steps"], values["guidance"], values["scheduler"]),
                "height": values["height"], "width": values["width"], "seed": values["seed"]}
    ran = []

    def step(done: int, total: int) -> None:
        ran.append(done)
        if request.progress:
            request.progress(done, total)

    start = time.perf_counter()
    images = artifact.generate(values["prompt"], values["negative_prompt"], image=values["image"],
                               strength=values["strength"], progress=step, **settings)
    seconds = time.perf_counter() - start
    to_pil(images)[0].save(request.out)
    # ms per step: the whole run (text encoding and VAE included) over the denoising steps it ran
    summary = {**settings, "height": images.shape[1], "width": images.shape[2], "steps": len(ran),
               "seconds": seconds, "step_ms": 1000 * seconds / max(len(ran), 1)}
    return TaskResult([f"{summary['width']}x{summary['height']} image, {summary['steps']} steps with "
                       f"{summary['scheduler']}, guidance {summary['guidance']}, seed {summary['seed']}, "
                       f"{seconds:.2f} s ({summary['step_ms']:.1f} ms per step, encoders and decoder included); "
                       f"written to {request.out}"], [request.out], summary)


TASKS = (
    Task("text-to-image", "Draw the prompt into one image (image to image with --image).",
         inputs=(TaskOption("prompt", "Text to draw."),),
         options=(
             TaskOption("negative_prompt", "What to steer away from (classifier-free guidance)."),
             TaskOption("steps", "Denoising steps (default: the artifact's, e.g. 30; turbo 1).", kind=int, minimum=1),
             TaskOption("guidance", "Guidance scale; <= 1 turns guidance off (default: the artifact's).", kind=float),
             TaskOption("seed", "Noise seed; a seed reproduces its image.", kind=int, default=0, minimum=0),
             TaskOption("height", "Image height in pixels (default: the model's).", kind=int, minimum=1),
             TaskOption("width", "Image width in pixels (default: the model's).", kind=int, minimum=1),
             TaskOption("scheduler", "Sampler (default: the checkpoint's).", choices=tuple(SCHEDULERS)),
             TaskOption("strength", "With --image: how far the image is noised before denoising (0-1].",
                        kind=float, default=0.8, minimum=0.0, maximum=1.0),
             TaskOption("image", "Start image of image-to-image.", kind=Path, must_exist=True, file_only=True,
                        metavar="IMG"),
         ),
         output=TaskOutput("image", "the generated image"), run=text_to_image),
)
