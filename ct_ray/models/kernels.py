"""Which floating-point kernels this process trains with: the SHA-256 of one small fixed training step.

Two machines train to the same bits only when their kernels agree, and what a run records of its hardware (the CPU
model, PyTorch's vector capability, the kernel environment variables) does not say whether they do: oneMKL, which
runs the linear layers and the attention products on the CPU, takes other code paths on Intel CPUs than on AMD ones
with the same instructions, whatever ``MKL_ENABLE_INSTRUCTIONS`` says. So a run also records this digest: the
forward pass and the gradients of a tiny one-stream tracker (patch embedding, attention blocks, center head: the
operations a training step runs), built and fed from a fixed seed. Equal digests: the kernels compute the same bits;
unequal ones: a result may move by a seed's spread through floating point alone.
"""
from __future__ import annotations

import hashlib

import torch

from ct_ray.models.one_stream import OneStreamTracker, TrackerConfig

PROBE = TrackerConfig(embed_dim=64, depth=2, num_heads=4, patch_size=16, template_size=64, search_size=128,
                      head_channels=32)
"""The probe's tracker: the `small` preset's block shape, two blocks."""


def kernels_digest(threads: int | None = None) -> str:
    """SHA-256 of the outputs and gradients of one forward and backward pass of ``PROBE`` on the CPU with this
    process's kernels and ``threads`` torch threads (default: the process's; the thread count changes the bits
    too). Leaves the global random state and the thread count as they were."""
    threads = torch.get_num_threads() if threads is None else threads
    if threads < 1:
        raise ValueError(f"threads must be at least 1, got {threads}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = OneStreamTracker(PROBE)
        template = torch.rand(2, 3, PROBE.template_size, PROBE.template_size)
        search = torch.rand(2, 3, PROBE.search_size, PROBE.search_size)
    model.train()
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        outputs = model(template, search)
        loss = sum(value.float().square().mean() for value in outputs.values())
        loss.backward()
    finally:
        torch.set_num_threads(before)
    digest = hashlib.sha256()
    tensors = [outputs[key] for key in sorted(outputs)] + [p.grad for _, p in sorted(model.named_parameters())
                                                           if p.grad is not None]
    for tensor in tensors:
        digest.update(tensor.detach().float().contiguous().numpy().tobytes())
    return digest.hexdigest()
