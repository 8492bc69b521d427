"""Hostile input to the task helpers (issue 16): images of every mode, one image where a list is
expected, impossible counts and non-finite settings, `edgefm run -o` that would fail or destroy input,
and --calib-size beyond what exists. Each refusal is one line that names the fix."""
from __future__ import annotations

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image, ImageCms

import edgefm
from edgefm.cli import main
from edgefm.contract.errors import CalibrationError, FeedError
from edgefm.runtimes.preprocess import as_image_list, as_pil


def _refused(call, error, match):
    """call() raises `error` with a one-line message matching `match`."""
    with pytest.raises(error, match=match) as info:
        call()
    assert "\n" not in str(info.value), str(info.value)


def _photo(photos, mode="RGB", size=(64, 48)):
    """A real photo, small (fast), in RGB or L."""
    return Image.open(photos[0]).convert(mode).resize(size)


def _diff(a, b) -> np.ndarray:
    return np.abs(np.asarray(a, np.int16) - np.asarray(b, np.int16))


# -- 1. every PIL mode ------------------------------------------------------------------------------
@pytest.mark.parametrize("write", ["I;16", "I;16B", "I", "uint16 array"])
def test_16bit_images_read_as_their_8bit_version(photos, tmp_path, write):
    gray = np.asarray(_photo(photos, "L"))
    wide = gray.astype(np.uint16) * 257  # the 16-bit version of an 8-bit image
    if write == "uint16 array":
        image = wide
    elif write == "I":  # how older Pillow versions load 16-bit PNGs
        image = Image.fromarray(wide.astype(np.int32))
    else:
        image = Image.fromarray(wide.astype(">u2" if write == "I;16B" else "<u2"))
        assert image.mode == write
        image.save(tmp_path / "wide.png")
        image = tmp_path / "wide.png"
    got = as_pil(image)
    assert got.mode == "RGB" and _diff(got, as_pil(gray)).max() <= 1
    if not isinstance(image, np.ndarray):  # negative control: Pillow's own conversion saturates to near-white
        opened = Image.open(image) if not isinstance(image, Image.Image) else image
        assert _diff(opened.convert("RGB"), as_pil(gray)).mean() > 50


def test_16bit_little_endian_mode_and_range_refusals(photos):
    gray = np.asarray(_photo(photos, "L"))
    little = Image.frombytes("I;16L", (gray.shape[1], gray.shape[0]), (gray.astype("<u2") * 257).tobytes())
    assert _diff(as_pil(little), as_pil(gray)).max() <= 1
    _refused(lambda: as_pil(Image.fromarray(np.full((4, 4), -5, np.int32))), FeedError, "16-bit")
    _refused(lambda: as_pil(Image.fromarray(np.full((4, 4), 70000, np.int32))), FeedError, "16-bit")


def test_float_images_are_taken_in_0_1_or_refused(photos):
    gray = _photo(photos, "L")
    unit = Image.fromarray(np.asarray(gray, np.float32) / 255)
    assert unit.mode == "F" and _diff(as_pil(unit), as_pil(gray)).max() <= 1
    assert _diff(unit.convert("RGB"), as_pil(gray)).max() > 100  # negative control: Pillow reads F as 0..255
    _refused(lambda: as_pil(Image.fromarray(np.asarray(gray, np.float32))), FeedError, r"\[0, 1\]")
    _refused(lambda: as_pil(Image.fromarray(np.full((4, 4), np.nan, np.float32))), FeedError, "finite")
    _refused(lambda: as_pil(np.ones((4, 4, 3), np.float32)), FeedError, "uint8")  # arrays: no guessing the range
    _refused(lambda: as_pil(np.ones((4, 4, 2), np.uint8)), FeedError, "HxWx3")
    _refused(lambda: as_pil(np.ones((0, 4, 3), np.uint8)), FeedError, "HxWx3")
    _refused(lambda: as_pil(np.ones((4, 4), np.int64)), FeedError, "uint8")


def _lab(image):
    srgb, lab = ImageCms.createProfile("sRGB"), ImageCms.createProfile("LAB")
    return ImageCms.applyTransform(image, ImageCms.buildTransform(srgb, lab, "RGB", "LAB"))


@pytest.mark.parametrize("mode,tolerance", [("RGB", 0), ("CMYK", 0), ("YCbCr", 3), ("HSV", 6), ("LAB", 6),
                                            ("P", 0), ("RGBA", 0), ("RGBa", 0)])
def test_colour_modes_convert_close_to_the_rgb_they_hold(photos, mode, tolerance):
    rgb = _photo(photos)
    image = _lab(rgb) if mode == "LAB" else rgb.convert(mode)
    expected = image.convert("RGB") if mode == "P" else rgb  # a palette image holds its palette's colours
    assert image.mode == mode and as_pil(image).mode == "RGB"
    assert _diff(as_pil(image), expected).max() <= tolerance
    if mode in ("LAB", "HSV", "YCbCr"):  # negative control: the channels read as RGB are far off
        assert _diff(Image.frombytes("RGB", rgb.size, image.tobytes()), rgb).mean() > 10


