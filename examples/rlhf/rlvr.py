"""What the two RL examples share: the verifiable task, the engine that generates rollouts
(in this process, or `loomlm serve` in its own, synced over torch.distributed), and the log.

The task, in the style of Tülu 3's RLVR with an IFEval-like constraint: continue a story
opening and use the word "park"; the verifier is a regular expression, and the reward is 10
when it passes, 0 otherwise. The built-in TinyStories 260K model uses that word in ~12% of its
32-token continuations, so a policy can learn it within minutes on two cores.
"""

from __future__ import annotations

import argparse
import copy
import json
import random
import re
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import torch
from loomlm.runtime import Engine
from loomlm.runtime.executor.models.loader import DEFAULT_MODEL_DIR
from loomlm.runtime.weights import SyncGroup

WORD = "park"
REWARD = 10.0  # Tülu 3's alpha: the reward when the verifier accepts
OPENINGS = [
    "Once upon a time,", "One day,", "Tom and Sue", "There was a little", "The sun was",
    "Lily had a", "Ben wanted to", "It was a sunny day.", "Mia and her mom", "A little dog",
    "Tim saw a", "The cat was", "Sara liked to", "Max was a", "In a small town,", "Anna found a",
]  # fmt: skip


def verify(text: str) -> bool:
    return re.search(rf"\b{WORD}\b", text.lower()) is not None


def reward_of(text: str) -> float:
    return REWARD if verify(text) else 0.0


@dataclass
class Sample:
    prompt: int  # index into the step's prompts
    prompt_ids: list[int]
    ids: list[int]  # exactly the ids sampled
    logprobs: list[float]  # of each, under the distribution it was drawn from
    text: str
    weight_version: str


