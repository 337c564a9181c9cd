"""Serving a registered model over HTTP: `runyard serve MODEL@ALIAS`.

``model`` finds, loads and follows the model; ``app`` is the HTTP side; ``server`` runs it
(``server.serve``). Imports point one way: server -> app -> model.
"""
