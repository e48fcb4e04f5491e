"""Where the tracker's network runs: PyTorch eager, ``torch.compile``, or ONNX Runtime (CPU, CUDA or TensorRT
provider), chosen by one name (``--runtime torch|compile|onnxruntime``, the ``runtime`` key in configs; ``int8``
quantises the ONNX graph's weights).

Only the network call changes. The online tracker (``ct_ray.tracking.online``) keeps the crop, the normalisation,
the Hann window, the decode and the map back as shared host code, and asks the runtime for two things: the template
tokens of a template crop (once per sequence) and the head's maps for a search crop given those tokens (every
frame). For ONNX Runtime these are two graphs exported from the model (``ct_ray.tracking.export``):
:func:`prepare_runtime` exports them once (cached by the weights' digest) and holds their bytes, so that parallel
tracking tasks on any node open the same graphs without exporting again.
"""
from __future__ import annotations

import copy
import hashlib
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import torch
from torch import nn

from ct_ray.errors import UserError

RUNTIMES = ("torch", "compile", "onnxruntime")
PROVIDERS = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider", "tensorrt": "TensorrtExecutionProvider"}
INSTALL_HINT = ("pip install 'ct-ray[export]' (onnx, onnxruntime); for the CUDA and TensorRT providers install "
                "onnxruntime-gpu instead of onnxruntime")


class RuntimeUnavailableError(UserError, RuntimeError):
    """A runtime or provider that is not installed or cannot load, or graphs that do not fit the model; the
    message names the runtime and says how to install it."""


class NetworkRuntime(Protocol):
    """The tracker network behind the online tracker; ``device`` is where its input crops are expected."""

    label: str
    device: torch.device

    def embed_template(self, template: torch.Tensor) -> torch.Tensor: ...

    def track(self, template_tokens: torch.Tensor, search: torch.Tensor) -> dict[str, torch.Tensor]: ...


@dataclass(frozen=True)
class RuntimeSpec:
    """A runtime by name: ``torch``, ``compile`` or ``onnxruntime``; for ONNX Runtime the provider (``cpu``,
    ``cuda``, ``tensorrt``) and whether the search graph's weights are quantised to int8 (dynamic quantisation)."""

    name: str = "torch"
    provider: str = "cpu"
    int8: bool = False

    def __post_init__(self) -> None:
        if self.name not in RUNTIMES:
            raise RuntimeUnavailableError(f"runtime {self.name!r} is not one of {', '.join(RUNTIMES)}")
        if self.provider not in PROVIDERS:
            raise RuntimeUnavailableError(f"ONNX Runtime provider {self.provider!r} is not one of "
                                          f"{', '.join(PROVIDERS)}")
        if self.int8 and self.name != "onnxruntime":
            raise RuntimeUnavailableError("int8 quantisation is an ONNX graph option: it needs --runtime onnxruntime")
        if self.provider != "cpu" and self.name != "onnxruntime":
            raise RuntimeUnavailableError(f"provider {self.provider!r} is an ONNX Runtime option: it needs "
                                          "--runtime onnxruntime")

    @classmethod
    def parse(cls, text: str) -> "RuntimeSpec":
        """``torch``, ``compile``, ``onnxruntime``, ``onnxruntime-cuda``, ``onnxruntime-cpu-int8`` (a ``label``)."""
        name, *options = str(text).split("-")
        provider, int8 = "cpu", False
        for option in options:
            if option == "int8":
                int8 = True
            else:
                provider = option
        return cls(name, provider, int8)

    @property
    def label(self) -> str:
        """``torch``, ``compile`` or ``onnxruntime-<provider>[-int8]``: names result folders and metrics."""
        if self.name != "onnxruntime":
            return self.name
        return f"onnxruntime-{self.provider}{'-int8' if self.int8 else ''}"

    @property
    def metric_label(self) -> str:
        return self.label.replace("-", "_")


