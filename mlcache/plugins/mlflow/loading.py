"""Loading an MLflow model from a folder, as an air-gapped serving job would (`selftest` uses it)."""

from __future__ import annotations

import gc
from pathlib import Path


def model_flavors(path: Path) -> list[str]:
    """The flavors an `MLmodel` file in `path` declares."""
    from mlflow.models import Model

    return sorted(Model.load(str(path / "MLmodel")).flavors)


def load_pyfunc(path: Path) -> None:
    """Load the model with `mlflow.pyfunc.load_model` (raising what it raises), then let it go."""
    import mlflow.pyfunc

    loaded = mlflow.pyfunc.load_model(str(path))
    del loaded
    gc.collect()
