"""Decode slots come in runs: a request's generated tokens lie in stretches of consecutive
KV slots, not one slot per step interleaved with every other request's; the spare slots a
run leaves over are given back when the request ends, and never force a preemption."""

from __future__ import annotations

import pytest
from loomlm.runtime import Engine, SamplingParams
from loomlm.runtime.scheduler import request_kv
from loomlm.runtime.scheduler.request_kv import RequestKV

from ..checkpoints import default_model_dir
from ..helpers import assert_pool_whole, prompts_of_lengths

NEW_TOKENS = 40


def decode_slots_at_release(engine: Engine, monkeypatch: pytest.MonkeyPatch) -> list[list[int]]:
    """Generate for 4 requests at once; the slots of each one's generated tokens."""
    seen: list[list[int]] = []
    real_release = RequestKV.release

    def spy(self: RequestKV, req, keep_kv: bool = True) -> None:  # type: ignore[no-untyped-def]
        if req.table_row is not None and req.finish_reason is not None:
            row = self.pool.slot_table[req.table_row, : req.num_computed].tolist()
            seen.append(row[len(req.prompt_ids) :])
        real_release(self, req, keep_kv)

    monkeypatch.setattr(RequestKV, "release", spy)
    prompts = prompts_of_lengths([5, 9, 13, 7], 512, seed=4)
    params = SamplingParams(max_new_tokens=NEW_TOKENS, temperature=0, ignore_eos=True)
    engine.generate(input_ids=prompts, sampling_params=params)
    return seen


def breaks(slots: list[int]) -> int:
    return sum(1 for a, b in zip(slots, slots[1:]) if b != a + 1)


def test_each_request_decodes_into_runs_of_consecutive_slots(monkeypatch) -> None:
    engine = Engine(default_model_dir(), skip_tokenizer_init=True, max_total_tokens=4096)
    try:
        seen = decode_slots_at_release(engine, monkeypatch)
        assert len(seen) == 4
        for slots in seen:
            assert len(slots) == NEW_TOKENS - 1  # the last sampled token is never computed
            # 39 slots in runs of 16: at most two breaks (one slot per step, interleaved
            # with the three others: 38)
            assert request_kv.DECODE_RUN == 16 and breaks(slots) <= 2
        assert_pool_whole(engine)  # the spare slots of the last runs came back
    finally:
        engine.shutdown()


def test_a_pool_without_room_for_runs_decodes_slot_by_slot_without_preempting(
    monkeypatch,
) -> None:
    # 4 prompts of at most 13 tokens and 40 new tokens each fit in 4 x 53 = 212 slots; runs
    # of 16 with room for another each would need more, so the engine must fall back.
    engine = Engine(default_model_dir(), skip_tokenizer_init=True, max_total_tokens=216)
    try:
        seen = decode_slots_at_release(engine, monkeypatch)
        assert len(seen) == 4
        stats = assert_pool_whole(engine)
        assert engine.stats()["num_preemptions"] == 0, stats
    finally:
        engine.shutdown()
