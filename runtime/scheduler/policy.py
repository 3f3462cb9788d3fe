"""The order in which waiting requests are considered for admission.

- `fcfs`: arrival order.
- `lpm`: longest cached prefix first, so that requests reuse the cache while it holds their
  prefix (ties keep arrival order).
- `dfs-weight`: SGLang's: walk the radix tree depth first, entering the subtree with the most
  waiting requests first, so that requests under one prefix run together.

Whatever the policy, a request that has waited more than `starvation_steps` engine steps goes
first, in arrival order: no policy can starve it. With a long queue the cache-aware policies
fall back to arrival order, since they match every waiting request against the tree each step.

Calls share fairly: the requests of one call (its `n` samples, a batch's prompts) take turns
with other calls' rather than all going first. Each waiting request ranks by how many of its
call's requests run or come before it in the policy's order, so a lone request is admitted
as soon as a slot frees even behind thousands of one call's samples; the policy's order
stands among equals (and whenever every call is a single request).
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Sequence

from ..kvcache.prefix_cache import PrefixCache, PrefixNode
from .config import POLICIES
from .request import Request

# Beyond this many waiting requests, matching each one every step costs more than it saves.
MAX_QUEUE_FOR_CACHE_AWARE = 128


class SchedulePolicy:
    def __init__(self, name: str, starvation_steps: int = 256) -> None:
        if name not in POLICIES:
            raise ValueError(
                f"schedule_policy: expected one of {', '.join(POLICIES)}; got {name!r}"
            )
        self.name = name
        self.starvation_steps = starvation_steps

    def order(
        self,
        waiting: Sequence[Request],
        cache: PrefixCache,
        step: int,
        running: Sequence[Request] = (),
    ) -> list[Request]:
        starving = [r for r in waiting if step - r.enqueued_step > self.starvation_steps]
        if self.name == "fcfs" or len(waiting) > MAX_QUEUE_FOR_CACHE_AWARE:
            rest = list(waiting)
        elif self.name == "lpm":
            rest = _longest_prefix_first(waiting, cache)
        else:
            rest = _dfs_weight(waiting, cache)
        rest = _calls_take_turns(rest, running)
        if not starving:
            return rest
        first = {id(r) for r in starving}
        return starving + [r for r in rest if id(r) not in first]


def _calls_take_turns(ordered: list[Request], running: Sequence[Request]) -> list[Request]:
    first_call = ordered[0].call if ordered else None
    if all(r.call == first_call for r in ordered):
        return ordered  # one call waits: nothing to share
    held = Counter(r.call for r in running)
    rank: dict[int, int] = {}
    for req in ordered:  # the k-th waiting request of a call running m ranks m + k
        rank[id(req)] = held[req.call]
        held[req.call] += 1
    return sorted(ordered, key=lambda r: rank[id(r)])  # stable: the policy's order among equals


def _longest_prefix_first(waiting: Sequence[Request], cache: PrefixCache) -> list[Request]:
    lengths = {id(r): cache.match_prefix(r.reusable_tokens()).length for r in waiting}
    return sorted(waiting, key=lambda r: -lengths[id(r)])


def _dfs_weight(waiting: Sequence[Request], cache: PrefixCache) -> list[Request]:
    at_node: dict[PrefixNode, list[Request]] = defaultdict(list)
    for req in waiting:
        end = cache.match_prefix(req.reusable_tokens()).node
        if end is None:  # a cache without a tree: nothing to walk
            return list(waiting)
        at_node[end].append(req)
    # weight of a node: waiting requests whose match ends in its subtree
    weight: dict[PrefixNode, int] = defaultdict(int)
    children: dict[PrefixNode, list[PrefixNode]] = defaultdict(list)
    root = None
    for end, reqs in at_node.items():
        node: PrefixNode | None = end
        while node is not None:
            if weight[node] == 0 and node.parent is not None:
                children[node.parent].append(node)
            weight[node] += len(reqs)
            root, node = node, node.parent
    ordered: list[Request] = []
    stack = [root] if root is not None else []
    while stack:
        node = stack.pop()
        ordered.extend(at_node.get(node, ()))
        # heaviest child first: pushed last
        stack.extend(sorted(children[node], key=lambda c: weight[c]))
    return ordered
