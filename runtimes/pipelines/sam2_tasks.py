"""SAM 2's `edgefm run` tasks: segment an image, track an object through a video, from points and a box."""
from __future__ import annotations

import time
from pathlib import Path

from edgefm.contract.tasks import Task, TaskOption, TaskOutput, TaskRequest, TaskResult
from edgefm.runtimes.pipelines.inputs import video_frames
from edgefm.runtimes.pipelines.pictures import overlay
from edgefm.runtimes.preprocess import as_pil


def _numbers(text: str, count: int, fix: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        raise ValueError(fix) from None
    if len(values) != count:
        raise ValueError(fix)
    return values


def _point(text: str) -> list[float]:
    return _numbers(text, 2, "give each point as X,Y in image pixels, e.g. 320,240")


def _box(text: str) -> list[float]:
    return _numbers(text, 4, "give the box as X1,Y1,X2,Y2 in image pixels")


PROMPT = (
    TaskOption("point", "Foreground point X,Y in image pixels (repeatable).", multiple=True, parse=_point,
               metavar="X,Y"),
    TaskOption("background_point", "Background point X,Y (repeatable).", multiple=True, parse=_point,
               metavar="X,Y"),
    TaskOption("box", "Box X1,Y1,X2,Y2 in image pixels.", parse=_box, metavar="X1,Y1,X2,Y2"),
)


def _prompt(values: dict) -> tuple[list, list, list | None]:
    """(points, labels 1 foreground / 0 background, box) as the predictor takes them."""
    points, background = list(values["point"] or ()), list(values["background_point"] or ())
    return points + background, [1] * len(points) + [0] * len(background), values["box"]


def segment(request: TaskRequest) -> TaskResult:
    """Segment one image; the overlay shows the highest-scoring mask."""
    points, labels, box = _prompt(request.values)
    picture = as_pil(request.values["image"])
    artifact = request.artifact
    artifact.set_image(picture)
    prediction = artifact.predict(points=points or None, labels=labels or None, box=box,
                                  multimask=not request.values["single_mask"])
    best = int(prediction.scores.argmax())
    overlay(picture, [prediction.masks[best]], points, labels, box).save(request.out)
    summary = {"score": float(prediction.scores[best]), "mask_pixels": int(prediction.masks[best].sum()),
               "candidates": len(prediction.scores)}
    return TaskResult([f"mask of {summary['mask_pixels']} px, predicted IoU {summary['score']:.3f} "
                       f"(best of {summary['candidates']}); overlay in {request.out}"], [request.out], summary)


def track(request: TaskRequest) -> TaskResult:
    """Prompt object 1 on the first frame, track it through the rest; one overlay PNG per frame."""
    points, labels, box = _prompt(request.values)
    out: Path = request.out
    tracker = request.artifact.video_tracker()
    seconds, written, visible = 0.0, [], 0
    for index, frame in enumerate(video_frames(request.values["video"])):
        start = time.perf_counter()
        tracker.add_frame(frame)
        if index == 0:
            tracker.add_prompt(1, points=points or None, labels=labels or None, box=box)
        result = tracker.track()[1]
        seconds += time.perf_counter() - start
        visible += bool(result.object_score > 0)
        shown = (points, labels, box) if index == 0 else ((), (), None)
        out.mkdir(parents=True, exist_ok=True)  # only once the prompt has been accepted
        written.append(out / f"frame_{index:05d}.png")
        overlay(frame, [result.mask], *shown).save(written[-1])
        request.log(f"frame {index}: object score {result.object_score:.3f}, mask {int(result.mask.sum())} px")
    summary = {"frames": len(written), "fps": len(written) / seconds if seconds else 0.0,
               "object_visible_frames": visible}
    return TaskResult([f"{summary['frames']} frames, {summary['fps']:.2f} fps (encoder + tracking, overlays "
                       f"excluded), object visible in {visible}; overlays in {out}/"], written, summary)


TASKS = (
    Task("segment", "Masks for a prompt on one image; writes the best mask as an overlay.",
         inputs=(TaskOption("image", "Image to segment.", kind=Path, must_exist=True, file_only=True,
                            metavar="IMG"),),
         options=(*PROMPT, TaskOption("single_mask", "One mask instead of the best of three candidates.",
                                      kind=bool, default=False)),
         output=TaskOutput("image", "an overlay image of the mask and the prompt"), run=segment),
    Task("track", "Prompt an object on the first frame and follow it through the video.",
         inputs=(TaskOption("video", "Directory of frames, or a video file (needs imageio[ffmpeg]).", kind=Path,
                            must_exist=True, metavar="DIR_OR_FILE"),),
         options=PROMPT,
         output=TaskOutput("folder", "per-frame overlays", pattern="frame_*.png"), run=track),
)
