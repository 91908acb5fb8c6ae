"""Plugin `mlflow`: open-source MLflow 3.x through `MlflowClient` (a server, or a sqlite/file URI).

Everything MLflow-specific lives in this package: the hooks (`api`), the documents MLflow's
entities become (`docs`), bounded HTTP (`http`), transfers through the artifact proxy
(`transfer`), push-down to MLflow's filter syntax (`filters`), the `mlcache://` artifact
repository (`repository`) and the demo. Nothing outside it imports mlflow.
"""

from __future__ import annotations

from .api import MlflowApi

__all__ = ["MlflowApi"]
