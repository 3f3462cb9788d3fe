"""The model's forward step as one compiled graph (CPU), or op by op.

On CPU the whole forward — embedding, every layer's norms, RoPE, SiLU-mul and residual adds,
the final norm — is compiled by torch inductor into fused C++ loops around the opaque calls
it cannot fuse (the packed matrix products and attention, see packed_linear.py and
attention/op.py). The number of tokens is the graph's one dynamic size, so one graph serves
every step of two or more tokens without padding to a bucket, and a second one single-token
steps (inductor specialises a size of 1); both are compiled in `warm_up`, before serving.
Marking the size unbacked would give one graph for both and halve the compile, but measured
slower (batch-1 decode 32.0 against 35.0 tok/s, batch 32 338 against 375). Inductor caches
compiled graphs on disk, so a later process on the same machine loads them instead of
compiling again.

Each engine compiles through a code object of its own, with dynamo's guards on the model's
modules and parameters turned off. Those guards (one per parameter and module attribute, ~1,400
on the benchmark model) were checked before every step: 0.43 ms a call on the benchmark
machine, against 0.07 ms without them, and a batch-1 bfloat16 forward measured 0.2-0.25 ms
(~3%) faster with them off, in one process, alternating. They are safe to skip because nothing
replaces an engine's modules after start-up (weights change only in place) and, with the code
object its own, no other engine's graphs are looked up for it: a second engine of the same
shape in a process traces its graphs again (inductor's cache still serves the compiled code).

Elsewhere (GPU: issue "GPU executor"; `enforce_eager`; LOOMLM_ENFORCE_EAGER=1, which the
test suite sets so that only the tests of the compiled path pay for compiling;
LOOMLM_DISABLE_COMPILE=1), or when compiling fails (no C++ compiler), the step runs op by op,
with one warning for a failure.
"""

from __future__ import annotations

import logging
import os
import time
import types
from collections.abc import Callable

import torch
import torch._dynamo.config as dynamo_config

from .cpu_kernels import build
from .models.llama import LlamaForCausalLM

logger = logging.getLogger("loomlm.engine")

Forward = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def _own_forward(model: LlamaForCausalLM) -> Forward:
    """`model.forward` bound through a copy of its code object: dynamo keeps its compiled
    graphs per code object, so this engine's are never tried for another engine's model."""
    func = type(model).forward
    code = func.__code__.replace()
    own = types.FunctionType(
        code, func.__globals__, func.__name__, func.__defaults__, func.__closure__
    )
    return types.MethodType(own, model)


class ModelStep:
    """`step(input_ids, positions, keep) -> hidden of the rows keep`, compiled where that is
    possible."""

    def __init__(self, model: LlamaForCausalLM, device: torch.device, enforce_eager: bool):
        self.model = model
        self._eager: Forward = model.forward
        self._compiled: Forward | None = None
        enforce_eager = enforce_eager or os.environ.get("LOOMLM_ENFORCE_EAGER", "") not in ("", "0")
        if device.type == "cpu" and not enforce_eager and not build.disabled():
            # A float attribute (RMSNorm's eps) would otherwise be a symbolic graph input
            # that the tensorify pass specialises after the fact, which makes dynamo trace the
            # first graph twice and miss the AOT cache once: 13 s of a warm start, now 7 s.
            # (torch's own default until 2.6; other compiled code in the process recompiles
            # when a float it passes changes, instead of reading it as a tensor.)
            dynamo_config.specialize_float = True
            self._compiled = torch.compile(
                _own_forward(model),  # guards skipped: see the module's docstring
                dynamic=True,
                options={"guard_filter_fn": torch.compiler.skip_guard_on_all_nn_modules_unsafe},
            )

    @property
    def compiled(self) -> bool:
        return self._compiled is not None

    def __call__(
        self, input_ids: torch.Tensor, positions: torch.Tensor, keep: torch.Tensor
    ) -> torch.Tensor:
        if self._compiled is not None:
            # The number of kept rows is 1 in most prefills and the whole batch in decodes:
            # an unbacked size keeps both in one graph (a size of 1 would otherwise be
            # specialised into a graph of its own, compiled while serving).
            torch._dynamo.decorators.mark_unbacked(keep, 0)
            return self._compiled(input_ids, positions, keep)
        return self._eager(input_ids, positions, keep)

    def warm_up(self, run: Callable[[int], None]) -> None:
        """Compile the graphs now: `run(n)` runs one forward of n tokens through this step.
        A compile error (no C++ compiler, an unsupported op) switches to the eager path."""
        if self._compiled is None:
            return
        start = time.perf_counter()
        logger.info("compiling the forward step (a first start on a machine takes ~30 s)")
        try:
            for tokens in (2, 1):  # the graph for two tokens or more, the one for a single token
                run(tokens)
        except Exception as exc:  # inductor's errors have no common base class
            logger.warning("compiled forward unavailable, running op by op: %s", exc)
            self._compiled = None
            return
        logger.info("forward step compiled in %.1f s", time.perf_counter() - start)
