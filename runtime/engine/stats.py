"""What `Engine.stats()` reports: counters since start, read on the engine thread."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .engine import Engine


def read_stats(engine: Engine, in_flight: int) -> dict[str, int | float]:
    """`kv_slots_free` excludes `cached_tokens` (slots the prefix cache keeps, freed on
    demand); `cache_hit_rate` is the share of admitted prompt tokens read from the cache;
    `num_in_flight` counts requests submitted and not yet finished (the queue limit's
    count); the grammar cache's bytes are its estimate (constrained.grammar_compiler)."""
    s = engine.scheduler.stats
    cache = engine.prefix_cache
    grammars = engine.grammars
    return {
        "kv_slots_total": engine.kv_pool.num_slots,
        "kv_slots_free": engine.kv_pool.num_free(),
        "num_running": engine.scheduler.num_running,
        "num_waiting": len(engine.scheduler.waiting),
        "num_preemptions": s.num_preemptions,
        "num_steps": s.num_steps,
        "prompt_tokens": s.prompt_tokens,
        "generated_tokens": s.generated_tokens,
        "cached_tokens": cache.size,
        "cached_tokens_evictable": cache.evictable_size,
        "cache_hit_tokens": s.cache_hit_tokens,
        "cache_query_tokens": s.cache_query_tokens,
        "cache_hit_rate": s.cache_hit_rate,
        "evicted_tokens": cache.evicted_tokens,
        "jump_forward_tokens": engine.outputs.jump_forward_tokens,
        "num_in_flight": in_flight,
        "grammar_cache_entries": grammars.num_cached if grammars else 0,
        "grammar_cache_bytes": grammars.cached_bytes if grammars else 0,
    }
