"""The core layer (models, compression, losses, crops, tracker, data formats, metrics, train step) imports neither
Ray nor MLflow: a researcher reads and runs it without them."""
import subprocess
import sys

CORE = ["ct_ray.models", "ct_ray.compress", "ct_ray.losses", "ct_ray.crop", "ct_ray.boxes", "ct_ray.tracking",
        "ct_ray.profile", "ct_ray.data", "ct_ray.data.synth", "ct_ray.data.pairs", "ct_ray.data.shards",
        "ct_ray.data.augment", "ct_ray.evaluation.metrics", "ct_ray.evaluation.results", "ct_ray.evaluation.runner",
        "ct_ray.train.config", "ct_ray.train.step", "ct_ray.train.state", "ct_ray.config"]


def test_core_modules_import_neither_ray_nor_mlflow():
    code = "import sys\n" + "".join(f"import {m}\n" for m in CORE) + \
        "print(sorted(m for m in ('ray', 'mlflow') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
