"""Shared test helpers: run the model directly over a fresh paged pool, and HF references."""

from __future__ import annotations

from typing import Any

import torch
from loomlm.runtime.executor.attention.torch_backend import TorchAttention
from loomlm.runtime.executor.forward_context import ForwardBatch, forward_scope
from loomlm.runtime.kvcache.kv_pool import KVPool


def our_prompt_logits(engine: Any, ids: list[int]) -> torch.Tensor:
    """Logits for every position of `ids`, from the engine's model over a scratch pool whose
    slots are deliberately scattered (reversed), so that paging is really exercised."""
    cfg = engine.model_config
    n = len(ids)
    pool = KVPool(
        n + 7,
        cfg.num_layers,
        cfg.num_kv_heads,
        cfg.head_dim,
        engine.dtype,
        engine.device,
        max_requests=1,
        max_context=n,
    )
    pool.slot_table[0, :n] = torch.arange(n + 6, 6, -1)[:n]
    attention = TorchAttention(cfg.num_heads, cfg.num_kv_heads, cfg.head_dim, cfg.sliding_window)
    batch = ForwardBatch(
        input_ids=torch.tensor(ids),
        positions=torch.arange(n),
        out_slots=pool.slot_table[0, :n].clone(),
        table_rows=[0],
        prefix_lens=[0],
        extend_lens=[n],
        seq_lens=[n],
        slot_table=pool.slot_table,
        kv_pool=pool,
        attention=attention,
    )
    attention.prepare(batch)
    with torch.inference_mode(), forward_scope(batch):
        every_row = torch.arange(n)
        return engine.model.logits(engine.model(batch.input_ids, batch.positions, every_row))


def hf_logits(hf: Any, ids: list[int]) -> torch.Tensor:
    with torch.no_grad():
        return hf(torch.tensor([ids])).logits[0].float()


def hf_greedy(hf: Any, ids: list[int], new_tokens: int, eos: Any = None) -> list[int]:
    """transformers' greedy continuation of one unpadded prompt."""
    kwargs: dict[str, Any] = (
        {"eos_token_id": eos}
        if eos is not None
        else {"eos_token_id": None, "min_new_tokens": new_tokens}
    )
    with torch.no_grad():
        out = hf.generate(
            torch.tensor([ids]),
            max_new_tokens=new_tokens,
            do_sample=False,
            pad_token_id=0,
            **kwargs,
        )
    return out[0, len(ids) :].tolist()


def prompts_of_lengths(lengths: list[int], vocab: int, seed: int = 0) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    return [[1] + torch.randint(3, vocab, (n - 1,), generator=g).tolist() for n in lengths]


def assert_pool_whole(engine: Any, timeout: float = 10.0) -> dict:
    """Once idle, every KV slot is free or held by the prefix cache, unlocked; after a flush
    every slot is free. Returns the stats read before the flush."""
    import time

    deadline = time.time() + timeout
    while True:
        stats = engine.stats()
        if stats["num_running"] == 0 and stats["num_waiting"] == 0:
            break
        assert time.time() < deadline, f"engine still busy: {stats}"
        time.sleep(0.01)
    assert stats["kv_slots_free"] + stats["cached_tokens"] == stats["kv_slots_total"], stats
    assert stats["cached_tokens_evictable"] == stats["cached_tokens"], (
        "a finished request kept a lock"
    )
    assert engine.flush_cache()
    assert engine.stats()["kv_slots_free"] == stats["kv_slots_total"]
    return stats
