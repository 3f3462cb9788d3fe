"""Runs inside vLLM's own virtualenv (imports nothing from loomlm): times the workloads with
vLLM's offline LLM API and prints `RESULT <json>`. Usage: vllm_worker.py SPEC.json"""

import json
import sys
import time


def main() -> None:
    spec = json.loads(open(sys.argv[1]).read())
    import vllm
    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt

    llm = LLM(
        model=spec["model"],
        dtype=spec.get("dtype", "float32"),
        max_model_len=2048,
        max_num_seqs=256,
        max_num_batched_tokens=8192,
        seed=0,
        enable_prefix_caching=False,
        skip_tokenizer_init=True,
        kv_cache_memory_bytes=4 * 1024**3,
        gpu_memory_utilization=0.5,
    )

    def run(prompts: list[list[int]], output_lens: list[int]) -> tuple[float, int]:
        params = [
            SamplingParams(
                temperature=0.0, max_tokens=n, min_tokens=n, ignore_eos=True, detokenize=False
            )
            for n in output_lens
        ]
        inputs = [TokensPrompt(prompt_token_ids=p) for p in prompts]
        start = time.perf_counter()
        outs = llm.generate(inputs, params, use_tqdm=False)
        seconds = time.perf_counter() - start
        return seconds, sum(len(o.outputs[0].token_ids) for o in outs)

    run([[5] * 16, [6] * 40], [8, 8])  # warm-up
    results = []
    for w in spec["workloads"]:
        # "runs" > 1: the same workload again (first and warm figures); the first is reported
        runs = [run(w["prompts"], w["output_lens"]) for _ in range(w.get("runs", 1))]
        results.append(
            {
                "seconds": runs[0][0],
                "runs": [r[0] for r in runs],
                "output_tokens": runs[0][1],
                "version": vllm.__version__,
            }
        )
    print("RESULT " + json.dumps(results), flush=True)


if __name__ == "__main__":
    main()
