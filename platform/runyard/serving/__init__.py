"""Serving a registered model over HTTP: `runyard serve MODEL@ALIAS` (``server.serve``; HTTP in ``app``)."""
