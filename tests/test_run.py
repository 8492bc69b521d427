"""`edgefm run`: overlays people can look at, from a SAM 2 artifact, and clear refusals."""
from __future__ import annotations

import numpy as np
from click.testing import CliRunner
from PIL import Image

import edgefm
from edgefm.cli import main


def _run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def test_image_overlay_tints_exactly_the_predicted_mask(sam2_exported, photos, tmp_path):
    result = _run("run", sam2_exported, "--image", photos[0], "--point", "200,150", "--background-point", "20,20",
                  "-o", tmp_path / "out.png")
    assert result.exit_code == 0, result.output
    original = np.asarray(Image.open(photos[0]).convert("RGB"), np.int16)
    drawn = np.asarray(Image.open(tmp_path / "out.png"), np.int16)
    artifact = edgefm.load(sam2_exported)
    artifact.set_image(photos[0])
    prediction = artifact.predict(points=[[200, 150], [20, 20]], labels=[1, 0])
    mask = prediction.masks[prediction.scores.argmax()]
    changed = (drawn != original).any(-1)
    near_prompt = np.zeros_like(changed)
    near_prompt[100:200, 150:250] = near_prompt[:60, :60] = True  # the point markers
    assert drawn.shape == original.shape and mask.any()
    assert (changed[~near_prompt] == mask[~near_prompt]).mean() > 0.999
    assert "predicted IoU" in result.output


def test_overlay_changes_only_masked_pixels_and_the_prompt_marks(photos):
    from edgefm.runtimes.pipelines.pictures import overlay

    image = Image.open(photos[2]).convert("RGB")
    rng = np.random.default_rng()
    mask = np.zeros((image.height, image.width), bool)
    top, left = rng.integers(0, image.height // 2), rng.integers(0, image.width // 2)
    mask[top:top + 50, left:left + 80] = True
    plain = np.asarray(overlay(image, [mask]), np.int16)
    original = np.asarray(image, np.int16)
    assert ((plain != original).any(-1) == mask).mean() > 0.99  # grey-blue pixels may equal their tint
    marked = np.asarray(overlay(image, [mask], points=[[5, 5]], labels=[1], box=[100, 100, 140, 130]), np.int16)
    assert (marked[:12, :12] != plain[:12, :12]).any() and (marked[100, 100:141] != plain[100, 100:141]).any()


def test_video_overlays_every_frame_and_reports_fps(sam2_exported, photos, tmp_path):
    frames = tmp_path / "frames"
    frames.mkdir()
    base = Image.open(photos[1]).convert("RGB")
    for i in range(4):  # a window sliding across one photo
        base.crop((8 * i, 0, 8 * i + 200, 160)).save(frames / f"{i:03d}.jpg")
    result = _run("run", sam2_exported, "--video", frames, "--box", "40,30,150,120", "-o", tmp_path / "overlays")
    assert result.exit_code == 0, result.output
    written = sorted((tmp_path / "overlays").iterdir())
    assert [p.name for p in written] == [f"frame_{i:05d}.png" for i in range(4)]
    assert Image.open(written[3]).size == (200, 160) and "4 frames" in result.output and "fps" in result.output


def test_run_refuses_bad_requests(sam2_exported, dinov2_exported, photos, tmp_path):
    empty = tmp_path / "no-frames"
    empty.mkdir()
    cases = [
        (["--image", photos[0], "--video", tmp_path], "exactly one of --image"),
        (["--image", photos[0], "--point", "1e9,5"], "outside the image"),
        (["--image", photos[0], "--point", "12"], "give each point as X,Y"),
        (["--image", photos[0], "--box", "1,2,3"], "X1,Y1,X2,Y2"),
        (["--image", photos[0]], "prompt"),
        (["--video", empty, "--point", "5,5"], "holds no images"),
    ]
    for args, message in cases:
        result = _run("run", sam2_exported, *args, "-o", tmp_path / "x.png")
        assert result.exit_code == 2 and message in result.output, (args, result.output)
    result = _run("run", dinov2_exported, "--image", photos[0], "--point", "5,5", "-o", tmp_path / "x.png")
    assert result.exit_code == 2 and "--point is one of the SAM 2 options" in result.output
    assert not (tmp_path / "x.png").exists()
