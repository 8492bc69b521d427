"""What `edgefm run` tasks read: one image or a folder of them, the frames of a video."""
from __future__ import annotations

from pathlib import Path

from edgefm.contract.errors import EdgefmError
from edgefm.contract.images import IMAGE_SUFFIXES
from edgefm.runtimes.preprocess import as_pil


def image_files(source: Path) -> list[Path]:
    """[source] for a file; a folder's images sorted by name (so output rows follow a stable order)."""
    source = Path(source)
    if not source.is_dir():
        return [source]
    files = sorted(p for p in source.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise EdgefmError(f"{source} holds no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
    return files


def video_frames(source: Path):
    """Frames of a directory of images (sorted by name) or of a video file (needs imageio with ffmpeg)."""
    source = Path(source)
    if source.is_dir():
        return (as_pil(p) for p in image_files(source))
    if not source.is_file():
        raise EdgefmError(f"{source} is neither a directory of frames nor a video file")
    try:
        import imageio.v3 as iio
    except ImportError:
        raise EdgefmError(f"reading {source.name} needs imageio with ffmpeg (pip install 'imageio[ffmpeg]'), "
                          "or pass a directory of frames") from None
    return (as_pil(frame) for frame in iio.imiter(source))
