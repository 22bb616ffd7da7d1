"""The artist's desktop, without GIMP (issue #23): plain progress words, the dialog's instant previews mixed as
the engine mixes strength and Original colours, which layer a run works on, where a re-run lands, the faithful
preview request, the estimate's words. Standard library only, tested under the suite's Python
(tests/test_gimp_logic.py); ``sb_logic.py`` keeps the job/protocol decisions.
"""

from __future__ import annotations

import inspect
import json
from typing import Any, Iterable, Mapping, Sequence

import sb_client

# ------------------------------------------------------------------------------------------------
# style strength and brush-stroke scale: the dialog's knobs
# ------------------------------------------------------------------------------------------------

#: The dialog's strength knob: 0..1 in these steps; above 1 (the old extra style weight) only when asked for
#: explicitly, in Extra settings ({"style_strength": 3}) or from a script.
STRENGTH_STEP = 0.05
STRENGTH_PAGE = 0.25
#: style_scale (= bridge.settings.Settings.style_scale: default and bounds, a test checks): the brush strokes'
#: size, the style image's size relative to the working size.
STYLE_SCALE_DEFAULT = 1.0
STYLE_SCALE_MIN = 0.05
STYLE_SCALE_MAX = 8.0
STYLE_SCALE_KNOB = (0.25, 4.0)
STYLE_SCALE_STEP = 0.05


def legacy_strength(strength: float, extra_text: str | None) -> tuple[float, str]:
    """(the dialog knob's value, the extra-settings text) for a strength that may carry the old meaning (>1):
    that value moves into the extra settings, where it is explicit, and the knob shows fully painted."""
    if strength <= 1.0:
        return strength, extra_text or ""
    try:
        extra = json.loads(extra_text) if (extra_text or "").strip() else {}
    except ValueError:
        return 1.0, extra_text or ""
    if not isinstance(extra, dict):
        return 1.0, extra_text or ""
    extra.setdefault("style_strength", strength)
    return 1.0, json.dumps(extra)


# ------------------------------------------------------------------------------------------------
# previews mixed like the engine: strength in CIELAB (bridge/engine/strength.py), colours in YUV (color.py)
# ------------------------------------------------------------------------------------------------

_WHITE = (0.95047, 1.0, 1.08883)          # D65, as kornia's rgb_to_lab


def _linear(c: float) -> float:
    return c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4


def _gamma(c: float) -> float:
    return 12.92 * c if c <= 0.0031308 else 1.055 * c ** (1 / 2.4) - 0.055


def rgb_to_lab(r: float, g: float, b: float) -> tuple[float, float, float]:
    """sRGB 0..1 -> CIELAB (D65), the formulas kornia uses."""
    r, g, b = _linear(r), _linear(g), _linear(b)
    xyz = (0.412453 * r + 0.357580 * g + 0.180423 * b, 0.212671 * r + 0.715160 * g + 0.072169 * b,
           0.019334 * r + 0.119193 * g + 0.950227 * b)
    f = [v / w for v, w in zip(xyz, _WHITE)]
    f = [v ** (1 / 3) if v > 0.008856 else 7.787 * v + 4 / 29 for v in f]
    return 116 * f[1] - 16, 500 * (f[0] - f[1]), 200 * (f[1] - f[2])


def lab_to_rgb(L: float, a: float, b: float) -> tuple[float, float, float]:  # noqa: N803
    """CIELAB (D65) -> sRGB 0..1, clipped."""
    fy = (L + 16) / 116
    f = (fy + a / 500, fy, fy - b / 200)
    x, y, z = [(v ** 3 if v > 0.2068966 else (v - 4 / 29) / 7.787) * w for v, w in zip(f, _WHITE)]
    rgb = (3.2404813432005266 * x - 1.5371515162713185 * y - 0.4985363261688878 * z,
           -0.9692549499965682 * x + 1.8759900014898907 * y + 0.0415559265582928 * z,
           0.0556466391351772 * x - 0.2040413383665112 * y + 1.0573110696453443 * z)
    return tuple(min(1.0, max(0.0, _gamma(max(0.0, v)))) for v in rgb)      # type: ignore[return-value]


def keep_colors(styled: Sequence[float], photo: Sequence[float]) -> tuple[float, float, float]:
    """The styled pixel's luminance (BT.601 Y) with the photo's chroma, as bridge.engine.color.original_colors."""
    y = 0.299 * styled[0] + 0.587 * styled[1] + 0.114 * styled[2]
    py = 0.299 * photo[0] + 0.587 * photo[1] + 0.114 * photo[2]
    return tuple(min(1.0, max(0.0, c - py + y)) for c in photo)               # type: ignore[return-value]


