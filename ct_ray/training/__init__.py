"""Training as plain PyTorch: the typed experiment config, one optimisation step for every kind of run, and the
training checkpoint. The Ray Train worker loop that drives them is ``ct_ray.orchestration.train_worker``."""