class TorchRuntime:
    """PyTorch eager: the model's own methods (the online tracker runs them under ``inference_mode``)."""

    label = "torch"

    def __init__(self, model: nn.Module, device: str | torch.device = "cpu") -> None:
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()

    def embed_template(self, template: torch.Tensor) -> torch.Tensor:
        return self.model.embed_template(template)

    def track(self, template_tokens: torch.Tensor, search: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.model.forward_with_template_tokens(template_tokens, search)


class CompiledRuntime(TorchRuntime):
    """``torch.compile`` of the per-frame network call (the template embedding runs eager, once per sequence). The
    first frame pays the compilation (tens of seconds on a CPU); the profiles time the loop after their warm-up."""

    label = "compile"

    def __init__(self, model: nn.Module, device: str | torch.device = "cpu") -> None:
        super().__init__(model, device)
        self._track = torch.compile(self.model.forward_with_template_tokens, dynamic=False)
        self._checked = False

    def track(self, template_tokens: torch.Tensor, search: torch.Tensor) -> dict[str, torch.Tensor]:
        if self._checked:
            return self._track(template_tokens, search)
        try:
            out = self._track(template_tokens, search)
        except Exception as exc:  # noqa: BLE001  (the first call compiles: a missing compiler fails here)
            raise RuntimeUnavailableError(f"runtime 'compile': torch.compile failed ({type(exc).__name__}: "
                                          f"{str(exc).splitlines()[0] if str(exc) else ''}); on a CPU it needs a "
                                          "C++ compiler (apt-get install g++), or use --runtime torch") from None
        self._checked = True
        return out


def _onnxruntime():
    try:
        import onnxruntime
    except ImportError:
        raise RuntimeUnavailableError(f"runtime 'onnxruntime' is not installed: {INSTALL_HINT}") from None
    return onnxruntime


def _input_shapes(session) -> dict[str, list]:
    return {arg.name: list(arg.shape) for arg in session.get_inputs()}


class OnnxRuntime:
    """ONNX Runtime on the two tracking graphs (file paths or their bytes) with ``provider``; the crops cross as
    float32 numpy arrays on the host. The graphs' input sizes are checked against ``template_size`` /
    ``search_size`` when given, before any frame is tracked."""

    device = torch.device("cpu")

    def __init__(self, graphs: tuple, provider: str = "cpu", threads: int | None = None, int8: bool = False,
                 template_size: int | None = None, search_size: int | None = None) -> None:
        onnxruntime = _onnxruntime()
        wanted = PROVIDERS[provider]
        available = onnxruntime.get_available_providers()
        if wanted not in available:
            raise RuntimeUnavailableError(f"runtime 'onnxruntime': provider {wanted} is not available here "
                                          f"(available: {', '.join(available)}); {INSTALL_HINT}")
        options = onnxruntime.SessionOptions()
        options.log_severity_level = 3
        if threads:
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
        # No spinning between calls: the host code of the tracking step (crop, window, decode) runs on these cores.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        providers = [wanted] if provider == "cpu" else [wanted, "CPUExecutionProvider"]
        try:
            self.template = onnxruntime.InferenceSession(_graph_source(graphs[0]), options, providers=providers)
            self.search = onnxruntime.InferenceSession(_graph_source(graphs[1]), options, providers=providers)
        except Exception as exc:  # noqa: BLE001  (a provider that fails to load, a corrupt graph)
            raise RuntimeUnavailableError(f"runtime 'onnxruntime' could not load the tracking graphs with {wanted}: "
                                          f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"
                                          ) from None
        if provider != "cpu" and self.search.get_providers()[0] != wanted:
            raise RuntimeUnavailableError(f"runtime 'onnxruntime': provider {wanted} failed to load (the session "
                                          f"fell back to {self.search.get_providers()[0]}); check the CUDA / "
                                          "TensorRT libraries that onnxruntime-gpu needs")
        self._check_sizes(template_size, search_size)
        self.label = RuntimeSpec("onnxruntime", provider, int8).label

    def _check_sizes(self, template_size: int | None, search_size: int | None) -> None:
        got = {**_input_shapes(self.template), **_input_shapes(self.search)}
        for name, size in (("template", template_size), ("search", search_size)):
            if size is None:
                continue
            shape = got.get(name)
            if shape is None or shape[-2:] != [size, size]:
                raise RuntimeUnavailableError(
                    f"runtime 'onnxruntime': the graphs were exported for {name} crops of {shape}, the model takes "
                    f"{size}x{size}; export them again from this checkpoint (ct-ray export --tracking-graphs)")

    def embed_template(self, template: torch.Tensor) -> torch.Tensor:
        (tokens,) = self.template.run(None, {"template": template.detach().float().cpu().numpy()})
        return torch.from_numpy(tokens)

    def track(self, template_tokens: torch.Tensor, search: torch.Tensor) -> dict[str, torch.Tensor]:
        score, size, offset = self.search.run(None, {"template_tokens": template_tokens.numpy(),
                                                     "search": search.detach().float().cpu().numpy()})
        return {"score_map": torch.from_numpy(score), "size_map": torch.from_numpy(size),
                "offset_map": torch.from_numpy(offset)}


def check_installed(spec: RuntimeSpec) -> None:
    """Raises :class:`RuntimeUnavailableError` when ``spec``'s runtime (or provider) is not installed here."""
    if spec.name == "onnxruntime":
        available = _onnxruntime().get_available_providers()
        if PROVIDERS[spec.provider] not in available:
            raise RuntimeUnavailableError(f"runtime 'onnxruntime': provider {PROVIDERS[spec.provider]} is not "
                                          f"available here (available: {', '.join(available)}); {INSTALL_HINT}")


def _graph_source(graph) -> str | bytes:
    return graph if isinstance(graph, bytes) else str(graph)


def weights_key(model: nn.Module) -> str:
    """A digest of the model's config (crop sizes included) and weights: cached graphs (fp32 and int8 side by side
    in one folder) are reused only for exactly these."""
    digest = hashlib.sha256()
    digest.update(repr(sorted(model.config.to_dict().items())).encode())
    for name, value in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(value.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def default_cache() -> Path:
    return Path(os.environ.get("CT_RAY_CACHE", Path(tempfile.gettempdir()) / "ct-ray-cache")) / "onnx"


@dataclass(frozen=True)
class PreparedRuntime:
    """A runtime ready to open anywhere: the spec and, for ONNX Runtime, the two graphs' bytes (picklable, so
    that Ray tasks receive them through the object store)."""

    spec: RuntimeSpec
    graphs: tuple[bytes, bytes] | None = None

    def open(self, model: nn.Module, device: str | torch.device = "cpu",
             threads: int | None = None) -> NetworkRuntime:
        """The runtime for ``model`` on ``device`` (ONNX Runtime: the spec's provider; ``cpu`` becomes ``cuda``
        when ``device`` is a GPU)."""
        spec = self.spec
        if spec.name == "torch":
            return TorchRuntime(model, device)
        if spec.name == "compile":
            return CompiledRuntime(model, device)
        provider = "cuda" if spec.provider == "cpu" and torch.device(device).type == "cuda" else spec.provider
        return OnnxRuntime(self.graphs, provider, threads or torch.get_num_threads(), spec.int8,
                           int(model.config.template_size), int(model.config.search_size))


def graph_files(folder: str | Path, int8: bool = False) -> tuple[Path, Path]:
    """The two tracking graphs in ``folder`` (as ``ct-ray export --tracking-graphs`` writes them)."""
    folder = Path(folder)
    paths = folder / "template.onnx", folder / ("search_int8.onnx" if int8 else "search.onnx")
    for path in paths:
        if not path.is_file():
            raise RuntimeUnavailableError(f"runtime 'onnxruntime': no {path.name} in {folder} (write the graphs with "
                                          f"ct-ray export --tracking-graphs {folder}{' --int8' if int8 else ''})")
    return paths


def prepare_runtime(model: nn.Module, spec: RuntimeSpec | str = "torch", cache: str | Path | None = None,
                    graphs: str | Path | None = None) -> PreparedRuntime:
    """Checks that ``spec`` can run here and, for ONNX Runtime, holds the tracking graphs: those in the folder
    ``graphs`` when given (checked against the model's crop sizes when opened), else the graphs of ``model`` (a copy:
    the model stays where it is) exported once into ``cache`` / <weights digest>, quantised with ``int8``."""
    spec = RuntimeSpec.parse(spec) if isinstance(spec, str) else spec
    if spec.name != "onnxruntime":
        if graphs is not None:
            raise RuntimeUnavailableError(f"graphs are ONNX Runtime's: runtime {spec.name!r} runs the checkpoint")
        return PreparedRuntime(spec)
    _onnxruntime()
    if graphs is not None:
        return PreparedRuntime(spec, tuple(path.read_bytes() for path in graph_files(graphs, spec.int8)))
    from ct_ray.tracking.export import export_tracking_graphs

    folder = Path(cache) if cache else default_cache()
    model_copy = copy.deepcopy(model).cpu().eval()
    paths = export_tracking_graphs(model_copy, folder / weights_key(model_copy), int8=spec.int8)
    return PreparedRuntime(spec, tuple(path.read_bytes() for path in paths))


def build_runtime(model: nn.Module, spec: RuntimeSpec | str = "torch", device: str | torch.device = "cpu",
                  cache: str | Path | None = None, threads: int | None = None) -> NetworkRuntime:
    """:func:`prepare_runtime` then :meth:`PreparedRuntime.open` in this process."""
    return prepare_runtime(model, spec, cache).open(model, device, threads)
