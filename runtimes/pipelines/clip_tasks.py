"""CLIP's `edgefm run` tasks: zero-shot labels for images, and image or text embeddings as .npy arrays."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from edgefm.contract.errors import EdgefmError
from edgefm.contract.tasks import Task, TaskOption, TaskOutput, TaskRequest, TaskResult
from edgefm.runtimes.pipelines.inputs import image_files

IMAGES = TaskOption("image", "Image file, or a folder of images (sorted by name).", kind=Path, must_exist=True,
                    metavar="FILE_OR_DIR")
EMBEDDINGS = TaskOutput("file", "an embeddings array, one L2-normalized row per item", suffixes=(".npy",))


def _labels(text: str) -> tuple[str, ...]:
    labels = tuple(label.strip() for label in text.split(","))
    if not all(labels):
        raise ValueError('give labels separated by commas, e.g. "a cat,a dog"')
    return labels


def zero_shot(request: TaskRequest) -> TaskResult:
    """Each image's most likely label; -o (optional) gets every label's probability per image as JSON."""
    values = request.values
    labels = [*(values["labels"] or ()), *(values["label"] or ())]
    files = image_files(values["image"])
    result = request.artifact.zero_shot(files, labels, template=values["template"])
    pairs = list(zip(files, result.probs, strict=True))
    lines = [f"{path.name}: {result.labels[int(row.argmax())]} ({row.max():.3f})" for path, row in pairs]
    written = []
    if request.out is not None:
        rows = [{"image": str(path), "top": result.labels[int(row.argmax())],
                 "probabilities": dict(zip(result.labels, map(float, row), strict=True))} for path, row in pairs]
        request.out.write_text(json.dumps({"labels": result.labels, "template": values["template"], "images": rows},
                                          indent=2) + "\n")
        written, lines = [request.out], [*lines, f"probabilities of {len(labels)} labels per image in {request.out}"]
    return TaskResult(lines, written, {"labels": result.labels, "probs": result.probs})


def image_embeddings(request: TaskRequest) -> TaskResult:
    files = image_files(request.values["image"])
    embeddings = request.artifact.embed_images(files)
    return _saved(embeddings, [path.name for path in files], request.out)


def text_embeddings(request: TaskRequest) -> TaskResult:
    texts, source = list(request.values["text"] or ()), request.values["text_file"]
    if source is not None:
        try:
            texts += [line.strip() for line in source.read_text(encoding="utf-8").splitlines() if line.strip()]
        except UnicodeDecodeError:
            raise EdgefmError(f"--text-file {source} is not UTF-8 text; give one text per line") from None
    if not texts:
        raise EdgefmError(f"--text-file {source} holds no text; give one text per line")
    return _saved(request.artifact.embed_texts(texts), texts, request.out)


def _saved(embeddings: np.ndarray, names: list[str], out: Path) -> TaskResult:
    """Write the rows and say which item each row is, in order."""
    np.save(out, embeddings.astype(np.float32))
    lines = [f"row {index}: {name}" for index, name in enumerate(names)]
    return TaskResult([*lines, f"{len(names)} L2-normalized embeddings of {embeddings.shape[1]} values in {out}"],
                      [out], {"rows": names, "shape": embeddings.shape})


TASKS = (
    Task("zero-shot", "Which of the labels each --image shows; -o writes every label's probability as JSON.",
         inputs=(TaskOption("labels", 'Labels separated by commas, e.g. "a cat,a dog".', parse=_labels),
                 TaskOption("label", "One label (repeatable).", multiple=True)),
         options=(TaskOption("image", IMAGES.help, kind=Path, must_exist=True, required=True, metavar="FILE_OR_DIR"),
                  TaskOption("template", "Text each label is put in ({} is the label).", default="a photo of {}.")),
         output=TaskOutput("file", "label probabilities per image (JSON)", suffixes=(".json",), required=False),
         run=zero_shot),
    Task("image-embeddings", "Image embeddings as a .npy array, one row per image.",
         inputs=(IMAGES,), options=(), output=EMBEDDINGS, run=image_embeddings),
    Task("text-embeddings", "Text embeddings as a .npy array, one row per text.",
         inputs=(TaskOption("text", "A text to embed (repeatable).", multiple=True),
                 TaskOption("text_file", "A file of texts to embed, one per line.", kind=Path, must_exist=True,
                            file_only=True, metavar="FILE")),
         options=(), output=EMBEDDINGS, run=text_embeddings),
)
