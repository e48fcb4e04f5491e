"""The MLflow model code of a logged tracker ("models from code"): MLflow runs this file when it loads the model."""
import mlflow

from ct_ray.orchestration.mlflow_model import TrackerModel

mlflow.models.set_model(TrackerModel())
