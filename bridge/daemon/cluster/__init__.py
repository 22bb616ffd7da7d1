"""Running the daemon's jobs elsewhere: on a Ray cluster (:mod:`bridge.daemon.cluster.ray_runner`, ``serve --ray``).

Nothing here is imported unless ``stylebridge serve --ray`` is given: Ray is an optional extra
(``pip install 'stylebridge[cluster]'``) and the embedded daemon never loads it.
"""
