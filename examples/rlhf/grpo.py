"""GRPO with a verifiable reward (RLVR) on the built-in TinyStories model: loomlm generates
every rollout, a transformers copy of the model trains with torch, and the engine receives the
new weights after every optimiser step.

    python examples/rlhf/grpo.py                 # engine in this process (~3 min on 2 cores)
    python examples/rlhf/grpo.py --server        # `loomlm serve` in its own process, weights over gloo
    python examples/rlhf/grpo.py --steps 3 --out runs/short  # a short run

Each step: B prompts x G samples (temperature 1); reward 10 when the continuation uses the
word "park", else 0; advantages normalised within each prompt's group (GRPO); the clipped
policy-gradient loss over the completion tokens, with the ratio taken against the logprobs
the engine returned for the tokens it sampled (equal to the trainer's own, so the first ratio
is 1), plus beta x KL to the initial model (the k3 estimator). Writes <out>/grpo.jsonl and
<out>/grpo.png.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from rlvr import common_arguments, completion_logprobs, reward_of, set_up  # noqa: E402


def parse(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    common_arguments(p, prompts=8, samples=8)
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> dict[str, float]:
    args = parse(argv)
    run = set_up(args, "grpo")
    policy, reference, engine, log = run.policy, run.reference, run.engine, run.log
    optimizer = torch.optim.Adam(policy.parameters(), lr=args.lr)
    try:
        for step in range(args.steps):
            prompts = run.prompts(args.prompts)
            start = time.perf_counter()
            samples = engine.rollout(
                prompts, args.samples, args.new_tokens, seed=args.seed * 100_000 + step
            )
            rollout_s = time.perf_counter() - start

            start = time.perf_counter()
            rewards = torch.tensor([reward_of(s.text) for s in samples])
            groups = rewards.view(args.prompts, args.samples)
            advantages = (
                (groups - groups.mean(1, keepdim=True)) / (groups.std(1, keepdim=True) + 1e-4)
            ).view(-1)
            old = torch.zeros(len(samples), args.new_tokens)
            for i, s in enumerate(samples):
                old[i, : len(s.logprobs)] = torch.tensor(s.logprobs)
            new, mask = completion_logprobs(policy, samples)
            with torch.no_grad():
                ref, _ = completion_logprobs(reference, samples)
            old = old[:, : new.shape[1]]
            ratio = torch.exp(new - old)
            surrogate = torch.minimum(
                ratio * advantages[:, None],
                ratio.clamp(1 - args.clip, 1 + args.clip) * advantages[:, None],
            )
            kl = torch.exp(ref - new) - (ref - new) - 1  # k3: unbiased, non-negative
            loss = (-(surrogate - args.beta * kl) * mask).sum() / mask.sum()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            train_s = time.perf_counter() - start

            start = time.perf_counter()
            engine.sync([(n, p.detach()) for n, p in policy.named_parameters()], f"step-{step + 1}")
            sync_s = time.perf_counter() - start
            log.step(
                step=step, reward=rewards.mean().item(), kl=((kl * mask).sum() / mask.sum()).item(),
                first_ratio=(ratio[:, 0].mean().item()), rollout_s=rollout_s, sync_s=sync_s,
                train_s=train_s, weight_version=samples[0].weight_version,
            )  # fmt: skip
    finally:
        engine.close()
    log.plot()
    return log.summary()


if __name__ == "__main__":
    main()
