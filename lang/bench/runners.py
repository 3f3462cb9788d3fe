"""Each system under test, behind one call: run a workload, return seconds and tokens."""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
import time
from pathlib import Path
from typing import NamedTuple

from .workloads import Workload


class Timing(NamedTuple):
    seconds: float
    output_tokens: int  # useful tokens: what the requests asked for, padding excluded
    note: str = ""

    @property
    def tokens_per_s(self) -> float:
        return self.output_tokens / self.seconds


def run_loomlm(engine: object, work: Workload) -> Timing:
    from loomlm.runtime import SamplingParams

    params = [
        SamplingParams(max_new_tokens=n, min_new_tokens=n, temperature=0, ignore_eos=True)
        for n in work.output_lens
    ]
    start = time.perf_counter()
    outs = engine.generate(input_ids=work.prompts, sampling_params=params)  # type: ignore[attr-defined]
    seconds = time.perf_counter() - start
    outs = outs if isinstance(outs, list) else [outs]
    produced = sum(o.completion_tokens for o in outs)
    if produced != work.output_tokens:
        raise RuntimeError(f"loomlm produced {produced} tokens, expected {work.output_tokens}")
    return Timing(seconds, produced)


def run_transformers(model: object, work: Workload, batch_size: int) -> Timing:
    """Static batches in arrival order, left-padded; each batch runs to its longest output."""
    import torch

    start = time.perf_counter()
    for i in range(0, len(work.prompts), batch_size):
        prompts = work.prompts[i : i + batch_size]
        new = max(work.output_lens[i : i + batch_size])
        longest = max(len(p) for p in prompts)
        ids = torch.zeros((len(prompts), longest), dtype=torch.int64)
        mask = torch.zeros((len(prompts), longest), dtype=torch.int64)
        for row, p in enumerate(prompts):
            ids[row, longest - len(p) :] = torch.tensor(p)
            mask[row, longest - len(p) :] = 1
        with torch.inference_mode():
            model.generate(  # type: ignore[attr-defined]
                input_ids=ids,
                attention_mask=mask,
                max_new_tokens=new,
                min_new_tokens=new,
                do_sample=False,
                eos_token_id=None,
                pad_token_id=0,
            )
    return Timing(time.perf_counter() - start, work.output_tokens, f"batch {batch_size}")


def run_vllm(
    python: str,
    model_dir: Path,
    works: list[Workload],
    threads: int,
    dtype: str = "float32",
    runs: int = 1,
) -> list[Timing]:
    """Run vLLM's offline LLM API in its own interpreter (its own virtualenv). With `runs` > 1
    each workload runs that many times in a row: one Timing per run, workload by workload."""
    worker = Path(__file__).with_name("vllm_worker.py")
    with tempfile.TemporaryDirectory() as tmp:
        spec = Path(tmp) / "spec.json"
        spec.write_text(
            json.dumps(
                {
                    "model": str(model_dir),
                    "threads": threads,
                    "dtype": dtype,
                    "workloads": [
                        {"prompts": w.prompts, "output_lens": w.output_lens, "runs": runs}
                        for w in works
                    ],
                }
            )
        )
        env_cpus = f"0-{threads - 1}"
        proc = subprocess.run(
            [python, str(worker), str(spec)],
            capture_output=True,
            text=True,
            env={
                **_env(),
                "VLLM_CPU_OMP_THREADS_BIND": env_cpus,
                "VLLM_CPU_NUM_OF_RESERVED_CPU": "0",
            },
        )
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr or proc.stdout)[-2000:]
        raise RuntimeError(f"vLLM worker failed (exit {proc.returncode}):\n{tail}")
    results = json.loads(lines[-1][len("RESULT ") :])
    return [
        Timing(seconds, r["output_tokens"], f"vllm {r['version']}")
        for r in results
        for seconds in r.get("runs", [r["seconds"]])
    ]


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")} | {
        "PYTHONUNBUFFERED": "1"
    }
