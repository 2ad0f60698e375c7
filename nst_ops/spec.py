"""One job's parameters: the single place where they are named, defaulted and validated."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

from . import size_checks
from .layer_table import BACKBONE_CFG, POOLINGS, check_layers
from .optimizers import HISTORY_DEVICES, HISTORY_DTYPES, OPTIMIZERS
from .param import Param, Role, check_bounds, finite_nonneg, param
from .param import SpecError as SpecError  # re-exported: the spec's error type
from .presets import FIRST_DEFAULTS, PHOTO_START_FROM, PresetError, apply_preset, edition_values
from .vocab import Mode

MODES = Mode.values()
INITS = ("noise", "content", "style")
MODEL_INIT = "model:"  # init=model:<uri>: start from a trained style network's output
STYLE_SCALES = ("content", "own")
GATYS_STYLE_LAYERS = ("conv1_1", "conv2_1", "conv3_1", "conv4_1", "conv5_1")
MIN_SIZE, MAX_SIZE = 16, 8192  # above ~1500 px a job needs tile= (nst_ops.memory)


def is_image_ref(value: str) -> bool:
    """A path or URL (has a folder, a scheme or a file extension), not a misspelt choice."""
    return "/" in value or "://" in value or "." in value.rsplit("/", 1)[-1]


@dataclass(frozen=True)
class JobSpec:
    """Hyper-parameters of one optimisation (inputs are passed separately).

    ``content_weight``/``style_weight`` are the study's alpha/beta; ``style_layer_weights`` its
    w_l (default: equal, summing to 1). ``lr=None`` picks the optimizer's default.
    """

    # fmt: off
    mode: str = param(Mode.TRANSFER.value, "transfer (content + style), style or content "
                      "reconstruction", role=Role.BATCH, choices=lambda: MODES)
    backbone: str = param("vgg19", "the network: vgg16 or vgg19", role=Role.BATCH,
                          choices=lambda: tuple(BACKBONE_CFG))
    pooling: str = param("max", "max, or avg (the study's choice: smoother gradients)",
                         role=Role.BATCH, choices=lambda: POOLINGS)
    weights: str = param("imagenet", "imagenet (torchvision), random:<seed>, or a state-dict "
                         "path/URL", role=Role.BATCH)
    content_layers: tuple[str, ...] = param(("conv4_2",), "layers whose features the content "
                                            "loss matches", role=Role.BATCH)
    style_layers: tuple[str, ...] = param(GATYS_STYLE_LAYERS, "layers whose Gram matrices the "
                                          "style loss matches", role=Role.BATCH)
    style_layer_weights: tuple[float, ...] | None = param(None, "w_l per style layer (default "
                                                          "equal, summing to 1)")
    content_weight: float = param(1.0, "alpha, the content loss weight", minimum=0)
    style_weight: float = param(1e7, "beta, the style loss weight", minimum=0)
    tv_weight: float = param(0.0, "total-variation smoothing weight (0 = off)", minimum=0)
    optimizer: str = param("lbfgs", "how to step: " + ", ".join(OPTIMIZERS), role=Role.LOOP,
                           choices=lambda: tuple(OPTIMIZERS))
    lr: float | None = param(None, "learning rate (default per optimizer: "
                             + ", ".join(f"{k} {v.default_lr:g}" for k, v in OPTIMIZERS.items())
                             + ")")
    momentum: float = param(0.0, "SGD momentum", minimum=0)
    line_search: bool = param(False, "L-BFGS strong-Wolfe line search", role=Role.LOOP)
    history_size: int = param(100, "L-BFGS history: pairs of image-sized vectors kept (memory: "
                              "2 x this x 12 bytes per pixel in float32; 10 GB at 2048 px with "
                              "100)", integer=True, minimum=1, added_later=True)
    history_dtype: str = param("float32", "L-BFGS history's type: float32, or bfloat16 (half "
                               "its memory; each pair is widened to float32 when read)",
                               choices=lambda: tuple(HISTORY_DTYPES), added_later=True)
    history_device: str = param("same", "where L-BFGS's history lives: same (with the image), or "
                                "host (a GPU job's pairs in pinned host memory: the GPU holds "
                                "none, each step reads them over PCIe)",
                                choices=lambda: HISTORY_DEVICES, added_later=True)
    iterations: int = param(300, "optimizer steps (per resolution level with multires)",
                            role=Role.LOOP, integer=True, minimum=1)
    size: int = param(256, "longer side of the output in pixels", role=Role.BATCH, integer=True,
                      minimum=MIN_SIZE, maximum=MAX_SIZE)
    init: str = param("noise", "start image: noise (seeded), content (recognisable results "
                      "fastest), style, an image path/URL (e.g. a previous result), or "
                      "model:<URI> (a trained style network's output: refinement); latest "
                      f"defaults: content for L-BFGS transfers from {PHOTO_START_FROM} px",
                      choices=lambda: INITS, only_choices=False)
    seed: int = param(0, "seed of the noise init", integer=True, minimum=0)
    style_scale: str = param("content", "content: style resized to the content's size (the "
                             "study); own: kept", role=Role.BATCH, choices=lambda: STYLE_SCALES)
    style_blend: tuple[float, ...] | None = param(None, "weights blending several style images")
    preserve_color: bool = param(False, "luminance-only transfer, keeping the content's colours",
                                 role=Role.BATCH)
    tile: int = param(0, "tiled optimisation: tiles of this many px (0 = whole image): memory "
                      "set by the tile, the style's Gram matrices summed over every tile (the "
                      "whole image's statistics); larger tiles are faster (fewer margins)",
                      role=Role.BATCH, integer=True, minimum=0, added_later=True)
    tile_margin: int | None = param(None, "context around each tile in px (default: the deepest "
                                    "layer's receptive field: tiled equals untiled; less is "
                                    "faster, approximate, and the grid then moves every "
                                    "evaluation)", role=Role.BATCH, added_later=True)
    workers_per_job: int = param(1, "a tiled job's tiles spread over this many workers (GPUs on "
                                 "a cluster), gang-scheduled together; equal to 1 worker up to "
                                 "float rounding", role=Role.BATCH, integer=True, minimum=1,
                                 maximum=64, added_later=True)
    multires: int = param(1, "coarse-to-fine levels (each halves the size)", role=Role.BATCH,
                          integer=True, minimum=1)
    level_iterations: tuple[int, ...] | None = param(
        None, "iterations of each multires level, coarsest first (default: `iterations` at "
        "every level)", role=Role.LOOP, added_later=True)
    log_every: int = param(10, "trace a row every N iterations", role=Role.LOOP, integer=True,
                           minimum=1)
    divergence_factor: float = param(100.0, "a loss above this x best counts as a spike",
                                     role=Role.LOOP, minimum=0)
    divergence_patience: int = param(50, "iterations a spike may last before the job counts as "
                                     "diverged", role=Role.LOOP, integer=True, minimum=1,
                                     added_later=True)
    amp: bool | str = param(False, "bf16 convolutions (losses stay fp32): true, false, or auto "
                            "(on where the device has bf16 units: CUDA with bf16, CPUs with "
                            "AVX512-BF16/AMX)", role=Role.BATCH)  # auto: resolved per device
    tol: float = param(0.0, "early stopping: stop when the best loss improved by less than this "
                       "fraction over the last tol_window iterations (0 = off)", minimum=0,
                       added_later=True)
    tol_window: int = param(20, "iterations over which tol measures the improvement",
                            integer=True, minimum=1, added_later=True)
    save_every: int = param(0, "also save the image every N iterations (snapshots; 0 = off)",
                            integer=True, minimum=0, added_later=True)
    restarts: int = param(0, "after a blow-up (loss > divergence_factor x best for 5 iterations, "
                          "or not finite): go back to the best image with a fresh optimizer "
                          "state (and fp32 for amp) up to this many times before the job counts "
                          "as diverged (latest defaults: 2 for L-BFGS)", integer=True, minimum=0,
                          added_later=True)
    # fmt: on

    def __post_init__(self) -> None:
        for name in (
            "content_layers",
            "style_layers",
            "style_layer_weights",
            "style_blend",
            "level_iterations",
        ):
            v = getattr(self, name)
            if isinstance(v, str):
                v = (v,)
            if v is not None and not isinstance(v, tuple):
                object.__setattr__(self, name, tuple(v))
        self._validate()

    def _validate(self) -> None:
        for check in (
            self._check_choices,
            self._check_init,
            self._check_amp,
            self._check_weights_source,
            self._check_layers,
            self._check_numbers,
            self._check_lists,
            self._check_combinations,
        ):
            check()

    def _check_choices(self) -> None:
        for name, rules in PARAMS.items():
            if rules.choices is None or not rules.only_choices:
                continue
            v, options = getattr(self, name), rules.choices()
            if v not in options:
                raise SpecError(f"unknown {name} {v!r}; choose one of {', '.join(options)}")

    def _check_amp(self) -> None:
        if not (isinstance(self.amp, bool) or self.amp == "auto"):
            raise SpecError(f"amp must be true, false or auto, got {self.amp!r}")

    def _check_init(self) -> None:
        if not isinstance(self.init, str) or not self.init:
            raise SpecError(f"init must be text, got {self.init!r}")
        if self.init.startswith(MODEL_INIT):
            if not self.init[len(MODEL_INIT) :]:
                raise SpecError("init=model: needs the URI of a trained model (nst train)")
            if not self.uses_content:
                raise SpecError(f"init=model: starts from a stylised content image; mode "
                                f"{self.mode!r} has none")  # fmt: skip
            return
        if self.init not in INITS and not is_image_ref(self.init):
            raise SpecError(
                f"unknown init {self.init!r}; choose one of {', '.join(INITS)}, an image "
                "path or URL, or model:<URI of a trained style network>"
            )

    def _check_weights_source(self) -> None:
        if not isinstance(self.weights, str) or not self.weights:
            raise SpecError("weights must be 'imagenet', 'random:<seed>', a path or a URL")
        if self.weights.startswith("random:") and not self.weights[7:].isdigit():
            raise SpecError(f"weights {self.weights!r}: expected random:<integer seed>")

    def _check_layers(self) -> None:
        if self.uses_content and not self.content_layers:
            raise SpecError(f"mode {self.mode!r} needs at least one content layer")
        if self.uses_style and not self.style_layers:
            raise SpecError(f"mode {self.mode!r} needs at least one style layer")
        try:
            check_layers(self.backbone, self.content_layers + self.style_layers)
        except ValueError as e:
            raise SpecError(str(e)) from None

    def _check_numbers(self) -> None:
        for name, rules in PARAMS.items():
            if rules.minimum is not None:
                check_bounds(name, getattr(self, name), rules)
        if self.lr is not None:
            finite_nonneg("lr", self.lr)
            if self.lr == 0:
                raise SpecError("lr must be > 0")
        if self.size >> (self.multires - 1) < MIN_SIZE:
            raise SpecError(
                f"multires={self.multires} makes the first level smaller than {MIN_SIZE} px"
            )
        size_checks.check_size_for_layers(self)
        size_checks.check_tiles(self)
        if self.divergence_factor <= 1:
            raise SpecError("divergence_factor must be > 1")
        size_checks.check_levels(self)

    @property
    def total_iterations(self) -> int:
        """Iterations over the whole schedule (every multires level)."""
        return sum(self.iterations_at(k) for k in range(self.multires))

    def iterations_at(self, level: int) -> int:
        """Iterations of multires level ``level`` (0 = coarsest)."""
        return self.level_iterations[level] if self.level_iterations else self.iterations

    def _check_lists(self) -> None:
        if self.style_layer_weights is not None:
            if len(self.style_layer_weights) != len(self.style_layers):
                raise SpecError(
                    f"style_layer_weights has {len(self.style_layer_weights)} values for "
                    f"{len(self.style_layers)} style layers"
                )
            for w in self.style_layer_weights:
                finite_nonneg("style_layer_weights", w)
        if self.style_blend is not None:
            if not self.style_blend:
                raise SpecError("style_blend must not be empty")
            for w in self.style_blend:
                finite_nonneg("style_blend", w)
            if sum(self.style_blend) <= 0:
                raise SpecError("style_blend weights must not all be zero")

    def _check_combinations(self) -> None:
        if self.preserve_color and self.mode != Mode.TRANSFER:
            raise SpecError("preserve_color applies to style transfer only")
        if self.mode == Mode.STYLE and self.init == "content":
            raise SpecError("style reconstruction has no content image to initialise from")
        if self.mode == Mode.CONTENT and self.init == "style":
            raise SpecError("content reconstruction has no style image to initialise from")

    @property
    def learning_rate(self) -> float:
        return OPTIMIZERS[self.optimizer].default_lr if self.lr is None else self.lr

    @property
    def layer_weights(self) -> tuple[float, ...]:
        if self.style_layer_weights is not None:
            return self.style_layer_weights
        return tuple(1.0 / len(self.style_layers) for _ in self.style_layers)

    @property
    def uses_content(self) -> bool:
        return Mode(self.mode).uses_content

    @property
    def uses_style(self) -> bool:
        return Mode(self.mode).uses_style

    @property
    def batchable_loop(self) -> bool:
        """Its optimizer can step several images from one shared evaluation (a line search
        evaluates each image a different number of times)."""
        return OPTIMIZERS[self.optimizer].batchable and not self.line_search

    @property
    def batchable(self) -> bool:
        """Several such jobs may share one forward/backward: a batchable loop at one
        resolution (in a multi-resolution schedule one diverging image would stop its
        batch-mates at a lower level)."""
        return self.batchable_loop and self.multires == 1

    @property
    def init_image(self) -> str | None:
        """The start image's path/URL when ``init`` names one."""
        return None if self.init in INITS or self.init_model else self.init

    @property
    def init_model(self) -> str | None:
        """The style network's URI with ``init=model:<uri>``: the start is its output for the
        content image (refinement of a feed-forward result)."""
        return self.init[len(MODEL_INIT) :] if self.init.startswith(MODEL_INIT) else None

    @property
    def external_init(self) -> bool:
        """The start image comes from outside the optimisation (a file or a network)."""
        return self.init_image is not None or self.init_model is not None

    @property
    def needs_style_image(self) -> bool:
        """Style loss, or a start from the style image."""
        return self.uses_style or self.init == "style"

    @property
    def active_layers(self) -> tuple[str, ...]:
        layers = (self.content_layers if self.uses_content else ()) + (
            self.style_layers if self.uses_style else ()
        )
        return tuple(dict.fromkeys(layers))

    def to_dict(self) -> dict[str, Any]:
        """Plain, JSON-able parameters (tuples as lists) in field order."""
        d = asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in fields(cls))

    @classmethod
    def from_dict(
        cls, params: dict[str, Any], preset: str | None = None, defaults: int = FIRST_DEFAULTS
    ) -> JobSpec:
        """A spec from plain values; ``preset`` fills in every parameter not given, else the
        defaults edition ``defaults`` does (see nst_ops.presets)."""
        unknown = set(params) - set(cls.field_names())
        if unknown:
            raise SpecError(f"unknown parameter(s): {', '.join(sorted(unknown))}")
        try:
            values = apply_preset(preset, params)
            if preset is None:
                resolved = _FIELD_DEFAULTS | values
                values = {**edition_values(defaults, resolved), **values}
            return cls(**values)
        except PresetError as e:
            raise SpecError(str(e)) from None


