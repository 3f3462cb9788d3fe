"""PPO with a verifiable reward on the built-in TinyStories model, run the way Xu et al. (2024)
found PPO beats DPO: a value model and GAE, advantages normalised over the whole batch, large
batches, and a reference model that follows the policy as an exponential moving average. loomlm
generates every rollout and receives the new weights after every optimiser step.

    python examples/rlhf/ppo.py                  # engine in this process
    python examples/rlhf/ppo.py --server         # `loomlm serve` in its own process, weights over gloo

Per token the reward is -beta x (log pi - log pi_ref), and the last token adds 10 when the
continuation uses the word "park" (Tülu 3's RLVR reward). Writes <out>/ppo.jsonl and
<out>/ppo.png.
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from rlvr import Sample, common_arguments, completion_logprobs, reward_of, set_up  # noqa: E402


def parse(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    common_arguments(p, prompts=16, samples=4)
    p.add_argument("--critic-lr", type=float, default=1e-3)
    p.add_argument(
        "--ema", type=float, default=0.95, help="reference <- ema x reference + (1 - ema) x policy"
    )
    p.add_argument("--epochs", type=int, default=2, help="PPO epochs per batch")
    p.add_argument("--gamma", type=float, default=1.0)
    p.add_argument("--lam", type=float, default=0.95)
    return p.parse_args(argv)


class Critic(nn.Module):
    """The value model: the base model's trunk and a scalar head on each position."""

    def __init__(self, base: nn.Module) -> None:
        super().__init__()
        self.trunk = copy.deepcopy(base.model)
        self.head = nn.Linear(base.config.hidden_size, 1)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    def values(self, samples: list[Sample]) -> torch.Tensor:
        """V at each completion token's state (the position before it) [S, T]."""
        lengths = [len(s.prompt_ids) + len(s.ids) for s in samples]
        width, steps = max(lengths), max(len(s.ids) for s in samples)
        ids = torch.zeros((len(samples), width), dtype=torch.int64)
        for i, s in enumerate(samples):
            ids[i, : lengths[i]] = torch.tensor(s.prompt_ids + s.ids)
        attention = (torch.arange(width)[None, :] < torch.tensor(lengths)[:, None]).long()
        hidden = self.trunk(input_ids=ids, attention_mask=attention).last_hidden_state
        per_position = self.head(hidden).squeeze(-1)
        out = torch.zeros((len(samples), steps))
        for i, s in enumerate(samples):
            start = len(s.prompt_ids) - 1
            out[i, : len(s.ids)] = per_position[i, start : start + len(s.ids)]
        return out


def gae(
    rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float, lam: float
) -> torch.Tensor:
    """Generalised advantage estimates [S, T]; the value after a completion's end is 0."""
    advantages = torch.zeros_like(rewards)
    running = torch.zeros(rewards.shape[0])
    for t in reversed(range(rewards.shape[1])):
        next_value = values[:, t + 1] * mask[:, t + 1] if t + 1 < rewards.shape[1] else 0.0
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        running = (delta + gamma * lam * running) * mask[:, t]
        advantages[:, t] = running
    return advantages


def main(argv: Sequence[str] | None = None) -> dict[str, float]:
    args = parse(argv)
    run = set_up(args, "ppo")
    policy, reference, engine, log = run.policy, run.reference, run.engine, run.log
    critic = Critic(policy)
    policy_opt = torch.optim.Adam(policy.parameters(), lr=args.lr)
    critic_opt = torch.optim.Adam(critic.parameters(), lr=args.critic_lr)
    try:
        for step in range(args.steps):
            prompts = run.prompts(args.prompts)
            start = time.perf_counter()
            samples = engine.rollout(
                prompts, args.samples, args.new_tokens, seed=args.seed * 100_000 + step
            )
            rollout_s = time.perf_counter() - start

            start = time.perf_counter()
            scores = torch.tensor([reward_of(s.text) for s in samples])
            steps = max(len(s.ids) for s in samples)
            old = torch.zeros(len(samples), steps)
            for i, s in enumerate(samples):
                old[i, : len(s.logprobs)] = torch.tensor(s.logprobs)
            with torch.no_grad():
                ref, mask = completion_logprobs(reference, samples)
                values = critic.values(samples)
            kl = (old - ref) * mask
            rewards = -args.beta * kl
            last = mask.sum(1).long() - 1
            rewards[torch.arange(len(samples)), last] += scores
            advantages = gae(rewards, values, mask, args.gamma, args.lam)
            returns = advantages + values
            # normalised over the whole batch (Xu et al.'s first factor)
            mean = (advantages * mask).sum() / mask.sum()
            std = (((advantages - mean) ** 2 * mask).sum() / mask.sum()).sqrt()
            advantages = (advantages - mean) / (std + 1e-6) * mask
            for _ in range(args.epochs):
                new, _ = completion_logprobs(policy, samples)
                ratio = torch.exp(new - old)
                surrogate = torch.minimum(
                    ratio * advantages, ratio.clamp(1 - args.clip, 1 + args.clip) * advantages
                )
                policy_loss = -(surrogate * mask).sum() / mask.sum()
                policy_opt.zero_grad()
                policy_loss.backward()
                policy_opt.step()
                value_loss = (((critic.values(samples) - returns) ** 2) * mask).sum() / mask.sum()
                critic_opt.zero_grad()
                value_loss.backward()
                critic_opt.step()
            with torch.no_grad():  # the EMA reference (Xu et al.'s third factor)
                for r, p in zip(reference.parameters(), policy.parameters()):
                    r.mul_(args.ema).add_(p, alpha=1 - args.ema)
            train_s = time.perf_counter() - start

            start = time.perf_counter()
            engine.sync([(n, p.detach()) for n, p in policy.named_parameters()], f"step-{step + 1}")
            sync_s = time.perf_counter() - start
            log.step(
                step=step, reward=scores.mean().item(), kl=(kl.sum() / mask.sum()).item(),
                value_loss=value_loss.item(), rollout_s=rollout_s, sync_s=sync_s, train_s=train_s,
                weight_version=samples[0].weight_version,
            )  # fmt: skip
    finally:
        engine.close()
    log.plot()
    return log.summary()


if __name__ == "__main__":
    main()
