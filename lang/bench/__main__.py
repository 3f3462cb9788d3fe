"""Benchmarks: `python -m loomlm.bench {programs,offline,radix,constrained,serving,load,kernels,
steps,decode,attention,extend,rollout,rlstep} --help`.

With no sub-command (or only options) it runs `programs`, as it always has.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from importlib import import_module

# sub-command -> (module, help). Modules are imported only when chosen: `programs` needs no
# torch until it builds an engine, and the others pull in their own peers.
BENCHMARKS: dict[str, tuple[str, str]] = {
    "programs": ("programs", "the SGLang paper's program workloads: run_batch vs sequential calls"),
    "offline": ("offline", "loomlm vs transformers (and vLLM), offline"),
    "radix": ("radix", "prefix cache on vs off, chunked prefill on vs off"),
    "constrained": ("constrained", "constrained decoding vs llguidance, xgrammar, outlines"),
    "serving": ("serving", "loomlm serve at several concurrencies vs the offline engine"),
    "load": ("load_test", "load test: concurrent streaming clients, outputs checked"),
    "kernels": ("linear_kernels", "linear-layer kernels: weight-streaming speed vs the roofline"),
    "steps": ("step_split", "where a decode step's time goes, at batch 1, 8 and 32"),
    "decode": ("decode_sweep", "decode sweep: loomlm vs transformers, vLLM, llama.cpp, f32/bf16"),
    "attention": ("attention_kernel", "decode attention over the paged pool vs memory bandwidth"),
    "extend": ("extend_attention", "prompt attention over the paged pool: C++ kernel vs SDPA"),
    "rollout": ("rollout", "RL: GRPO-shaped rollout vs transformers, weight-sync time"),
    "rlstep": ("rl_step", "RL: one GRPO step (rollout / sync / train), loomlm vs TRL GRPOTrainer"),
    "quant": ("quantization", "int8 weights: decode speed, memory, perplexity vs unquantized"),
}


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or (argv[0].startswith("-") and argv[0] not in ("-h", "--help")):
        argv = ["programs", *argv]
    parser = argparse.ArgumentParser(prog="python -m loomlm.bench")
    sub = parser.add_subparsers(dest="command", required=True)
    runners: dict[str, Callable[[argparse.Namespace], None]] = {}
    chosen = argv[0]
    for name, (module_name, help_text) in BENCHMARKS.items():
        command = sub.add_parser(name, help=help_text)
        if name == chosen:
            module = import_module(f"{__package__}.{module_name}")
            module.add_arguments(command)
            runners[name] = module.main
    args = parser.parse_args(argv)
    runners[args.command](args)


if __name__ == "__main__":
    main()
