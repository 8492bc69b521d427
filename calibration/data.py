"""Where calibration images and prompts come from, split into calibration and held-out parts.

Without a user folder the sample photos that scikit-image ships are used (real photographs,
never random noise). Every 4th item is held out: quantizers calibrate on the rest and the
compiled graph is validated on the held-out part it never saw.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from edgefm.contract.errors import CalibrationError
from edgefm.contract.images import IMAGE_SUFFIXES
from edgefm.contract.spec import whole_number

HOLDOUT_EVERY = 4

# scikit-image's bundled sample photographs and what they show (the zero-shot labels).
SAMPLE_PHOTOS = {
    "astronaut.png": "an astronaut", "chelsea.png": "a cat", "coffee.png": "a cup of coffee",
    "rocket.jpg": "a rocket", "motorcycle_left.png": "a motorcycle", "motorcycle_right.png": "a motorcycle",
    "hubble_deep_field.jpg": "galaxies in deep space", "retina.jpg": "a retina", "camera.png": "a photographer",
    "moon.png": "the surface of the moon", "coins.png": "old coins", "brick.png": "a brick wall",
    "grass.png": "grass", "gravel.png": "gravel", "ihc.png": "a stained tissue sample", "cell.png": "a cell",
    "page.png": "a page of text", "horse.png": "a horse", "clock_motion.png": "a clock",
    "chessboard_RGB.png": "a chessboard",
}
PROMPT_TEMPLATES = ["a photo of {}.", "a blurry photo of {}.", "a close-up photo of {}.",
                    "a black and white photo of {}.", "a painting of {}.", "a bright photo of {}.",
                    "a cropped photo of {}.", "{}"]


@dataclass
class CalibrationData:
    source: str
    calib_images: list[Path]
    heldout_images: list[Path]
    calib_prompts: list[str]
    heldout_prompts: list[str]
    labels: list[str]  # zero-shot label set for agreement checks
    size: int | None = None  # the --calib-size cap in effect: None when it cut nothing (all items used)
    note: str = ""  # set when --calib-size asked for more than there is

    @property
    def all_images(self) -> list[Path]:
        return self.calib_images + self.heldout_images

    def record(self, count: int) -> dict:
        """The manifest's `calibration` block."""
        record = {"source": self.source, "count": count, "heldout_images": len(self.heldout_images),
                  "heldout_prompts": len(self.heldout_prompts)}
        return {**record, "note": self.note} if self.note else record


def sample_photo_dir() -> Path:
    try:
        import skimage  # only to locate its data folder
    except ImportError:
        raise CalibrationError("the bundled sample photos come from scikit-image, which is not installed: "
                               "pip install 'edgefm[build]', or pass --calib DIR with your own images") from None
    return Path(skimage.__file__).parent / "data"


def _split(items: list) -> tuple[list, list]:
    held = items[HOLDOUT_EVERY - 1::HOLDOUT_EVERY]
    return [x for i, x in enumerate(items) if (i + 1) % HOLDOUT_EVERY], held


def _folder_images(folder: Path) -> list[Path]:
    if not folder.is_dir():
        raise CalibrationError(f"calibration folder {folder} does not exist or is not a directory")
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    images = [p for p in files if p.suffix.lower() in IMAGE_SUFFIXES]
    if not images:
        raise CalibrationError(f"calibration folder {folder} holds no images (looked for "
                               f"{', '.join(sorted(IMAGE_SUFFIXES))}; found {len(files)} other files)")
    from PIL import Image

    for path in images:
        try:
            with Image.open(path) as image:
                image.verify()
        except Exception as exc:  # PIL raises many types for broken files
            raise CalibrationError(f"calibration image {path} cannot be read ({exc}); remove or replace it") from None
    if len(images) < 2:
        raise CalibrationError(f"calibration folder {folder} has {len(images)} image; at least 2 are needed "
                               "(one to calibrate on, one held out for validation)")
    return images


def load_prompts(path: Path | None) -> list[str]:
    if path is None:
        labels = list(dict.fromkeys(SAMPLE_PHOTOS.values()))
        return [t.format(label) for t in PROMPT_TEMPLATES for label in labels]
    prompts = [line.strip() for line in Path(path).read_text().splitlines() if line.strip()]
    if len(prompts) < 2:
        raise CalibrationError(f"prompt file {path} needs at least 2 non-empty lines (one per prompt)")
    return prompts


def load(calib_dir: Path | None = None, calib_size: int | None = None,
         prompts_file: Path | None = None) -> CalibrationData:
    if calib_size is not None and (not whole_number(calib_size) or calib_size < 1):
        raise CalibrationError(f"--calib-size must be a whole number >= 1, got {calib_size!r}; e.g. --calib-size 16")
    if calib_dir is None:
        folder = sample_photo_dir()
        images = [folder / name for name in SAMPLE_PHOTOS if (folder / name).is_file()]
        if len(images) < 2:
            raise CalibrationError(f"scikit-image's sample photos are missing from {folder}; pass --calib DIR")
        source = "scikit-image sample photos"
    else:
        images, source = _folder_images(Path(calib_dir)), str(Path(calib_dir).resolve())
    calib, held = _split(images)
    calib_prompts, held_prompts = _split(load_prompts(prompts_file))
    size, note = _cap(calib_size, calib, calib_prompts)
    if size:  # the same cap for images and prompts
        calib, calib_prompts = calib[:size], calib_prompts[:size]
    labels = list(dict.fromkeys(SAMPLE_PHOTOS.values()))
    return CalibrationData(source, calib, held, calib_prompts, held_prompts, labels, size, note)


def _cap(calib_size: int | None, images: list, prompts: list) -> tuple[int | None, str]:
    """The cap in effect (None when it cuts nothing, so the record never claims more than was used) and a
    note naming what there was less of than asked."""
    if calib_size is None:
        return None, ""
    short = [f"{len(items)} calibration {kind}" for kind, items in (("images", images), ("prompts", prompts))
             if len(items) < calib_size]
    note = f"--calib-size {calib_size} asked for more than there is; all {' and '.join(short)} used" if short else ""
    return (None if len(short) == 2 else calib_size), note
