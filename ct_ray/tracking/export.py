"""ONNX export of a tracker's network forward (the ``export`` extra: ``pip install 'ct-ray[export]'``).

The graph is ``(template, search) -> (pred_boxes, score_map, size_map, offset_map)`` at batch 1, with the input
sizes of the model's config; inputs are normalised float crops as ``OneStreamTracker.forward`` takes them. The crop,
the Hann window and the decode back to image coordinates stay in ``ct_ray.tracking`` (host side).
"""
from __future__ import annotations

import inspect
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ct_ray.errors import UserError
from ct_ray.fileio import atomic_path
from ct_ray.models.one_stream import OneStreamTracker

INPUT_NAMES = ("template", "search")
OUTPUT_NAMES = ("pred_boxes", "score_map", "size_map", "offset_map")
EXTRA_HINT = "install the export extra: pip install 'ct-ray[export]'"
DEFAULT_TOLERANCE = 1e-4


class ExportUnavailableError(UserError, RuntimeError):
    """The ``onnx`` package (the ``export`` extra) is not installed."""


class _ForwardOutputs(nn.Module):
    """The tracker's forward with its dict output as a tuple in ``OUTPUT_NAMES`` order (what ONNX needs)."""

    def __init__(self, model: OneStreamTracker) -> None:
        super().__init__()
        self.model = model

    def forward(self, template: torch.Tensor, search: torch.Tensor) -> tuple[torch.Tensor, ...]:
        outputs = self.model(template, search)
        return tuple(outputs[name] for name in OUTPUT_NAMES)


def example_inputs(model: OneStreamTracker, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Random batch-1 template and search crops of the model's sizes."""
    generator = torch.Generator().manual_seed(seed)
    config = model.config
    return (torch.randn(1, 3, config.template_size, config.template_size, generator=generator),
            torch.randn(1, 3, config.search_size, config.search_size, generator=generator))


def _require_onnx():
    try:
        import onnx
    except ImportError:
        raise ExportUnavailableError(EXTRA_HINT) from None
    return onnx


def _export(module: nn.Module, model: OneStreamTracker, inputs: tuple, names: list[str], outputs: list[str],
            path: Path, opset: int) -> None:
    """``torch.onnx.export`` of ``module`` (the TorchScript exporter: no onnxscript dependency, one self-contained
    file). The fused attention kernel is exported when the exporter accepts it; otherwise the exact-math attention
    path of ``model`` (``set_fused_attention(False)``, same numbers) is exported instead."""
    options = {"dynamo": False} if "dynamo" in inspect.signature(torch.onnx.export).parameters else {}

    def run() -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(module, inputs, str(path), input_names=names, output_names=outputs,
                              opset_version=opset, do_constant_folding=True, **options)

    fused = [getattr(block.attn, "fused_attn", None) for block in model.blocks]
    try:
        run()
    except Exception:  # noqa: BLE001  (any exporter failure: retry on the exact-math attention path)
        model.set_fused_attention(False)
        try:
            run()
        finally:
            for block, flag in zip(model.blocks, fused):
                if flag is not None:
                    block.attn.fused_attn = flag


def export_onnx(model: OneStreamTracker, path: str | Path, opset: int = 17) -> Path:
    """Writes the ONNX graph of ``model``'s forward to ``path`` (atomically) and checks it with ``onnx.checker``.

    The model ends on the CPU in eval mode."""
    onnx = _require_onnx()
    model = model.cpu().eval()
    wrapper = _ForwardOutputs(model).eval()
    inputs = example_inputs(model)
    path = Path(path)
    with atomic_path(path) as tmp:
        _export(wrapper, model, inputs, list(INPUT_NAMES), list(OUTPUT_NAMES), tmp, opset)
        onnx.checker.check_model(str(tmp))
    return path


class _TemplateGraph(nn.Module):
    def __init__(self, model: OneStreamTracker) -> None:
        super().__init__()
        self.model = model

    def forward(self, template: torch.Tensor) -> torch.Tensor:
        return self.model.embed_template(template)


class _SearchGraph(nn.Module):
    def __init__(self, model: OneStreamTracker) -> None:
        super().__init__()
        self.model = model

    def forward(self, template_tokens: torch.Tensor, search: torch.Tensor) -> tuple[torch.Tensor, ...]:
        out = self.model.forward_with_template_tokens(template_tokens, search)
        return out["score_map"], out["size_map"], out["offset_map"]


def export_tracking_graphs(model: OneStreamTracker, folder: str | Path, int8: bool = False,
                           opset: int = 17) -> tuple[Path, Path]:
    """The two graphs the online tracker runs on ONNX Runtime: ``template.onnx`` (template crop -> template tokens,
    once per sequence) and ``search.onnx`` (template tokens and search crop -> score, size and offset maps, every
    frame), with the model's crop sizes; with ``int8`` the search graph's weights are quantised (dynamic int8).
    Written atomically into ``folder`` and reused when already there."""
    onnx = _require_onnx()
    folder = Path(folder)
    template_path, search_path = folder / "template.onnx", folder / ("search_int8.onnx" if int8 else "search.onnx")
    if template_path.is_file() and search_path.is_file():
        return template_path, search_path
    model = model.cpu().eval()
    template, search = example_inputs(model)
    with torch.inference_mode():
        tokens = model.embed_template(template)
    for module, inputs, names, outputs, path in (
            (_TemplateGraph(model).eval(), (template,), ["template"], ["template_tokens"], template_path),
            (_SearchGraph(model).eval(), (tokens.clone(), search), ["template_tokens", "search"],
             ["score_map", "size_map", "offset_map"], folder / "search.onnx")):
        if path.is_file():
            continue
        with atomic_path(path) as tmp:
            _export(module, model, inputs, names, outputs, tmp, opset)
            onnx.checker.check_model(str(tmp))
    if int8 and not search_path.is_file():
        try:
            from onnxruntime.quantization import QuantType, quantize_dynamic
        except ImportError:
            raise ExportUnavailableError(EXTRA_HINT) from None
        import logging

        root = logging.getLogger()
        level = root.level
        root.setLevel(logging.ERROR)  # the quantiser's advice to pre-process, logged on the root logger
        try:
            with atomic_path(search_path) as tmp:
                quantize_dynamic(str(folder / "search.onnx"), str(tmp), weight_type=QuantType.QInt8)
        finally:
            root.setLevel(level)
    return template_path, search_path


@dataclass(frozen=True)
class OnnxCheck:
    max_abs_diff: float
    per_output: dict[str, float]
    tolerance: float

    @property
    def passed(self) -> bool:
        return self.max_abs_diff <= self.tolerance


def onnxruntime_available() -> bool:
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


def check_onnx(model: OneStreamTracker, path: str | Path, tolerance: float = DEFAULT_TOLERANCE,
               seed: int = 1) -> OnnxCheck:
    """Runs the PyTorch model and the ONNX file (onnxruntime, CPU) on the same random inputs (another seed than the
    export's) and returns the largest absolute difference of each output."""
    import onnxruntime

    model = model.cpu().eval()
    template, search = example_inputs(model, seed)
    with torch.inference_mode():
        expected = _ForwardOutputs(model).eval()(template, search)
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(list(OUTPUT_NAMES), {"template": template.numpy(), "search": search.numpy()})
    per_output = {name: float(abs(torch.from_numpy(g) - e).max()) for name, g, e in zip(OUTPUT_NAMES, got, expected)}
    return OnnxCheck(max(per_output.values()), per_output, tolerance)
