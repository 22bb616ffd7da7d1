"""The local daemon: ``stylebridge serve`` puts the engine behind an HTTP API on loopback
(docs/protocol.md) for the GIMP plug-in and the hot folder; ``stylebridge status`` checks it.

Modules: ``command`` (CLI), ``app`` (FastAPI routes), ``jobs`` (queue, worker, results),
``library`` (style images on disk), ``security`` (token, Origin/Host, limits), ``client``.
"""
