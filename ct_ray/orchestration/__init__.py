"""The orchestration layer: everything that talks to Ray (Train, Tune, Data, tasks) or MLflow.

The core packages (``ct_ray.models``, ``compress``, ``data``, ``training``, ``tracking``, ``evaluation``,
``studies``) are plain PyTorch / numpy / OpenCV and never import this package; the CLI imports it lazily, inside
the command that needs it.
"""
