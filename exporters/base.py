"""What a model family provides: variants, how to load a model, and its exportable components."""
from __future__ import annotations

import hashlib
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from edgefm.contract.errors import EdgefmError, UnknownChoiceError
from edgefm.contract.gates import gates_for
from edgefm.contract.spec import TensorSpec

if TYPE_CHECKING:
    from edgefm.calibration.recipe import CalibrationRecipe
    from edgefm.runtimes.loader import Artifact


@dataclass(frozen=True)
class Variant:
    name: str
    hub_id: str | None  # None: only buildable with random weights (the offline `tiny` presets)
    config: dict  # architecture config kwargs: real sizes, used for --random-weights and tiny
    description: str = ""


@dataclass(frozen=True)
class Source:
    kind: str  # "preset" (random weights from a variant's config), "hub" or "dir"
    id: str
    variant: str | None = None

    @property
    def random_weights(self) -> bool:
        return self.kind == "preset"


@dataclass(frozen=True)
class ExportOptions:
    resolution: int | None = None  # image families with a free input size (DINOv2)
    dynamic_resolution: bool = False
    seed: int = 0  # seed for random weights of presets
    lora: str | None = None  # LoRA weights fused into the model before export (diffusion families)
    lora_scale: float = 1.0


@dataclass
class Component:
    """One exportable graph: a torch wrapper and the contract of its inputs and outputs."""

    name: str
    module: Any  # torch.nn.Module
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    make_inputs: Callable[[np.random.Generator, dict[str, int]], dict[str, np.ndarray]]
    trace_dims: dict[str, int]  # sizes used while tracing (batch >= 2 so it stays symbolic)
    validation_dims: list[dict[str, int]]  # at least two shapes checked against torch
    dims: dict[str, dict] = field(default_factory=dict)  # symbolic dim rules: default / max / multiple_of
    arch: dict = field(default_factory=dict)  # what graph optimizers need (ORT model type, heads, hidden)


@dataclass
class LoadedModel:
    model: Any  # the transformers model, eval mode
    processor: Any  # what writes the tokenizer / preprocessor files
    weights_sha256: str
    extra: dict = field(default_factory=dict)


def graph_attention(model) -> dict:
    """Switch a transformers model to its eager (matmul-softmax-matmul) attention for export, and say so for
    the manifest's arch record. Measured (DINOv2-S/14, 224, 2-core Xeon with AMX, random weights): torch's
    exporter writes SDPA as a decomposition with IsNaN / Where guards that OpenVINO's attention fusion does not
    match, while the eager graph is fused: OpenVINO bf16 batch 8 ran 85-98 ms vs 134 ms. Torch itself keeps
    SDPA, its fastest path (the benchmarks' torch peers reset it)."""
    model.set_attn_implementation("eager")
    return {"attention": "eager"}


