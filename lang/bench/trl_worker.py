"""TRL's side of `python -m loomlm.bench rlstep`, run by the interpreter of a virtualenv with trl
installed (it imports nothing of loomlm): GRPOTrainer with use_vllm=False on the given model,
timing each step and the time inside the model's `generate`. Prints one JSON line:
{"version": ..., "rows": [{"rollout", "sync", "train", "step"} per step]}.

    python trl_worker.py MODEL_DIR PROMPTS GROUP NEW_TOKENS STEPS
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from typing import Any

# the same openings and reward as loomlm's side (rl_step.py)
OPENINGS = [
    "Once upon a time,", "One day,", "Tom and Sue", "There was a little", "The sun was",
    "Lily had a", "Ben wanted to", "It was a sunny day.",
]  # fmt: skip


def reward(completions: list[Any], **_: Any) -> list[float]:
    return [float(len(str(c))) / 100 for c in completions]


def main() -> None:
    import torch
    import trl
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    model_dir, prompts, group, new_tokens, steps = sys.argv[1], *map(int, sys.argv[2:6])
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    policy = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    in_generate = [0.0]
    generate = policy.generate

    def timed_generate(*a: Any, **kw: Any) -> Any:
        start = time.perf_counter()
        try:
            return generate(*a, **kw)
        finally:
            in_generate[0] += time.perf_counter() - start

    policy.generate = timed_generate
    rows: list[dict[str, float]] = []

    class StepTimes(TrainerCallback):
        def on_step_begin(self, *a: Any, **kw: Any) -> None:
            self.start, in_generate[0] = time.perf_counter(), 0.0

        def on_step_end(self, *a: Any, **kw: Any) -> None:
            step = time.perf_counter() - self.start
            rows.append(
                {
                    "rollout": in_generate[0],
                    "sync": 0.0,
                    "train": step - in_generate[0],
                    "step": step,
                }
            )

    with tempfile.TemporaryDirectory() as out:
        config = GRPOConfig(
            output_dir=out, per_device_train_batch_size=prompts * group, num_generations=group,
            max_completion_length=new_tokens, temperature=1.0, beta=0.02, learning_rate=1e-6,
            max_steps=steps, use_vllm=False, use_cpu=True, bf16=False, report_to="none",
            logging_steps=1, save_strategy="no", generation_kwargs={"min_new_tokens": new_tokens},
        )  # fmt: skip
        data = Dataset.from_dict({"prompt": OPENINGS[:prompts] * (steps + 1)})
        trainer = GRPOTrainer(
            model=policy, reward_funcs=[reward], args=config, train_dataset=data,
            processing_class=tokenizer, callbacks=[StepTimes()],
        )  # fmt: skip
        trainer.train()
    print(json.dumps({"version": trl.__version__, "rows": rows}))


if __name__ == "__main__":
    main()
