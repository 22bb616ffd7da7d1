"""The Photoshop hot folder: ``stylebridge watch DIR`` turns every photo dropped into ``DIR/in`` into
a layered fusion PSD in ``DIR/out`` (originals to ``done/``, failures to ``error/`` with a note).

Modules: :mod:`.claim` (layout, claims, locks, journal), :mod:`.presets` (preset.json, sub-folder
presets, sidecars), :mod:`.inputs` (what a file is, its photo and styles), :mod:`.process` (the engines: in-process or via the daemon),
:mod:`.errors` (failures and their advice), :mod:`.resume` (checkpoints, following a daemon job),
:mod:`.watcher` (completeness check and main loop), :mod:`.command` (the CLI sub-command).
"""
