"""`edgefm run`: prompt a SAM 2 artifact on an image or a video and write mask overlays people can look at."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image, ImageDraw

from edgefm.contract.errors import EdgefmError
from edgefm.runtimes.preprocess import as_pil

COLORS = np.array([[30, 144, 255], [255, 99, 71], [50, 205, 50], [238, 130, 238], [255, 215, 0]], np.float32)
# the tasks `edgefm run` does, as families declare them in `ModelFamily.tasks`
SEGMENT, TEXT_TO_IMAGE = "segment", "text-to-image"
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"}


def overlay(image: Image.Image, masks: list[np.ndarray], points=(), labels=(), box=None) -> Image.Image:
    """The image with each mask tinted in its own colour (50% blend) and the prompt drawn on top."""
    pixels = np.asarray(image.convert("RGB"), np.float32)
    for index, mask in enumerate(masks):
        color = COLORS[index % len(COLORS)]
        pixels[mask] = 0.5 * pixels[mask] + 0.5 * color
    out = Image.fromarray(pixels.round().astype(np.uint8))
    draw = ImageDraw.Draw(out)
    radius = max(3, min(out.size) // 100)
    for (x, y), label in zip(points, labels):
        draw.ellipse([x - radius, y - radius, x + radius, y + radius], fill=(0, 255, 0) if label else (255, 0, 0),
                     outline=(255, 255, 255))
    if box is not None:
        draw.rectangle(list(box), outline=(255, 255, 0), width=max(2, radius // 2))
    return out


def _writable_suffixes() -> list[str]:
    """The usual image suffixes this Pillow build can write an RGB image to."""
    formats = Image.registered_extensions()
    return sorted(suffix for suffix in IMAGE_SUFFIXES if formats.get(suffix) in Image.SAVE)


def _same_file(a: Path, b: Path) -> bool:
    return a.resolve() == b.resolve() or (a.exists() and b.exists() and a.samefile(b))  # samefile: hard links


def _check_parent(out: Path) -> None:
    from edgefm.contract.staging import file_in_the_way

    existing = file_in_the_way(out)
    if existing:
        raise EdgefmError(f"-o {out}: {existing} is a file, not a directory; give a path in a directory")


def check_image_out(out: Path, artifact: Path, source: Path | None = None, overwrite: bool = False) -> None:
    """Refuse, before any work, an image -o that cannot be written, is the input image or inside the artifact, or
    exists (unless `overwrite`); make its folder."""
    out = Path(out)
    _check_outside(out, artifact)
    if out.is_dir():
        raise EdgefmError(f"-o {out} is a directory; give a .png file path, e.g. {out / 'out.png'}")
    suffixes = _writable_suffixes()
    if out.suffix.lower() not in suffixes:
        what = f"{out.suffix} images" if out.suffix else "an image without a suffix"
        raise EdgefmError(f"-o {out}: cannot write {what}; end the path in one of {', '.join(suffixes)}")
    if source is not None and _same_file(out, Path(source)):
        raise EdgefmError(f"-o {out} is the input image; writing there would destroy it: give another path")
    if out.exists() and not overwrite:
        raise EdgefmError(f"-o {out} already exists; give another path or pass --overwrite to replace it")
    _check_parent(out)
    out.parent.mkdir(parents=True, exist_ok=True)


def check_frames_out(out: Path, artifact: Path, source: Path, overwrite: bool = False) -> None:
    """Refuse a video -o that is a file, or the frames directory or inside it: input frames are never written over.
    A directory holding the frames directory is fine: overlays go in it, not in the frames directory."""
    out, source = Path(out), Path(source)
    _check_outside(out, artifact)
    if out.exists() and not out.is_dir():
        raise EdgefmError(f"-o {out} is a file; give a directory for the per-frame overlays")
    if out.resolve() == source.resolve() or source.resolve() in out.resolve().parents:
        raise EdgefmError(f"-o {out} is or is inside the input {source}; give a directory outside it so the "
                          "input frames are never written over")
    if out.is_dir() and any(out.glob("frame_*.png")) and not overwrite:
        raise EdgefmError(f"-o {out} already holds frame_*.png overlays; give another directory or pass --overwrite "
                          "to replace them")
    _check_parent(out)


def _check_outside(out: Path, artifact: Path) -> None:
    if Path(out).resolve().is_relative_to(Path(artifact).resolve()):
        raise EdgefmError(f"-o {out} is inside the artifact {artifact}, which writing there would change; "
                          "write outside it")


def _artifact_for(artifact_dir: Path, task: str, what: str):
    """The loaded artifact, when its family declares `task` among its `tasks`; else which families do."""
    import edgefm
    from edgefm.contract import registry

    artifact = edgefm.load(artifact_dir)
    if task not in registry.family(artifact.manifest.family).tasks:
        able = " / ".join(f.title for _, f in sorted(registry.families().items()) if task in f.tasks)
        raise EdgefmError(f"{what} {able} artifacts; {artifact_dir} is {artifact.manifest.family} "
                          "(use its Python API: edgefm.load(DIR))")
    return artifact


def run_image(artifact_dir: Path, image: Path, points, labels, box, multimask: bool, out: Path,
              overwrite: bool = False) -> dict:
    """Segment one image; the overlay shows the highest-scoring mask."""
    check_image_out(out, artifact_dir, image, overwrite)
    artifact = _artifact_for(artifact_dir, SEGMENT, "edgefm run prompts")
    picture = as_pil(image)
    artifact.set_image(picture)
    prediction = artifact.predict(points=points or None, labels=labels or None, box=box, multimask=multimask)
    best = int(prediction.scores.argmax())
    overlay(picture, [prediction.masks[best]], points, labels, box).save(out)
    return {"score": float(prediction.scores[best]), "mask_pixels": int(prediction.masks[best].sum()),
            "candidates": len(prediction.scores)}


def video_frames(source: Path):
    """Frames of a directory of images (sorted by name) or of a video file (needs imageio with ffmpeg)."""
    if source.is_dir():
        files = sorted(p for p in source.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise EdgefmError(f"{source} holds no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
        return (as_pil(p) for p in files)
    if not source.is_file():
        raise EdgefmError(f"{source} is neither a directory of frames nor a video file")
    try:
        import imageio.v3 as iio
    except ImportError:
        raise EdgefmError(f"reading {source.name} needs imageio with ffmpeg (pip install 'imageio[ffmpeg]'), "
                          "or pass a directory of frames") from None
    return (as_pil(frame) for frame in iio.imiter(source))


def run_video(artifact_dir: Path, source: Path, points, labels, box, out: Path,
              log: Callable[[str], None] = print, overwrite: bool = False) -> dict:
    """Prompt object 1 on the first frame, track it through the rest; one overlay PNG per frame in `out`."""
    check_frames_out(out, artifact_dir, source, overwrite)
    artifact = _artifact_for(artifact_dir, SEGMENT, "edgefm run prompts")
    tracker = artifact.video_tracker()
    seconds, count, visible = 0.0, 0, 0
    for index, frame in enumerate(video_frames(Path(source))):
        start = time.perf_counter()
        tracker.add_frame(frame)
        if index == 0:
            tracker.add_prompt(1, points=points or None, labels=labels or None, box=box)
        result = tracker.track()[1]
        seconds += time.perf_counter() - start
        count, visible = count + 1, visible + (result.object_score > 0)
        shown = (points, labels, box) if index == 0 else ((), (), None)
        out.mkdir(parents=True, exist_ok=True)  # only once the prompt has been accepted
        overlay(frame, [result.mask], *shown).save(out / f"frame_{index:05d}.png")
        log(f"frame {index}: object score {result.object_score:.3f}, mask {int(result.mask.sum())} px")
    return {"frames": count, "fps": count / seconds if seconds else 0.0, "object_visible_frames": visible}


def run_text_to_image(artifact_dir: Path, out: Path, prompt: str, negative_prompt: str | None = None,
                      steps: int | None = None, guidance: float | None = None, seed: int = 0,
                      height: int | None = None, width: int | None = None, scheduler: str | None = None,
                      image: Path | None = None, strength: float = 0.8,
                      progress: Callable[[int, int], None] | None = None, overwrite: bool = False) -> dict:
    """Draw one image with a Stable Diffusion artifact (image to image when `image` is given); write it to `out`."""
    from edgefm.runtimes.pipelines.diffusion import to_pil

    check_image_out(out, artifact_dir, image, overwrite)
    artifact = _artifact_for(artifact_dir, TEXT_TO_IMAGE, "--prompt draws with")
    settings = {**artifact.settings(steps, guidance, scheduler), "height": height, "width": width, "seed": seed}
    ran = []

    def step(done: int, total: int) -> None:
        ran.append(done)
        if progress:
            progress(done, total)

    start = time.perf_counter()
    images = artifact.generate(prompt, negative_prompt, image=image, strength=strength, progress=step, **settings)
    seconds = time.perf_counter() - start
    Path(out).parent.mkdir(parents=True, exist_ok=True)  # only once the image exists
    to_pil(images)[0].save(out)
    # ms per step: the whole run (text encoding and VAE included) over the denoising steps it ran
    return {**settings, "height": images.shape[1], "width": images.shape[2], "steps": len(ran), "seconds": seconds,
            "step_ms": 1000 * seconds / max(len(ran), 1)}