def weights_sha256(model) -> str:
    """Content hash of a model's weights, whatever they came from (hub, dir or random preset)."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().contiguous().cpu().numpy().tobytes())
    return digest.hexdigest()


HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?")  # what the Hugging Face hub accepts as a repo id


class ModelFamily:
    name: str = ""
    title: str = ""  # how people write it ("SAM 2"), in messages
    description: str = ""
    # `edgefm demo`: the variant it exports (None: not in the demo), and whether targets whose artifacts run
    # elsewhere are compiled for it too (two families keep the demo short)
    demo_variant: str | None = None
    demo_on_every_target: bool = False
    variants: dict[str, Variant] = {}
    component_names: tuple[str, ...] = ()
    supports_resolution: bool = False
    supports_lora: bool = False
    # Accuracy gates, read from the table in edgefm.contract.gates (rows: metrics, columns: precisions). Every metric
    # named here needs a check in the family's recipe (CalibrationRecipe.extra_checks / pipeline_checks).
    gate_metrics: tuple[str, ...] = ("cosine",)  # per component, vs the fp32 export
    component_gate_metrics: dict[str, tuple[str, ...]] = {}  # components whose metrics differ: {component: metrics}
    gate_overrides: dict[str, dict[str, float]] = {}  # the family's own cells: {metric: {precision: gate}}
    pipeline_gate_metrics: tuple[str, ...] = ()  # end to end (the recipe's pipeline_checks); () for none
    pipeline_gate_overrides: dict[str, dict[str, float]] = {}

    def resolve(self, model: str | None, variant: str | None, random_weights: bool = False) -> Source:
        if (model is None) == (variant is None):
            raise EdgefmError(f"give exactly one of --model ID_OR_DIR or --variant NAME "
                              f"(variants of {self.name}: {', '.join(self.variants)})")
        if model is not None:
            if random_weights:
                raise EdgefmError("--random-weights builds a variant's architecture; use it with --variant")
            if Path(model).is_dir():
                return Source("dir", str(Path(model).resolve()))
            if not HUB_ID.fullmatch(model) or Path(model).exists():
                raise EdgefmError(f"--model {model}: no such folder (and not a hub id like "
                                  "openai/clip-vit-base-patch32); give a folder written by save_pretrained() or a hub id")
            return Source("hub", model)
        if variant not in self.variants:
            raise UnknownChoiceError(f"{self.name} variant", variant, self.variants)
        chosen = self.variants[variant]
        if chosen.hub_id is None or random_weights:
            return Source("preset", chosen.hub_id or variant, variant)
        return Source("hub", chosen.hub_id, variant)

    def check_options(self, options: ExportOptions) -> None:
        if not self.supports_resolution and (options.resolution or options.dynamic_resolution):
            raise EdgefmError(f"--resolution / --dynamic-resolution do not apply to {self.name}")
        if not self.supports_lora and options.lora:
            raise EdgefmError(f"--lora applies to the diffusion families (sd15, sdxl), not {self.name}")

    # What each family implements -------------------------------------------------------------
    def load(self, source: Source, options: ExportOptions) -> LoadedModel:
        raise NotImplementedError

    def components(self, loaded: LoadedModel, options: ExportOptions) -> list[Component]:
        raise NotImplementedError

    def write_assets(self, loaded: LoadedModel, out_dir: Path, options: ExportOptions) -> dict:
        """Write tokenizer / preprocessor files; return the manifest's `task` block."""
        raise NotImplementedError

    def calibration(self) -> CalibrationRecipe:
        """The family's calibration recipe (edgefm.calibration.recipe.CalibrationRecipe): feeds and task checks.
        Import its module inside the method: exporting never imports the compile or runtime side."""
        raise NotImplementedError

    def artifact_class(self) -> type[Artifact]:
        """The edgefm.runtimes.loader.Artifact subclass with the family's task helpers, what `edgefm.load`
        returns (imported inside the method, like `calibration`)."""
        raise NotImplementedError

    def tasks(self) -> tuple:
        """What `edgefm run` does with the family's artifacts: edgefm.contract.tasks.Task objects, whose
        flags the command line is made from (() for none). Import the module declaring them inside the
        method, like `calibration`: they are runtime code."""
        return ()

    def demo_picture(self, exported: Path, compiled: list[Path], out_dir: Path) -> tuple[Path, str] | None:
        """`edgefm demo`: draw what each compiled artifact changes in the task's output beside the export's;
        (the picture, its caption), or None for families without one."""
        return None

    # Concrete: computed from the class attributes above ------------------------------------------
    def gates(self, component: str, precision: str) -> dict[str, float]:
        """Accuracy gates for a compiled component vs the fp32 export: metric -> minimum value, from the
        table in edgefm.contract.gates with the family's overrides (`gate_metrics`, `component_gate_metrics`,
        `gate_overrides`)."""
        return gates_for(precision, self.component_gate_metrics.get(component, self.gate_metrics), self.gate_overrides)

    def keep_fp32(self, manifest, precision: str) -> dict[str, str]:
        """Components a compile in `precision` keeps in fp32 before measuring anything: {component: why}."""
        return {}

    def pipeline_gates(self, precision: str) -> dict[str, float]:
        """Gates of the end-to-end task check of a compiled artifact (its recipe's `pipeline_checks`), from
        `pipeline_gate_metrics` / `pipeline_gate_overrides`; empty where the per-component gates already
        measure what users get."""
        if not self.pipeline_gate_metrics:
            return {}
        return gates_for(precision, self.pipeline_gate_metrics, self.pipeline_gate_overrides)


def from_pretrained(loader: Callable, source: Source, what: str):
    """Load from a hub id or local directory with an error that says what to do offline."""
    import pickle

    try:
        return loader(source.id)
    # OSError: missing files; ValueError: an architecture transformers lacks or remote code (never trusted);
    # UnpicklingError: a pickled checkpoint torch's weights-only loader refuses (it could run code)
    except (OSError, ValueError, pickle.UnpicklingError) as exc:
        if isinstance(exc, pickle.UnpicklingError):
            raise EdgefmError(f"the {what} at {source.id!r} is a pickle that could run code when loaded, and edgefm "
                              "never loads those; where you trust it, re-save it as safetensors "
                              "(save_pretrained(..., safe_serialization=True)) and export that") from None
        hint = ("check the directory holds a save_pretrained() checkpoint"
                if source.kind == "dir" else
                "no network or unknown id? download it where you have a network and pass --model LOCAL_DIR, "
                "or use --variant tiny / --random-weights offline")
        raise EdgefmError(f"could not load the {what} from {source.id!r}: {exc.__class__.__name__}: "
                          f"{str(exc).splitlines()[0] if str(exc) else ''}; {hint}") from None


def pil_image_processor(name: str, **kwargs):
    """A transformers image processor on its PIL backend (transformers 5 prefers torchvision when present)."""
    import transformers

    cls = getattr(transformers, f"{name}Pil", None) or getattr(transformers, name)
    return cls(**kwargs)


def preprocess_config(image_processor) -> dict:
    """The manifest's preprocessing block, read from a transformers image processor."""
    from PIL import Image

    size, crop = image_processor.size, image_processor.crop_size
    return {"resize_shortest_edge": size["shortest_edge"], "crop": [crop["height"], crop["width"]],
            "mean": [float(x) for x in image_processor.image_mean], "std": [float(x) for x in image_processor.image_std],
            "rescale": float(image_processor.rescale_factor),
            "resample": Image.Resampling(image_processor.resample).name.lower()}
