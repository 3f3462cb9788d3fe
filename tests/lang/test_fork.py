"""fork / join: what branches see, how join brings them back, and the shared prefix's cache."""

from __future__ import annotations

import loomlm

# Long enough (> 32 tokens) that the engine computes it once for all branches.
PARENT = (
    "Once upon a time, there was a little girl named Lily. She loved to play outside in the "
    "sun with her dog Max. One day, Lily and Max went to the park to find a big red ball."
)


def test_branches_see_the_parent_not_each_other(backend):
    @loomlm.function
    def prog(s):
        s += PARENT
        forks = s.fork(3)
        forks += [f" Branch {i} says" for i in range(3)]
        forks += loomlm.gen("said", max_tokens=6)
        forks.join()
        s["seen"] = [f.text() for f in forks]

    state = prog.run(temperature=0, backend=backend)
    seen = state["seen"]
    for i, text in enumerate(seen):
        assert text.startswith(PARENT + f" Branch {i} says")
        assert all(f"Branch {j}" not in text for j in range(3) if j != i)
    # gather_variable: the branches' new variables come back as lists, in branch order
    assert state["said"] == [t[len(PARENT + f" Branch {i} says") :] for i, t in enumerate(seen)]
    assert state.text() == PARENT  # the parent's text is untouched


def test_join_concat_appends_in_branch_order(backend):
    @loomlm.function
    def prog(s):
        s += PARENT
        forks = s.fork(3)
        forks += lambda i: f" <{i}>" + loomlm.gen("g", max_tokens=4)
        forks.join("concate_and_append")
        s += " End."

    state = prog.run(temperature=0, backend=backend)
    text = state.text()
    assert text.startswith(PARENT + " <0>") and text.endswith(" End.")
    assert text.index("<0>") < text.index("<1>") < text.index("<2>")


def test_the_shared_prefix_is_computed_once(backend, engine):
    """Every branch but the first finds the parent's text cached."""
    assert backend.flush_cache()
    prefix_tokens = len(engine.tokenizer.encode(PARENT))

    @loomlm.function
    def prog(s):
        s += PARENT
        forks = s.fork(4)
        forks += lambda i: f" Idea {i}:" + loomlm.gen("idea", max_tokens=4)
        forks.join()
        s["metas"] = [f.get_meta_info("idea") for f in forks]

    metas = prog.run(temperature=0, backend=backend)["metas"]
    cached = sorted(m["cached_tokens"] for m in metas)
    assert cached[0] < prefix_tokens - 2  # the first computed it
    assert all(c >= prefix_tokens - 2 for c in cached[1:])  # the others reused it


def test_copy_is_a_one_branch_fork(backend):
    @loomlm.function
    def prog(s):
        s += "Tom had a ball."
        with s.copy() as c:
            c += " Aside" + loomlm.gen("aside", max_tokens=3)
        s += " Main"

    state = prog.run(temperature=0, backend=backend)
    assert state.text() == "Tom had a ball. Main"
    assert isinstance(state["aside"], list) and len(state["aside"]) == 1


def test_nested_forks(backend):
    @loomlm.function
    def prog(s):
        s += "Lily had two cats."
        outer = s.fork(2)
        for i, branch in enumerate(outer):
            branch += f" Cat {i}"
            inner = branch.fork(2)
            inner += lambda j: f" kitten {j}" + loomlm.gen("k", max_tokens=2)
            inner.join("concate_and_append")
        outer.join("concate_and_append")

    text = prog.run(temperature=0, backend=backend).text()
    order = [text.index(m) for m in (" Cat 0", " kitten 0", " kitten 1", " Cat 1")]
    assert order == sorted(order) and text.count(" kitten 0") == 2
