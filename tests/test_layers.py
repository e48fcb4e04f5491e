"""The layers are the folders: every module outside ``ct_ray.orchestration`` and ``ct_ray.cli`` is plain PyTorch /
numpy / OpenCV and imports neither Ray nor MLflow, and the command line answers ``--help`` without loading torch."""
import pkgutil
import re
import subprocess
import sys
from pathlib import Path

import ct_ray

PACKAGE = Path(ct_ray.__file__).parent
ORCHESTRATION = ("ct_ray.orchestration", "ct_ray.cli")
IMPORTS_RAY_OR_MLFLOW = re.compile(r"^\s*(import|from)\s+(ray|mlflow)\b", re.MULTILINE)


def core_modules() -> list[str]:
    names = [info.name for info in pkgutil.walk_packages([str(PACKAGE)], prefix="ct_ray.")]
    return sorted(["ct_ray", *(n for n in names if not n.startswith(ORCHESTRATION))])


def test_every_core_module_imports_neither_ray_nor_mlflow():
    modules = core_modules()
    assert {"ct_ray.models.one_stream", "ct_ray.compress.replacement", "ct_ray.training.step", "ct_ray.data.synth",
            "ct_ray.evaluation.metrics", "ct_ray.studies.paired_stats", "ct_ray.tracking.online"} <= set(modules)
    code = "import sys\n" + "".join(f"import {m}\n" for m in modules) + \
        "print(sorted(m for m in ('ray', 'mlflow') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
    for path in PACKAGE.rglob("*.py"):
        relative = path.relative_to(PACKAGE.parent).with_suffix("")
        name = ".".join(relative.parts).removesuffix(".__init__")
        if not name.startswith(ORCHESTRATION):
            assert not IMPORTS_RAY_OR_MLFLOW.search(path.read_text()), f"{name} imports Ray or MLflow"


def test_module_names_are_unique_and_none_shadows_the_standard_library():
    stems = [p.stem for p in PACKAGE.rglob("*.py") if p.stem != "__init__"]
    assert len(stems) == len(set(stems)), sorted(s for s in stems if stems.count(s) > 1)
    assert not set(stems) & set(sys.stdlib_module_names)


def test_the_command_line_parses_without_torch_ray_or_mlflow():
    code = ("import sys\nfrom ct_ray.cli import build_parser\nbuild_parser()\n"
            "print(sorted(m for m in ('torch', 'ray', 'mlflow', 'timm', 'cv2') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
