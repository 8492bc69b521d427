"""`edgefm run` on CLIP and DINOv2 artifacts (tiny presets): what the tasks write equals what the artifact's
own Python API computes, rows in sorted filename order."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

import edgefm
from edgefm.cli import main

# copied under names whose sorted order differs from the order they are listed in
PHOTOS = {"chelsea.png": "b-cat.png", "astronaut.png": "a-astronaut.png", "coffee.png": "c-coffee.png"}


def _run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


@pytest.fixture
def folder(tmp_path, photos):
    images = tmp_path / "images"
    images.mkdir()
    by_name = {p.name: p for p in photos}
    for source, name in PHOTOS.items():
        shutil.copy(by_name[source], images / name)
    (images / "notes.txt").write_text("not an image")
    return images


def _sorted_images(folder):
    return sorted(p for p in folder.iterdir() if p.suffix == ".png")


def test_zero_shot_probabilities_match_the_encoders(clip_exported, folder, tmp_path):
    out = tmp_path / "labels.json"
    result = _run("run", clip_exported, "--image", folder, "--labels", "a cat, an astronaut", "--label",
                  "a cup of coffee", "-o", out)
    assert result.exit_code == 0, result.output
    written = json.loads(out.read_text())
    labels = ["a cat", "an astronaut", "a cup of coffee"]
    files = _sorted_images(folder)
    assert written["labels"] == labels and [row["image"] for row in written["images"]] == [str(p) for p in files]
    clip = edgefm.load(clip_exported)
    texts = clip.embed_texts([f"a photo of {label}." for label in labels])
    logits = clip.manifest.task["logit_scale"] * clip.embed_images(files) @ texts.T
    want = np.exp(logits - logits.max(-1, keepdims=True))
    want /= want.sum(-1, keepdims=True)
    got = np.array([[row["probabilities"][label] for label in labels] for row in written["images"]])
    assert np.allclose(got.sum(-1), 1, atol=1e-5) and np.allclose(got, want, atol=1e-5)
    for path, row in zip(files, want, strict=True):
        assert f"{path.name}: {labels[int(row.argmax())]} ({row.max():.3f})" in result.output


def test_zero_shot_prints_without_writing_and_needs_an_image(clip_exported, photos, tmp_path):
    result = _run("run", clip_exported, "--image", photos[0], "--label", "a cat", "--label", "a dog")
    assert result.exit_code == 0 and f"{photos[0].name}: a " in result.output, result.output
    result = _run("run", clip_exported, "--labels", "a cat,a dog")
    assert result.exit_code == 2 and "zero-shot needs --image" in result.output
    result = _run("run", clip_exported, "--image", photos[0], "--labels", "a cat,,a dog")
    assert result.exit_code == 2 and "separated by commas" in result.output


def test_image_embeddings_are_unit_rows_in_sorted_order(clip_exported, folder, tmp_path):
    result = _run("run", clip_exported, "--image", folder, "-o", tmp_path / "images.npy")
    assert result.exit_code == 0, result.output
    got = np.load(tmp_path / "images.npy")
    files = _sorted_images(folder)
    assert got.shape[0] == len(files) and np.allclose(np.linalg.norm(got, axis=-1), 1, atol=1e-5)
    assert np.allclose(got, edgefm.load(clip_exported).embed_images(files), atol=1e-6)
    assert [f"row {i}: {p.name}" for i, p in enumerate(files)] == result.output.splitlines()[:len(files)]


def test_text_embeddings_from_flags_and_a_file(clip_exported, tmp_path):
    texts = tmp_path / "texts.txt"
    texts.write_text("a horse\n\n  a rocket  \n")
    result = _run("run", clip_exported, "--text", "a cat", "--text-file", texts, "-o", tmp_path / "texts.npy")
    assert result.exit_code == 0, result.output
    want = edgefm.load(clip_exported).embed_texts(["a cat", "a horse", "a rocket"])
    assert np.allclose(np.load(tmp_path / "texts.npy"), want, atol=1e-6) and "row 2: a rocket" in result.output
    result = _run("run", clip_exported, "--text", "a cat", "-o", texts)
    assert result.exit_code == 2 and "cannot write .txt files" in result.output


def test_dinov2_embed_writes_cls_or_patch_features(dinov2_exported, folder, tmp_path):
    files = _sorted_images(folder)
    dino = edgefm.load(dinov2_exported)
    result = _run("run", dinov2_exported, "--image", folder, "-o", tmp_path / "cls.npy")
    assert result.exit_code == 0, result.output
    assert np.allclose(np.load(tmp_path / "cls.npy"), dino.embed(files), atol=1e-5)
    assert f"row 0: {files[0].name}" in result.output
    result = _run("run", dinov2_exported, "--image", folder, "--patches", "-o", tmp_path / "patches.npy")
    assert result.exit_code == 0, result.output
    patches = np.load(tmp_path / "patches.npy")
    assert patches.ndim == 4 and np.allclose(patches, dino.patch_features(files), atol=1e-5)


def test_patch_pca_picture(dinov2_exported, photos, tmp_path):
    dino = edgefm.load(dinov2_exported)
    side = dino.manifest.task["preprocess"]["crop"][0]
    grid = side // dino.manifest.task["patch_size"]
    result = _run("run", dinov2_exported, "--image", photos[0], "-o", tmp_path / "pca.png")  # -o picks the task
    assert result.exit_code == 0, result.output
    picture = np.asarray(Image.open(tmp_path / "pca.png"))
    assert picture.shape == (side, 2 * side, 3) and f"{grid}x{grid} patches" in result.output
    cells = picture[:, side:].reshape(grid, side // grid, grid, side // grid, 3)
    assert (cells == cells[:, :1, :, :1]).all()  # one colour per patch
    assert len(np.unique(cells[:, 0, :, 0].reshape(-1, 3), axis=0)) > grid  # the components vary over the image
    from edgefm.runtimes.pipelines.pictures import pca_rgb

    assert np.array_equal(cells[:, 0, :, 0], pca_rgb(dino.patch_features(photos[0])[0])[0])
    result = _run("run", dinov2_exported, "--image", photos[0])
    assert result.exit_code == 2 and "choose one with --task embed or --task patch-pca" in result.output
