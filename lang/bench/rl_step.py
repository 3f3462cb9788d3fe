"""`python -m loomlm.bench rlstep`: one GRPO step split into rollout / sync / train, with loomlm
generating the rollouts, beside TRL's own GRPOTrainer (use_vllm=False: transformers `generate`)
on the same model, batch and lengths (TRL in its own virtualenv, --trl-python, as vLLM is).

The model is the benchmark model's shape (hidden 768, 12 layers, float32) with the built-in
512-token vocabulary and tokenizer; --prompts prompts x --group samples, --new-tokens tokens
each (min_new_tokens forces the length in both), temperature 1, beta 0.02 (a reference model in
both), one optimiser step per batch. loomlm's step is the loop of examples/rlhf/grpo.py:
rollout in the engine, the loss and Adam step on a transformers copy, then
update_weights_from_tensor. TRL's rollout time is the time in its model's `generate`, its
step time the trainer's own step (callbacks); train = step - rollout (lang/bench/trl_worker.py).
Medians over the steps after the first.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import subprocess
import time
from pathlib import Path
from typing import Any

from .bench_model import bench_model_dir

OPENINGS = [
    "Once upon a time,", "One day,", "Tom and Sue", "There was a little", "The sun was",
    "Lily had a", "Ben wanted to", "It was a sunny day.",
]  # fmt: skip


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--group", type=int, default=4)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument(
        "--trl-python",
        default=None,
        help="python of a virtualenv with trl (and its deps) installed",
    )


def reward(completions: list[Any], **_: Any) -> list[float]:
    return [float(len(str(c))) / 100 for c in completions]


def main(args: argparse.Namespace) -> None:
    import torch

    model_dir = bench_model_dir(with_tokenizer=True)
    print(
        f"model: {model_dir.name}, torch {torch.__version__}, {torch.get_num_threads()} threads; "
        f"{args.prompts} prompts x {args.group} samples x {args.new_tokens} tokens, {args.steps} steps"
    )
    rows = _loomlm_steps(model_dir, args)
    _report("loomlm + transformers trainer", rows)
    generate = _hf_generate_seconds(model_dir, args)
    print(
        f"transformers generate on the same batch (TRL's rollout without vLLM): {generate:.2f} s, "
        f"{generate / statistics.median(r['rollout'] for r in rows[1:] or rows):.2f}x loomlm's rollout"
    )
    if not args.trl_python:
        print("no --trl-python: TRL's side is skipped")
        return
    cmd = [
        args.trl_python, str(Path(__file__).with_name("trl_worker.py")), str(model_dir),
        str(args.prompts), str(args.group), str(args.new_tokens), str(args.steps),
    ]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        print(f"TRL's side failed: {done.stderr[-2000:]}")
        return
    result = json.loads(done.stdout.strip().splitlines()[-1])
    _report(f"TRL {result['version']} GRPOTrainer, use_vllm=False", result["rows"])


def _report(name: str, rows: list[dict[str, float]]) -> None:
    later = rows[1:] or rows
    med = {k: statistics.median(r[k] for r in later) for k in rows[0]}
    print(
        f"{name}: step {med['step']:.2f} s = rollout {med['rollout']:.2f} + sync "
        f"{med['sync'] * 1e3:.0f} ms + train {med['train']:.2f} (median of {len(later)} steps; "
        f"first step {rows[0]['step']:.2f} s)"
    )


def _loomlm_steps(model_dir: Any, args: argparse.Namespace) -> list[dict[str, float]]:
    import torch
    from loomlm.runtime import Engine
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    policy = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    reference = copy.deepcopy(policy).eval().requires_grad_(False)
    optimizer = torch.optim.AdamW(policy.parameters(), lr=1e-6)
    engine = Engine(model_dir, dtype="float32")
    prompts = [tokenizer(o)["input_ids"] for o in OPENINGS[: args.prompts]]
    params = {
        "n": args.group, "temperature": 1.0, "max_new_tokens": args.new_tokens,
        "min_new_tokens": args.new_tokens, "logprobs_mode": "processed",
    }  # fmt: skip
    rows = []
    for _ in range(args.steps):
        start = time.perf_counter()
        outs = engine.generate(input_ids=prompts, sampling_params=params, return_logprob=True)
        rollout = time.perf_counter() - start
        start = time.perf_counter()
        heads = [prompts[i // args.group] for i in range(len(outs))]
        tails = [o.output_ids for o in outs]
        old = torch.tensor([[e[0] for e in o.output_token_logprobs] for o in outs])
        rewards = torch.tensor(reward([o.text for o in outs])).view(args.prompts, args.group)
        adv = (
            (rewards - rewards.mean(1, keepdim=True)) / (rewards.std(1, keepdim=True) + 1e-4)
        ).view(-1, 1)
        new = _completion_logprobs(policy, heads, tails)
        with torch.no_grad():
            ref = _completion_logprobs(reference, heads, tails)
        ratio = torch.exp(new - old)
        loss = -(torch.minimum(ratio * adv, ratio.clamp(0.8, 1.2) * adv)).mean()
        loss = loss + 0.02 * (torch.exp(ref - new) - (ref - new) - 1).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        train = time.perf_counter() - start
        start = time.perf_counter()
        engine.update_weights_from_tensor([(n, p.detach()) for n, p in policy.named_parameters()])
        sync = time.perf_counter() - start
        rows.append(
            {"rollout": rollout, "sync": sync, "train": train, "step": rollout + sync + train}
        )
    engine.shutdown()
    return rows


def _hf_generate_seconds(model_dir: Any, args: argparse.Namespace) -> float:
    """The same rollout through transformers `generate` (left-padded prompts, sampling), warm."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir, padding_side="left")
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    batch = tokenizer(OPENINGS[: args.prompts], return_tensors="pt", padding=True)
    times = []
    for _ in range(2):
        start = time.perf_counter()
        with torch.inference_mode():
            model.generate(
                **batch, do_sample=True, temperature=1.0, top_k=0,
                num_return_sequences=args.group, max_new_tokens=args.new_tokens,
                min_new_tokens=args.new_tokens, pad_token_id=tokenizer.pad_token_id,
            )  # fmt: skip
        times.append(time.perf_counter() - start)
    return times[1]


def _completion_logprobs(model: Any, heads: list[list[int]], tails: list[list[int]]) -> Any:
    """[S, T] log-probabilities of each completion's tokens (all of one length T), the
    sequences right-padded to the longest prompt."""
    import torch

    width = max(len(h) for h in heads) + len(tails[0])
    ids = torch.zeros((len(heads), width), dtype=torch.int64)
    mask = torch.zeros_like(ids)
    for i, (h, t) in enumerate(zip(heads, tails)):
        ids[i, : len(h) + len(t)] = torch.tensor(h + t)
        mask[i, : len(h) + len(t)] = 1
    logprobs = torch.log_softmax(model(input_ids=ids, attention_mask=mask).logits.float(), -1)
    rows = [
        logprobs[i, len(h) - 1 : len(h) - 1 + len(t)].gather(1, torch.tensor(t)[:, None]).squeeze(1)
        for i, (h, t) in enumerate(zip(heads, tails))
    ]
    return torch.stack(rows)
