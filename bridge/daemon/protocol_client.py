"""Old name of :mod:`bridge.protocol`, kept while the front ends move over (the same module object)."""

from __future__ import annotations

import sys

from .. import protocol

sys.modules[__name__] = protocol