def mix_pixels(styled: bytes, photo: bytes, channels: int, strength: float, original_colors: bool) -> bytes:
    """The instant preview as the job will look: Original colours first, then ``photo + s * (styled - photo)``
    in CIELAB (s = strength clipped to 0..1), as the engine does it. 8-bit pixels, ``channels`` 3 or 4 (alpha
    is the styled one's); both buffers the same size."""
    s = min(1.0, max(0.0, float(strength)))
    if s >= 1.0 and not original_colors:
        return bytes(styled)
    out = bytearray(styled)
    cache: dict[tuple, tuple] = {}
    for i in range(0, min(len(styled), len(photo)) - channels + 1, channels):
        key = (styled[i], styled[i + 1], styled[i + 2], photo[i], photo[i + 1], photo[i + 2])
        got = cache.get(key)
        if got is None:
            st = tuple(v / 255 for v in key[:3])
            ph = tuple(v / 255 for v in key[3:])
            if original_colors:
                st = keep_colors(st, ph)
            if s < 1.0:
                lp, ls = rgb_to_lab(*ph), rgb_to_lab(*st)
                st = lab_to_rgb(*(p + s * (q - p) for p, q in zip(lp, ls)))
            got = cache[key] = tuple(int(v * 255 + 0.5) for v in st)
        out[i:i + 3] = bytes(got)
    return bytes(out)


# ------------------------------------------------------------------------------------------------
# plain progress words
# ------------------------------------------------------------------------------------------------

def style_title(name: str) -> str:
    """A style's name as words: ``starry_night`` -> ``Starry Night``."""
    words = str(name).replace("_", " ").replace("-", " ").split()
    return " ".join(w[:1].upper() + w[1:] for w in words) or str(name)


def left_text(seconds: float) -> str:
    if seconds < 90:
        return f"about {max(1, round(seconds))} s left"
    if seconds < 90 * 60:
        return f"about {round(seconds / 60)} min left"
    return f"about {seconds / 3600:.1f} h left"


#: The result of a job with regions (= bridge.job.FUSED): its progress is said as one run of every region.
FUSED_NAME = "fused"


def progress_words(status: Mapping[str, Any]) -> str:
    """What the progress window says, in plain words: "Painting style 2 of 3 (Starry Night), about 3 min left"."""
    state = status.get("status") or ""
    if state == "queued":
        pos = status.get("queue_position")
        return ("Waiting for the stylebridge service" + (f" (number {pos} in line)" if pos not in (None, "", 0)
                                                          else "")) + "..."
    if state == "paused":
        return "Paused: the stylebridge service is finishing another picture first..."
    idx, count, name = status.get("style_index"), status.get("style_count"), status.get("style_name")
    if name == FUSED_NAME:                  # regions: every style in its region, one run
        text = "Painting every style in its region"
        if isinstance(idx, int) and isinstance(count, int) and count > 1:
            text += f" (run {idx + 1} of {count})"
        eta = status.get("eta_s")
        if isinstance(eta, (int, float)) and eta >= 0 and state == "running":
            text += ", " + left_text(float(eta))
        return text
    if isinstance(idx, int) and isinstance(count, int) and count > 0:
        text = f"Painting style {idx + 1} of {count}"
    elif state == "running" or name:
        text = "Painting"
    else:
        text = "Getting ready"
    if name:
        text += f" ({style_title(name)})"
    eta = status.get("eta_s")
    if isinstance(eta, (int, float)) and eta >= 0 and state == "running":
        text += ", " + left_text(float(eta))
    return text


# ------------------------------------------------------------------------------------------------
# which layer a run works on, where a re-run lands
# ------------------------------------------------------------------------------------------------

#: Roles of the helper layers one run adds above its group, reused by the next run on the same photo.
HELPER_ROLES = ("detail", "colors", "refine")
RESULT_ROLES = ("group", "style", "blend", "fused", *HELPER_ROLES)      # fused: the regions' one layer (#22)
#: What a run does when the layer chosen is an earlier result group: a new group on top, or that group
#: replaced by the new result, or the new style layers added to it.
RERUN_CHOICES = (("new", "A new result on top"), ("replace", "Replace this result"),
                 ("add", "Add to this result group"))
RERUN_DEFAULT = "new"


def is_result_record(record: Mapping[str, Any] | None, plugin: str) -> bool:
    """A layer made by a Stylebridge run (not the temporary preview)."""
    return bool(record) and record.get("plugin") == plugin and record.get("role") in RESULT_ROLES


def rerun_choice(word: str | None) -> str:
    return word if word in dict(RERUN_CHOICES) else RERUN_DEFAULT


def top_position(source_position: int, earlier: Iterable[int]) -> int:
    """Where the new group (and the live preview) goes among the source layer's siblings (0 = top): above
    the source and above every earlier result beside it."""
    return min([source_position, *earlier])


