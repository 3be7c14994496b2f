"""Replaying a network's forward pass as a CUDA graph.

The structured-latent flow runs twenty times on one structure per job. Its
forward pass is a thousand small launches; on a slow host CPU, issuing them
takes longer than the GPU takes to run them. A CUDA graph records the launches
once and replays them with one call.

:class:`GraphedCall` wraps ``fn(*tensors) -> tensor``: the first call runs
eagerly (filling the structure's caches, compiling kernels, choosing
algorithms), the second captures the graph and replays it, every later call
copies its inputs into the captured input buffers and replays. The returned
tensor is the graph's output buffer: read it before the next call. If capture
fails, the call runs eagerly from then on.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import torch
from torch import Tensor

log = logging.getLogger(__name__)


class GraphedCall:
    """``fn`` replayed as a CUDA graph from its second call on (CUDA tensors only)."""

    def __init__(self, fn: Callable[..., Tensor], *, enabled: bool) -> None:
        self.fn = fn
        self.enabled = enabled
        self.calls = 0
        self._graph: torch.cuda.CUDAGraph | None = None
        self._stream: torch.cuda.Stream | None = None
        self._inputs: list[Tensor] = []
        self._output: Tensor | None = None

    def __call__(self, *inputs: Tensor) -> Tensor:
        self.calls += 1
        if not self.enabled:
            return self.fn(*inputs)
        if self.calls == 1:
            return self._run_on_capture_stream(inputs)
        if self._graph is None:
            try:
                self._capture(inputs)
            except Exception as exc:  # any capture failure means: run eagerly
                log.warning("CUDA graph capture failed (%s: %s); running eagerly",
                            type(exc).__name__, exc)
                self.enabled = False
                self._graph, self._inputs, self._output = None, [], None
                return self.fn(*inputs)
        for buffer, value in zip(self._inputs, inputs, strict=True):
            buffer.copy_(value)
        assert self._graph is not None and self._output is not None
        self._graph.replay()
        return self._output

    def _run_on_capture_stream(self, inputs: tuple[Tensor, ...]) -> Tensor:
        # Warm up on the stream the capture will use (handles, workspaces, caches).
        self._stream = torch.cuda.Stream(device=inputs[0].device)
        current = torch.cuda.current_stream(inputs[0].device)
        self._stream.wait_stream(current)
        with torch.cuda.stream(self._stream):
            out = self.fn(*inputs)
        current.wait_stream(self._stream)
        return out.clone()

    def _capture(self, inputs: tuple[Tensor, ...]) -> None:
        # The low-level calls, unlike ``torch.cuda.graph``, leave the allocator's
        # cache alone (no ``empty_cache`` per job).
        assert self._stream is not None
        self._inputs = [value.clone() for value in inputs]
        graph = torch.cuda.CUDAGraph()
        torch.cuda.synchronize(inputs[0].device)
        with torch.cuda.stream(self._stream):
            graph.capture_begin()
            try:
                self._output = self.fn(*self._inputs)
            finally:
                graph.capture_end()
        torch.cuda.current_stream(inputs[0].device).wait_stream(self._stream)
        self._graph = graph
