"""What each `runyard` verb does: one module per command, called by ``runyard.cli``.

The DVC stages (prepare, train, evaluate, register, tune) each validate everything
they read before they start work, write their outputs atomically, and leave the
MLflow run they touch in a final state.
"""
