"""Studies on the synthetic benchmark as plain Python: designs (presets, arms, ablations), statistics and tables.

``ct_ray.orchestration.study`` runs them (Ray Train runs, evaluations, MLflow).
"""
