"""`python -m loomlm.bench rollout`: what an RL trainer's loop costs on the engine side.

On the benchmark model (float32):

- rollout: a GRPO-shaped batch, --prompts prompts of 64 random ids x --samples samples each,
  --new-tokens new tokens (temperature 1, EOS ignored so both do the same work), loomlm
  (`n` samples share the prompt's KV) against transformers `generate` with
  `num_return_sequences` (what TRL's GRPOTrainer runs without vLLM); samples per second of the
  second (warm) run of each, and the ratio;
- weight sync: every weight of the model into the running engine, in process
  (`update_weights_from_tensor` with the checkpoint's Hugging Face-named tensors) and from a
  trainer process over gloo on loopback (`update_weights_from_distributed`); ms and GB/s of
  weights moved, median of --repeats.
"""

from __future__ import annotations

import argparse
import random
import socket
import statistics
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

from . import machine_load
from .bench_model import bench_model_dir

if TYPE_CHECKING:
    from loomlm.runtime import Engine

PROMPT_LEN = 64

TRAINER = textwrap.dedent(
    """
    import sys
    from safetensors.torch import load_file
    from loomlm.runtime.weights import SyncGroup

    port, path = int(sys.argv[1]), sys.argv[2]
    tensors = load_file(path)
    group = SyncGroup("127.0.0.1", port, rank=0, world_size=2, group_name="bench")
    print("joined", flush=True)
    for line in sys.stdin:
        for tensor in tensors.values():
            group.broadcast(tensor)
        print("sent", flush=True)
    group.close()
    """
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--samples", type=int, default=8)
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--skip-transformers", action="store_true")
    parser.add_argument(
        "--deterministic", action="store_true", help="also time the rollout in batch-invariant mode"
    )


def main(args: argparse.Namespace) -> None:
    import torch
    from loomlm.runtime import Engine
    from safetensors.torch import load_file

    model_dir = bench_model_dir()
    rng = random.Random(0)
    prompts = [[rng.randrange(3, 32000) for _ in range(PROMPT_LEN)] for _ in range(args.prompts)]
    samples = args.prompts * args.samples
    print(
        f"model: {model_dir.name}, torch {torch.__version__}, {torch.get_num_threads()} threads; "
        f"{args.prompts} prompts x {args.samples} samples, {PROMPT_LEN}-token prompts, "
        f"{args.new_tokens} new tokens, temperature 1"
    )
    engine = Engine(model_dir, dtype="float32", skip_tokenizer_init=True)
    params = {
        "n": args.samples, "temperature": 1.0, "max_new_tokens": args.new_tokens,
        "min_new_tokens": args.new_tokens, "ignore_eos": True, "seed": 1,
    }  # fmt: skip
    ours = []
    for _ in range(2):
        engine.flush_cache()
        before = machine_load.sample()
        start = time.perf_counter()
        engine.generate(input_ids=prompts, sampling_params=params)
        ours.append(time.perf_counter() - start)
        load = machine_load.describe(before, machine_load.sample())
    print(
        f"loomlm rollout: {samples / ours[1]:.2f} samples/s warm ({ours[1]:.1f} s; first {ours[0]:.1f} s; {load})"
    )
    if args.deterministic:
        twin = Engine(model_dir, dtype="float32", skip_tokenizer_init=True, deterministic=True)
        times = []
        for _ in range(2):
            twin.flush_cache()
            start = time.perf_counter()
            twin.generate(input_ids=prompts, sampling_params=params)
            times.append(time.perf_counter() - start)
        twin.shutdown()
        print(
            f"loomlm rollout, deterministic=True: {samples / times[1]:.2f} samples/s warm "
            f"({times[1] / ours[1]:.2f}x the default mode's time)"
        )
    if not args.skip_transformers:
        theirs = _transformers_rollout(model_dir, prompts, args)
        print(f"transformers generate: {samples / theirs:.2f} samples/s warm ({theirs:.1f} s)")
        print(f"loomlm / transformers: {theirs / ours[1]:.2f}x")

    tensors = load_file(str(model_dir / "model.safetensors"))
    nbytes = sum(t.numel() * 4 for t in tensors.values())  # moved as the engine's float32
    times = []
    for i in range(args.repeats):
        start = time.perf_counter()
        engine.update_weights_from_tensor(tensors, weight_version=f"bench-{i}")
        times.append(time.perf_counter() - start)
    _report("in process (update_weights_from_tensor)", times, nbytes)
    times = _gloo_sync(engine, model_dir, tensors, args.repeats)
    _report("trainer process over gloo (update_weights_from_distributed)", times, nbytes)
    engine.shutdown()


def _report(what: str, times: list[float], nbytes: int) -> None:
    median = statistics.median(times)
    print(
        f"weight sync, {what}: {median * 1e3:.0f} ms for {nbytes / 1e6:.0f} MB "
        f"({nbytes / median / 1e9:.2f} GB/s; runs {', '.join(f'{t * 1e3:.0f}' for t in times)} ms)"
    )


def _transformers_rollout(
    model_dir: Path, prompts: list[list[int]], args: argparse.Namespace
) -> float:
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    ids = torch.tensor(prompts)
    times = []
    for _ in range(2):
        torch.manual_seed(0)
        start = time.perf_counter()
        with torch.inference_mode():
            model.generate(
                input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=True,
                temperature=1.0, top_k=0, num_return_sequences=args.samples,
                max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens,
                eos_token_id=None, pad_token_id=0,
            )  # fmt: skip
        times.append(time.perf_counter() - start)
    return times[1]


def _receive(
    engine: Engine,
    names: list[str],
    dtypes: list[str],
    shapes: list[list[int]],
    i: int,
    done: dict[str, float],
) -> None:
    engine.update_weights_from_distributed(
        names, dtypes, shapes, "bench", weight_version=f"gloo-{i}"
    )
    done["end"] = time.perf_counter()


def _gloo_sync(engine: Engine, model_dir: Path, tensors: dict, repeats: int) -> list[float]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    proc = subprocess.Popen(
        [sys.executable, "-c", TRAINER, str(port), str(model_dir / "model.safetensors")],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdin is not None and proc.stdout is not None
    try:
        engine.init_weights_update_group("127.0.0.1", port, 1, 2, "bench", "gloo")
        assert proc.stdout.readline().strip() == "joined"
        names = list(tensors)
        dtypes = [str(t.dtype).removeprefix("torch.") for t in tensors.values()]
        shapes = [list(t.shape) for t in tensors.values()]
        times = []
        for i in range(repeats):
            done: dict[str, float] = {}
            thread = threading.Thread(
                target=_receive, args=(engine, names, dtypes, shapes, i, done)
            )
            start = time.perf_counter()
            thread.start()
            proc.stdin.write("go\n")
            proc.stdin.flush()
            thread.join()
            assert proc.stdout.readline().strip() == "sent"
            times.append(done["end"] - start)
        engine.destroy_weights_update_group("bench")
        return times
    finally:
        proc.stdin.close()
        proc.wait(30)