@pytest.mark.parametrize("mode", ["1", "L", "LA", "La", "PA"])
def test_grey_and_palette_modes_convert(photos, mode):
    gray = _photo(photos, "L")
    image = {"PA": _photo(photos).convert("P").convert("PA"), "La": gray.convert("LA").convert("La")}.get(mode) \
        or gray.convert(mode)
    expected = gray.convert("1").convert("RGB") if mode == "1" else \
        _photo(photos).convert("P").convert("RGB") if mode == "PA" else gray.convert("RGB")
    assert image.mode == mode and _diff(as_pil(image), expected).max() <= 1


@pytest.mark.parametrize("mode", ["RGBA", "LA", "PA", "P", "L", "uint8 HxWx4"])
def test_transparent_pixels_are_white_and_half_transparent_ones_blend(photos, mode):
    rgb = _photo(photos)
    alpha = np.full((rgb.height, rgb.width), 255, np.uint8)
    alpha[:, :16], alpha[:, 16:32] = 0, 128
    if mode in ("P", "L"):  # transparency by value: one palette index / one grey level
        image = rgb.convert(mode)
        value = np.asarray(image)[0, 0]
        image.info["transparency"] = int(value)
        hidden = np.asarray(image) == value
        got = np.asarray(as_pil(image))
        assert (got[hidden] == 255).all() and (got[~hidden] == np.asarray(image.convert("RGB"))[~hidden]).all()
        assert not (np.asarray(image.convert("RGB"))[hidden] == 255).all()  # negative control: convert() drops it
        return
    base = rgb.convert("L").convert("RGB") if mode == "LA" else rgb.convert("P").convert("RGB") if mode == "PA" else rgb
    rgba = base.convert("RGBA")
    rgba.putalpha(Image.fromarray(alpha))
    image = np.asarray(rgba) if mode == "uint8 HxWx4" else rgba.convert(mode) if mode != "RGBA" else rgba
    got = np.asarray(as_pil(image), np.int16)
    colour = np.asarray(base, np.int16)
    assert (got[:, :16] == 255).all()
    assert np.abs(got[:, 16:32] - (colour[:, 16:32] + 255) / 2).max() <= 2
    assert (got[:, 32:] == colour[:, 32:]).all()
    assert (np.asarray(rgba.convert("RGB"))[:, :16] != 255).any()  # negative control: dropping alpha is not white


# -- 2. one image / one label is never iterated ---------------------------------------------------
def test_one_image_is_one_item(clip_exported, dinov2_exported, photos):
    clip, dino = edgefm.load(clip_exported), edgefm.load(dinov2_exported)
    pil = Image.open(photos[1]).convert("RGB")
    array = np.asarray(pil)
    reference = clip.embed_images([photos[1]])
    for one in (photos[1], str(photos[1]), pil, array):
        np.testing.assert_allclose(clip.embed_images(one), reference, atol=1e-5)
        np.testing.assert_allclose(dino.embed(one), dino.embed([photos[1]]), atol=1e-5)
    assert len(as_image_list(array)) == 1 and len(list(array)) == array.shape[0]  # list() would give rows
    assert len(as_image_list(np.stack([array, array]))) == 2  # N x H x W x C is N images
    _refused(lambda: clip.embed_images([]), FeedError, "no images")
    _refused(lambda: dino.embed(42), FeedError, "unsupported image type")


def test_one_image_negative_control(dinov2_exported, photos, monkeypatch):
    """With the old list(images) the check above fails: an array becomes one image per row."""
    from edgefm.runtimes.pipelines import dinov2

    monkeypatch.setattr(dinov2, "as_image_list", list)
    array = np.asarray(_photo(photos, size=(24, 16)))
    assert edgefm.load(dinov2_exported).embed(array).shape[0] == array.shape[0] != 1


def test_zero_shot_refuses_labels_it_would_misread(clip_exported, photos):
    clip = edgefm.load(clip_exported)
    result = clip.zero_shot(photos[0], ["cat", "dog"])
    assert result.probs.shape == (1, 2) and result.labels == ["cat", "dog"]
    _refused(lambda: clip.zero_shot(photos[0], "cat"), FeedError,
             r"a list of labels like \['cat', 'dog'\], got the single string 'cat'")
    _refused(lambda: clip.zero_shot(photos[0], ["cat"]), FeedError, "at least 2 labels")
    _refused(lambda: clip.zero_shot(photos[0], ["cat", "  "]), FeedError, "label 1 is '  '")
    _refused(lambda: clip.zero_shot(photos[0], ["", "dog"]), FeedError, "label 0")
    _refused(lambda: clip.zero_shot(photos[0], ["cat", 3]), FeedError, "label 1 is 3")
    _refused(lambda: clip.zero_shot(photos[0], 7), FeedError, "list of labels")
    _refused(lambda: clip.zero_shot(photos[0], ["cat", "dog"], template="a photo"), FeedError, "template")
    _refused(lambda: clip.zero_shot(photos[0], ["cat", "dog"], template="{x} {}"), FeedError, "template")
    _refused(lambda: clip.embed_texts(5), FeedError, "non-empty list of strings")