# Every field's rules and default, built once: from_dict runs once per job (100k jobs at a time).
PARAMS: dict[str, Param] = {f.name: f.metadata["param"] for f in fields(JobSpec)}
_FIELD_DEFAULTS: dict[str, Any] = {f.name: f.default for f in fields(JobSpec)}
PARAM_HELP: dict[str, str] = {name: rules.help for name, rules in PARAMS.items()}

# What every image of one optimisation loop must share (one optimizer step for the batch).
LOOP_FIELDS = tuple(name for name, rules in PARAMS.items() if rules.role is Role.LOOP)
# What every image of one batch must share (the rest, e.g. weights, lr, seed, inputs, may vary).
BATCH_FIELDS = (
    *(name for name, rules in PARAMS.items() if rules.role is Role.BATCH),
    *LOOP_FIELDS,
)
# Parameters added after job ids were published, at the default that reproduces the old
# behaviour for every job the old code completed: at that value they leave a job's id as it was.
ADDED_LATER: dict[str, Any] = {n: _FIELD_DEFAULTS[n] for n, r in PARAMS.items() if r.added_later}


def choices(name: str) -> tuple[str, ...] | None:
    """The named values of a parameter that has them (None for free values)."""
    rules = PARAMS.get(name)
    return None if rules is None or rules.choices is None else rules.choices()


def batch_key(spec: JobSpec) -> tuple[Any, ...]:
    """Jobs with equal keys (and equal output sizes) can share one forward/backward."""
    return tuple(getattr(spec, f) for f in BATCH_FIELDS)
