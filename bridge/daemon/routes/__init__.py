"""The daemon's routes, one module per resource; :func:`bridge.daemon.app.create_app` includes them."""