# -- 3. impossible counts, non-finite settings ----------------------------------------------------
def test_sam2_refuses_impossible_frame_counts_and_non_finite_prompts(sam2_exported, photos):
    sam = edgefm.load(sam2_exported)
    assert sam.video_tracker(num_frames=4).max_pointers == 4 and sam.video_tracker().max_pointers > 4
    for bad in (-3, 0, 2.5, True, "10"):
        _refused(lambda: sam.video_tracker(num_frames=bad), FeedError, "num_frames .* whole number >= 1")
    sam.set_image(photos[0])
    assert sam.predict(points=[[20, 30]], labels=[1]).masks.shape[0] == 3
    for points in ([[np.nan, 5]], [[np.inf, 5]], [["20", "30"]], [[None, 5]], [[True, False]]):
        _refused(lambda: sam.predict(points=points, labels=[1]), FeedError, "points must be")
    _refused(lambda: sam.predict(box=[0, 0, np.inf, 5]), FeedError, "box must be finite")
    low = sam.task["low_res_size"]
    _refused(lambda: sam.predict(mask_input=np.full((low, low), np.nan, np.float32)), FeedError, "NaN")


def test_sam2_video_mask_prompt_must_be_finite(sam2_exported, photos):
    tracker = edgefm.load(sam2_exported).video_tracker()
    tracker.add_frame(photos[0])
    mask = np.zeros(tracker.hw, np.float32)
    mask[:5, :5] = np.nan
    _refused(lambda: tracker.add_prompt(1, mask=mask), FeedError, "NaN")