def helpers_to_skip(existing_roles: Iterable[str], step_roles: Iterable[str | None]) -> set[str]:
    """Helper roles the new stack need not insert because an earlier run left them (reused, not duplicated)."""
    have = set(existing_roles) & set(HELPER_ROLES)
    return {r for r in step_roles if r in have}


def target_words(name: str, why: str | None = None) -> str:
    """The dialog's line naming the layer the run will paint."""
    return f"Painting the layer \u201c{name}\u201d" + (f" ({why})" if why else "")


# ------------------------------------------------------------------------------------------------
# the faithful preview (POST /v1/previews method="faithful"), and the estimate's words
# ------------------------------------------------------------------------------------------------

FAITHFUL = "faithful"
FAITHFUL_METHOD = "gatys"              # what a daemon that made a faithful preview says it used
FAITHFUL_SIZE = 176
FAITHFUL_DROP = ("reveal", "preset", "size", "iterations")


def faithful_settings(job_settings: Mapping[str, Any]) -> dict:
    """The job's own settings for a faithful preview (strength, colours, scale...), minus what only shapes the
    layers or the full run's size: the daemon picks the preview's small size and steps."""
    return {k: v for k, v in job_settings.items() if k not in FAITHFUL_DROP}


def ask_previews(client: Any, content: Any, *, styles: Sequence[str] = (), style_files: Sequence[Any] = (),
                 size: int | None = None, timeout: float | None = None, method: str = "instant",
                 settings: Mapping[str, Any] | None = None) -> list[dict]:
    """``Client.previews`` with a ``method`` and ``settings`` (contracts: faithful previews); a client without
    those arguments (an older sb_client.py) gets the same form fields sent by hand."""
    if method == "instant" and not settings:
        return client.previews(content, styles=styles, style_files=style_files, size=size, timeout=timeout)
    params = inspect.signature(client.previews).parameters
    if "method" in params:
        return client.previews(content, styles=styles, style_files=style_files, size=size, timeout=timeout,
                               method=method, settings=dict(settings) if settings else None)
    import base64
    fields: list[tuple[str, Any]] = [("styles", s) for s in styles]
    if size is not None:
        fields.append(("size", int(size)))
    fields.append(("method", method))
    if settings:
        fields.append(("settings", json.dumps(dict(settings))))
    files = [("content", *sb_client.as_file(content, "content.png"))]
    files += [("style_files", *sb_client.as_file(f, f"style{i + 1}.png")) for i, f in enumerate(style_files)]
    body, ctype = sb_client.encode_multipart(fields, files)
    answer = client.json("POST", "/v1/previews", body=body, content_type=ctype, timeout=timeout)
    out = []
    for item in answer.get("previews", []):
        item = dict(item)
        item["png"] = base64.b64decode(item.pop("png_base64", "") or b"")
        out.append(item)
    return out


def faithful_refused(exc: Exception) -> bool:
    """A daemon without faithful previews (an unknown method or field: 4xx): keep the instant preview."""
    return isinstance(exc, sb_client.DaemonError) and 400 <= exc.status < 500 and exc.status != 429


def quality_words(answer: Mapping[str, Any] | None) -> str | None:
    """What a quality means on this daemon, from its estimate: "512 px, 300 iterations"."""
    if not answer:
        return None
    size, stages = answer.get("working_size"), answer.get("stages")
    try:
        side = max(int(v) for v in size)
        iterations = sum(int(s[1]) for s in stages)
    except (TypeError, ValueError, IndexError):
        return None
    return f"{side} px, {iterations} iterations"


#: The dialog's thumbnail of a style's region: at most this many pixels on its long side.
REGION_THUMB_SIDE = 48


def region_thumb(mask: bytes, width: int, height: int, side: int = REGION_THUMB_SIDE) -> tuple[int, int, bytes]:
    """(w, h, RGB bytes) of a small nearest-neighbour thumbnail of a grey ``width`` x ``height`` mask, white where
    the style goes: cheap for any photo size (one byte slice a row), for a GdkPixbuf in the dialog."""
    if width < 1 or height < 1 or len(mask) < width * height:
        return 1, 1, b"\0\0\0"
    scale = max(width, height) / float(side)
    tw, th = (max(1, round(width / scale)), max(1, round(height / scale))) if scale > 1 else (width, height)
    rows = []
    for y in range(th):
        sy = min(height - 1, int(y * height / th))
        row = mask[sy * width:(sy + 1) * width]
        rows.append(bytes(row[min(width - 1, int(x * width / tw))] for x in range(tw)))
    grey = b"".join(rows)
    return tw, th, bytes(v for g in grey for v in (g, g, g))