class InProcessEngine:
    """loomlm in this process: rollouts with `generate`, weights with update_weights_from_tensor."""

    def __init__(self, model_dir: Path) -> None:
        self.engine = Engine(model_dir)
        self.tokenizer = self.engine.tokenizer

    def rollout(self, prompts: list[list[int]], n: int, new_tokens: int, seed: int) -> list[Sample]:
        params = {
            "n": n, "temperature": 1.0, "max_new_tokens": new_tokens, "seed": seed,
            "logprobs_mode": "processed",
        }  # fmt: skip
        outs = self.engine.generate(input_ids=prompts, sampling_params=params, return_logprob=True)
        assert isinstance(outs, list)
        return [
            Sample(i // n, prompts[i // n], o.output_ids, [e[0] for e in o.output_token_logprobs or []], o.text, o.weight_version)
            for i, o in enumerate(outs)
        ]  # fmt: skip

    def sync(self, named: list[tuple[str, torch.Tensor]], version: str) -> None:
        self.engine.update_weights_from_tensor(named, weight_version=version)

    def close(self) -> None:
        self.engine.shutdown()


class ServerEngine:
    """`loomlm serve` in its own process: rollouts over HTTP, weights broadcast over gloo."""

    def __init__(self, model_dir: Path, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        port, sync_port = _free_port(), _free_port()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "loomlm.runtime.server", "serve", "--model", str(model_dir),
             "--port", str(port), "--enable-weight-updates", "--log-level", "warning"],
        )  # fmt: skip
        self.http = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=300)
        deadline = time.time() + 120
        while True:
            try:
                if self.http.get("/health").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.time() > deadline or self.proc.poll() is not None:
                raise RuntimeError("loomlm serve did not start")
            time.sleep(0.2)
        body = {
            "master_address": "127.0.0.1", "master_port": sync_port, "rank_offset": 1,
            "world_size": 2, "group_name": "rlhf", "backend": "gloo",
        }  # fmt: skip
        joined = self._post_in_background("/init_weights_update_group", body)
        self.group = SyncGroup("127.0.0.1", sync_port, rank=0, world_size=2, group_name="rlhf")
        _check(joined())

    def rollout(self, prompts: list[list[int]], n: int, new_tokens: int, seed: int) -> list[Sample]:
        params = {
            "n": n, "temperature": 1.0, "max_new_tokens": new_tokens, "seed": seed,
            "logprobs_mode": "processed",
        }  # fmt: skip
        r = self.http.post(
            "/generate",
            json={"input_ids": prompts, "sampling_params": params, "return_logprob": True},
        )
        _check(r)
        samples = []
        for i, out in enumerate(r.json()):
            meta = out["meta_info"]
            logprobs = [e[0] for e in meta["output_token_logprobs"]]
            ids = [e[1] for e in meta["output_token_logprobs"]]
            samples.append(
                Sample(i // n, prompts[i // n], ids, logprobs, out["text"], meta["weight_version"])
            )
        return samples

    def sync(self, named: list[tuple[str, torch.Tensor]], version: str) -> None:
        body = {
            "names": [n for n, _ in named],
            "dtypes": [str(t.dtype).removeprefix("torch.") for _, t in named],
            "shapes": [list(t.shape) for _, t in named],
            "group_name": "rlhf", "weight_version": version,
        }  # fmt: skip
        done = self._post_in_background("/update_weights_from_distributed", body)
        for _, tensor in named:
            self.group.broadcast(tensor.detach().contiguous())
        _check(done())

    def close(self) -> None:
        self.group.close()
        self.http.close()
        self.proc.terminate()
        self.proc.wait(30)

    def _post_in_background(self, path: str, body: dict[str, Any]) -> Any:
        result: dict[str, httpx.Response] = {}
        thread = threading.Thread(target=lambda: result.update(r=self.http.post(path, json=body)))
        thread.start()

        def wait() -> httpx.Response:
            thread.join()
            return result["r"]

        return wait


def _check(r: httpx.Response) -> None:
    if r.status_code != 200:
        raise RuntimeError(f"{r.request.url.path}: {r.status_code} {r.text}")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def common_arguments(p: argparse.ArgumentParser, prompts: int, samples: int) -> None:
    """The flags both trainers take; `prompts` and `samples` are their per-step defaults."""
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--prompts", type=int, default=prompts, help="prompts per step")
    p.add_argument("--samples", type=int, default=samples, help="samples per prompt")
    p.add_argument("--new-tokens", type=int, default=32)
    p.add_argument("--lr", type=float, default=2e-4)
    p.add_argument("--beta", type=float, default=0.02, help="KL coefficient")
    p.add_argument("--clip", type=float, default=0.2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--server", action="store_true", help="run the engine as `loomlm serve`")
    p.add_argument("--out", type=Path, default=Path("rlhf-runs"))


@dataclass
class Setup:
    policy: Any  # the transformers model being trained
    reference: Any  # a frozen copy of it
    tokenizer: Any
    engine: Any  # InProcessEngine or ServerEngine
    log: RunLog
    rng: random.Random

    def prompts(self, count: int) -> list[list[int]]:
        return [self.tokenizer(o)["input_ids"] for o in self.rng.sample(OPENINGS, count)]


def set_up(args: argparse.Namespace, name: str) -> Setup:
    from transformers import AutoTokenizer

    torch.manual_seed(args.seed)
    policy = load_policy()
    tokenizer = AutoTokenizer.from_pretrained(DEFAULT_MODEL_DIR)
    return Setup(
        policy,
        copy.deepcopy(policy).eval().requires_grad_(False),
        tokenizer,
        make_engine(args.server, tokenizer),
        RunLog(args.out, name),
        random.Random(args.seed),
    )


def load_policy(model_dir: Path = DEFAULT_MODEL_DIR) -> Any:
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)


def make_engine(server: bool, tokenizer: Any, model_dir: Path = DEFAULT_MODEL_DIR) -> Any:
    return ServerEngine(model_dir, tokenizer) if server else InProcessEngine(model_dir)


def completion_logprobs(model: Any, samples: list[Sample]) -> tuple[torch.Tensor, torch.Tensor]:
    """Per completion token, the model's log-probability of the sampled id [S, T] (0 past a
    completion's end), and the mask of real tokens [S, T]; right-padded batch."""
    lengths = [len(s.prompt_ids) + len(s.ids) for s in samples]
    width = max(lengths)
    ids = torch.zeros((len(samples), width), dtype=torch.int64)
    for i, s in enumerate(samples):
        ids[i, : lengths[i]] = torch.tensor(s.prompt_ids + s.ids)
    attention = (torch.arange(width)[None, :] < torch.tensor(lengths)[:, None]).long()
    logits = model(input_ids=ids, attention_mask=attention).logits.float()
    logprobs = torch.log_softmax(logits[:, :-1], -1).gather(2, ids[:, 1:, None]).squeeze(2)
    steps = max(len(s.ids) for s in samples)
    out = torch.zeros((len(samples), steps))
    mask = torch.zeros((len(samples), steps))
    for i, s in enumerate(samples):
        start = len(s.prompt_ids) - 1
        out[i, : len(s.ids)] = logprobs[i, start : start + len(s.ids)]
        mask[i, : len(s.ids)] = 1.0
    return out, mask


class RunLog:
    """One JSON line per step, and the reward / KL curves as a PNG at the end."""

    def __init__(self, out_dir: Path, name: str) -> None:
        out_dir.mkdir(parents=True, exist_ok=True)
        self.jsonl = out_dir / f"{name}.jsonl"
        self.png = out_dir / f"{name}.png"
        self.name = name
        self.rows: list[dict[str, Any]] = []
        self.jsonl.write_text("")

    def step(self, **row: Any) -> None:
        self.rows.append(row)
        with self.jsonl.open("a") as f:
            f.write(json.dumps(row) + "\n")
        print(
            f"step {row['step']:3d}  reward {row['reward']:5.2f}  kl {row['kl']:.4f}  "
            f"rollout {row['rollout_s']:.2f}s  sync {row['sync_s'] * 1e3:.0f}ms  train {row['train_s']:.2f}s",
            flush=True,
        )

    def plot(self) -> None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        steps = [r["step"] for r in self.rows]
        fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.5))
        a.plot(steps, [r["reward"] for r in self.rows])
        a.set(title=f"{self.name}: mean reward (10 = uses '{WORD}')", xlabel="step")
        b.plot(steps, [r["kl"] for r in self.rows], color="tab:red")
        b.set(title="KL to the reference", xlabel="step")
        fig.tight_layout()
        fig.savefig(self.png, dpi=80)
        plt.close(fig)

    def summary(self) -> dict[str, float]:
        """Mean reward of the first and the last k steps (k = 10, or half a shorter run)."""
        rewards = [r["reward"] for r in self.rows]
        k = min(10, len(rewards) // 2) or 1
        first, last = sum(rewards[:k]) / k, sum(rewards[-k:]) / k
        print(
            f"mean reward: first {k} steps {first:.2f}, last {k} steps {last:.2f} "
            f"({last / max(first, 1e-9):.1f}x); log {self.jsonl}, curve {self.png}"
        )
        return {"first": first, "last": last, "steps": len(rewards), "k": k}
