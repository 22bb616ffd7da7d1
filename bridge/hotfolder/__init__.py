"""The Photoshop hot folder: ``stylebridge watch DIR`` turns every photo dropped into ``DIR/in`` into
a layered fusion PSD in ``DIR/out`` (originals to ``done/``, failures to ``error/`` with a note).

Modules: :mod:`.watcher` (the main loop), :mod:`.stability` (when a dropped file is complete),
:mod:`.layout` (the folders, which names are inputs), :mod:`.claim` (claims, per-job locks, recovery),
:mod:`.journal` (the journal and its replay), :mod:`.settle` (publishing to out/, originals to done/ or
error/), :mod:`.diskwait` (the disk-full policy), :mod:`.report` (the terminal lines), :mod:`.presets`
(preset.json, sub-folder presets, sidecars), :mod:`.inputs` (what a file is, its photo and styles),
:mod:`.process` (the engines: in-process or via the daemon), :mod:`.errors` (failures and their advice),
:mod:`.resume` (checkpoints, following a daemon job), :mod:`.command` (the CLI sub-command).
"""