def test_diffusion_refuses_bad_settings_before_any_work(sd15_exported, monkeypatch):
    sd = edgefm.load(sd15_exported)
    default = sd.task["default_size"]
    shape = (1, sd.task["latent_channels"], default // sd.task["vae_scale_factor"],
             default // sd.task["vae_scale_factor"])
    cases = [
        (dict(guidance=float("nan")), r"guidance nan is not a finite number; pass e.g. --guidance"),
        (dict(guidance=float("inf")), "guidance inf"),
        (dict(guidance="7"), "guidance '7'"),
        (dict(steps=0), "steps must be an integer >= 1, got 0; pass e.g. --steps"),
        (dict(steps=2.5), "got 2.5"),
        (dict(steps=True), "got True"),
        (dict(seed=-1), "seed must be a whole number >= 0, got -1; pass e.g. --seed 0"),
        (dict(seed=1.5), "seed must .* got 1.5"),
        (dict(strength=0), r"strength must be in \(0, 1\], got 0.0"),
        (dict(strength=1.5), "got 1.5"),
        (dict(strength=float("nan")), "strength nan is not a finite number"),
        (dict(height=0), "height 0 must be a positive multiple"),
        (dict(width=-64), "width -64 must be a positive multiple"),
        (dict(latents=np.full(shape, np.nan, np.float32)), "latents hold NaN"),
        (dict(latents=np.zeros(shape, np.float64)), "latents must be float32 .* got ndarray float64"),
        (dict(latents=[[0.0]]), "latents must be float32 .* got list"),
    ]
    with pytest.raises(ValueError):  # negative control: numpy's own error for a negative seed is a bare one
        np.random.default_rng(-1)
    ran = []
    monkeypatch.setattr(type(sd), "encode_prompts", lambda self, prompts: ran.append(prompts))
    for settings, message in cases:
        _refused(lambda: sd.generate("a cat", **settings), FeedError, message)
    assert not ran  # refused before any model ran
    _refused(lambda: sd.settings(guidance=float("nan")), FeedError, "guidance nan")
    assert sd.settings(steps=3, guidance=2)["guidance"] == 2.0


def test_diffusion_still_generates_with_good_settings(sd15_exported):
    sd = edgefm.load(sd15_exported)
    images = sd.generate("a cat", steps=1, seed=np.int64(3), guidance=np.float32(1.0))
    assert images.shape[0] == 1 and np.isfinite(images).all()


# -- 4. edgefm run -o -------------------------------------------------------------------------------
def _run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def _cli_refused(args, message):
    """Exit code 2 with the message (the console wraps long lines), no traceback."""
    result = _run(*args)
    assert result.exit_code == 2 and message in " ".join(result.output.split()), result.output
    assert "Traceback" not in result.output and result.exception.__class__ is SystemExit, result.output


def test_run_refuses_outputs_that_cannot_be_written_or_destroy_input(sam2_exported, tmp_path, photos):
    image = tmp_path / "in.png"
    Image.open(photos[0]).convert("RGB").resize((96, 64)).save(image)
    before = image.read_bytes()
    prompt = ["--image", image, "--point", "20,20"]
    _cli_refused(["run", sam2_exported, *prompt, "-o", tmp_path], "is a directory; give a .png file path")
    _cli_refused(["run", sam2_exported, *prompt, "-o", image], "is the input image")
    (tmp_path / "link.png").symlink_to(image)
    _cli_refused(["run", sam2_exported, *prompt, "-o", tmp_path / "link.png"], "is the input image")
    _cli_refused(["run", sam2_exported, *prompt, "-o", tmp_path / "out.txt"], "cannot write .txt images")
    _cli_refused(["run", sam2_exported, *prompt, "-o", tmp_path / "out"], "cannot write an image without a suffix")
    _cli_refused(["run", sam2_exported, *prompt, "-o", image / "out.png"], "is a file, not a directory")
    # checked before any work: a missing artifact is not even opened
    _cli_refused(["run", tmp_path / "missing", *prompt, "-o", tmp_path], "is a directory")
    assert image.read_bytes() == before
    result = _run("run", sam2_exported, *prompt, "-o", tmp_path / "out.jpg")  # positive control
    assert result.exit_code == 0 and Image.open(tmp_path / "out.jpg").size == (96, 64), result.output


def test_run_video_never_writes_into_the_frames(sam2_exported, tmp_path, photos):
    from edgefm.runtimes.pipelines.outputs import check_folder_out

    frames = tmp_path / "frames"
    frames.mkdir()
    for i in range(2):
        Image.open(photos[1]).convert("RGB").resize((96, 64)).save(frames / f"frame_{i:05d}.png")
    before = {p.name: p.read_bytes() for p in frames.iterdir()}
    prompt = ["--video", frames, "--point", "20,20"]
    _cli_refused(["run", sam2_exported, *prompt, "-o", frames], "is or is inside the input")
    _cli_refused(["run", sam2_exported, *prompt, "-o", frames / "overlays"], "is or is inside the input")
    _cli_refused(["run", sam2_exported, *prompt, "-o", frames / "frame_00000.png"], "is a file")
    assert {p.name: p.read_bytes() for p in frames.iterdir()} == before
    # a directory holding the frames is fine: overlays go beside them
    check_folder_out(tmp_path, sam2_exported, [frames], "frame_*.png", "per-frame overlays")
    check_folder_out(tmp_path / "overlays", sam2_exported, [frames], "frame_*.png", "per-frame overlays")


def test_text_to_image_refuses_a_directory_or_the_start_image(sd15_exported, tmp_path, photos):
    start = tmp_path / "start.png"
    Image.open(photos[0]).convert("RGB").resize((64, 64)).save(start)
    _cli_refused(["run", sd15_exported, "--prompt", "a cat", "-o", tmp_path], "is a directory")
    _cli_refused(["run", sd15_exported, "--prompt", "a cat", "--image", start, "-o", start], "is the input image")
    _cli_refused(["run", sd15_exported, "--prompt", "a cat", "-o", tmp_path / "x.txt"], "cannot write .txt")
    assert not (tmp_path / "x.png").exists()


# -- 5. --calib-size beyond what exists ------------------------------------------------------------
def test_calib_size_is_recorded_as_used():
    from edgefm.calibration.data import load

    everything, capped, big = load(), load(calib_size=3), load(calib_size=100000)
    assert (capped.size, capped.note, len(capped.calib_images)) == (3, "", 3)  # negative control: a real cap
    assert "note" not in capped.record(3)
    assert big.size is None and big.calib_images == everything.calib_images
    assert big.calib_prompts == everything.calib_prompts
    assert f"all {len(everything.calib_images)} calibration images" in big.note and "100000" in big.note
    assert big.record(len(big.calib_images))["note"] == big.note
    reloaded = load(calib_size=big.size)  # what validate_job does with the recorded size
    assert reloaded.calib_images == big.calib_images and reloaded.calib_prompts == big.calib_prompts
    between = load(calib_size=50)  # more than the images, fewer than the prompts: the cap stays for prompts
    assert between.size == 50 and len(between.calib_prompts) == 50 and "prompts" not in between.note
    for bad in (0, -2, 2.5, True):
        _refused(lambda: load(calib_size=bad), CalibrationError, "--calib-size must be a whole number >= 1")
