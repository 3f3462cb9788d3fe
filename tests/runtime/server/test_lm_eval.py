"""lm-eval's `local-completions` model, unchanged, against a real `loomlm serve`: a
multiple-choice task (loglikelihood scoring through /v1/completions with echo and logprobs)
and a generate_until task, both small local tasks written here. Half of each task's answers
are what the engine itself picks and half are not, so the metrics must come out at exactly
0.5 when every request was scored as the engine scores it."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from ..checkpoints import default_model_dir

os.environ.setdefault("HF_DATASETS_OFFLINE", "1")  # the tasks' data are local files
import lm_eval  # noqa: E402
from lm_eval.tasks import TaskManager  # noqa: E402

CONTEXTS = [
    "Once upon a time, there was a little",
    "One day, Lily went to the",
    "Tom liked to play with his",
    "The sun was shining and the birds",
]
CHOICES = [" girl", " dog", " park", " ball"]


def score(engine, context: str, continuation: str) -> float:
    """The loglikelihood lm-eval asks for: the continuation's tokens after the context's,
    split as lm-eval splits them (the pair encoded whole, the context's tokens cut off)."""
    tok = engine.tokenizer
    whole = tok(context + continuation, add_special_tokens=False).input_ids
    ctx = len(tok(context, add_special_tokens=False).input_ids)
    out = engine.generate(
        input_ids=whole,
        sampling_params={"max_new_tokens": 0},
        return_logprob=True,
        logprob_start_len=ctx,
    )
    return sum(e[0] for e in out.input_token_logprobs if e[0] is not None)


def write_tasks(folder: Path, engine) -> None:
    mc, gen = [], []
    for k, context in enumerate(CONTEXTS):
        scores = [score(engine, context, c) for c in CHOICES]
        best = scores.index(max(scores))
        answer = best if k % 2 == 0 else (best + 1) % len(CHOICES)  # half right
        mc.append({"context": context, "choices": CHOICES, "answer": answer})
        ids = engine.tokenizer(context, add_special_tokens=False).input_ids
        out = engine.generate(
            input_ids=ids, sampling_params={"max_new_tokens": 16, "temperature": 0, "stop": ["."]}
        )
        gen.append({"context": context, "target": out.text if k % 2 == 0 else out.text + "!"})
    for name, rows in (("mc", mc), ("gen", gen)):
        (folder / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    common = "dataset_path: json\ntest_split: test\ndoc_to_text: '{{context}}'\n"
    (folder / "mc.yaml").write_text(
        "task: loomlm_mc\n" + common
        + f"dataset_kwargs:\n  data_files:\n    test: {folder / 'mc.jsonl'}\n"
        "output_type: multiple_choice\n"
        "doc_to_choice: '{{choices}}'\n"
        "doc_to_target: '{{answer}}'\n"
        "metric_list:\n  - metric: acc\n"
    )  # fmt: skip
    (folder / "gen.yaml").write_text(
        "task: loomlm_gen\n" + common
        + f"dataset_kwargs:\n  data_files:\n    test: {folder / 'gen.jsonl'}\n"
        "output_type: generate_until\n"
        "doc_to_target: '{{target}}'\n"
        "generation_kwargs:\n  until: ['.']\n  max_gen_toks: 16\n  do_sample: false\n"
        "  temperature: 0\n"
        "metric_list:\n  - metric: exact_match\n"
    )  # fmt: skip


def test_lm_eval_local_completions(server, engine, tmp_path):
    write_tasks(tmp_path, engine)
    args = ",".join(
        [
            "model=tinystories-260k",
            f"base_url={server.url}/v1/completions",
            "tokenizer_backend=huggingface",
            f"tokenizer={default_model_dir()}",
            "num_concurrent=1",
            "max_retries=1",
            "tokenized_requests=True",
        ]
    )
    results = lm_eval.simple_evaluate(
        model="local-completions",
        model_args=args,
        tasks=["loomlm_mc", "loomlm_gen"],
        task_manager=TaskManager(include_path=str(tmp_path)),
        batch_size=1,
    )["results"]
    assert results["loomlm_mc"]["acc,none"] == pytest.approx(0.5)
    assert results["loomlm_gen"]["exact_match,none"] == pytest.approx(0.5)
