"""The local daemon: ``stylebridge serve`` puts the engine behind an HTTP API on loopback
(docs/protocol.md) for the GIMP plug-in and the hot folder; ``stylebridge status`` checks it.

Modules: ``command`` (CLI), ``app`` (assembles the FastAPI app), ``routes`` (health, styles, jobs, previews:
one module per resource), ``context`` (the config and shared state routes receive), ``web`` (errors, JSON,
uploads), ``jobs`` (queue, worker, results), ``previews`` (quick previews beside the queue), ``library``
(style images on disk), ``security`` (token, Origin/Host, limits), ``client`` (the protocol's client, :mod:`bridge.protocol`, plus a PSD download).
"""
