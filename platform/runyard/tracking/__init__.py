"""MLflow: run lifecycle, rank-zero epoch logging, lineage tags and the model registry."""

import sys
from types import ModuleType


def mlflow_pytorch() -> ModuleType:
    """``mlflow.pytorch``, imported without its Lightning autologging.

    On import, mlflow.pytorch loads its autologging module, which imports the standalone
    ``pytorch_lightning`` package (a second copy of Lightning next to ``lightning``): 4-5 s
    of a 2-core machine in every command that logs or loads a model. runyard does not
    autolog, and mlflow skips that module when the import fails, so the import is made
    to fail for that moment only.
    """
    if "mlflow.pytorch" in sys.modules or "pytorch_lightning" in sys.modules:
        import mlflow.pytorch

        return mlflow.pytorch
    sys.modules["pytorch_lightning"] = None  # type: ignore[assignment]  # "import" raises ImportError
    try:
        import mlflow.pytorch
    finally:
        del sys.modules["pytorch_lightning"]
    return mlflow.pytorch
