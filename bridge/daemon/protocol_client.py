"""The daemon's protocol client: the GIMP plug-in's own ``gimp_plugin/stylebridge/sb_client.py``, imported here.

One file, two users: GIMP runs the plug-in folder as it stands (its Python has neither pip packages nor this
package), and the package imports that very file under this name. So the client is standard library only
and every protocol default (URL, port, token variable, protocol version, job states) has its home there.
"""

from __future__ import annotations

import importlib.util
import sys

from ..gimp_install import CLIENT_FILE, plugin_source

_path = plugin_source() / CLIENT_FILE
_spec = importlib.util.spec_from_file_location(__name__, _path)
if _spec is None or _spec.loader is None:      # pragma: no cover - plugin_source checked the file exists
    raise ImportError(f"cannot load the protocol client {_path}")
_module = importlib.util.module_from_spec(_spec)
sys.modules[__name__] = _module                 # dataclasses and pickling look their module up by name
_spec.loader.exec_module(_module)
