"""Running programs: run_batch, bind, the default backend, streaming, errors and cleanup."""

from __future__ import annotations

import asyncio
import threading
import time
import traceback

import loomlm
import pytest

from ..runtime.helpers import assert_pool_whole

NAMES = ["Lily", "Tom", "Sue", "Ben", "Max", "Anna", "Sam", "Mia", "Tim", "Zoe"]
THINGS = ["ball", "cat", "cake", "tree", "boat", "kite", "book", "hat", "dog", "car"]


@loomlm.function
def small(s, name, thing):
    s += f"{name} had a {thing}. It was"
    s += loomlm.gen("what", max_tokens=6, stop=".")
    s += " so " + loomlm.select("feel", [" happy", " sad", " scared"])


def _threads() -> int:
    """Threads a run starts and must stop. The engine's grammar pool is left out: it starts its
    (at most two) workers on demand, so a test's constraints may add one that lives as long as
    the engine; that bound is asserted on its own."""
    names = [t.name for t in threading.enumerate()]
    assert sum(1 for n in names if n.startswith("loomlm-grammar")) <= 2
    return sum(1 for n in names if n.startswith("loomlm-") and not n.startswith("loomlm-grammar"))


def test_run_batch_of_200_equals_one_by_one(engine, capsys):
    args = [{"name": n, "thing": t} for n in NAMES for t in THINGS] * 2
    before = _threads()
    states = small.run_batch(args, temperature=0, backend=engine, progress_bar=True)
    assert "200/200" in capsys.readouterr().err  # the tqdm bar ran to the end
    assert all(s.error() is None for s in states)
    for a, state in zip(args[:100], states[:100]):
        alone = small.run(**a, temperature=0, backend=engine)
        assert (state["what"], state["feel"], state.text()) == (
            alone["what"],
            alone["feel"],
            alone.text(),
        )
    assert [s.text() for s in states[:100]] == [s.text() for s in states[100:]]
    assert _wait_for(lambda: _threads() <= before)
    assert_pool_whole(engine)


def test_run_batch_over_http_with_positional_arguments(endpoint, engine):
    args = [[n, t] for n, t in zip(NAMES, THINGS)]
    states = small.run_batch(args, temperature=0, backend=endpoint, num_threads=4)
    here = small.run_batch(args, temperature=0, backend=engine, generator_style=True)
    assert [s.text() for s in states] == [s.text() for s in here]


def test_run_batch_caches_the_shared_first_segment(engine):
    backend = loomlm.EngineBackend(engine)
    calls = []
    real = backend.cache_prefix
    backend.cache_prefix = lambda text: (calls.append(text), real(text))
    intro = "Here are short stories about children and the things they love to play with. "

    @loomlm.function
    def prog(s, name):
        s += intro + f"{name} loved" + loomlm.gen("x", max_tokens=3)

    assert engine.flush_cache()
    states = prog.run_batch([{"name": n} for n in NAMES], temperature=0, backend=backend)
    assert calls == [intro]
    intro_tokens = len(engine.tokenizer.encode(intro))
    assert all(s.get_meta_info("x")["cached_tokens"] >= intro_tokens - 1 for s in states)


def test_bind_and_the_default_backend(engine):
    story = small.bind(thing="kite")
    loomlm.set_default_backend(engine)
    try:
        state = story.run(name="Lily", temperature=0)
        assert state.text().startswith("Lily had a kite. It was")
        assert loomlm.get_default_backend() is loomlm.get_default_backend()
    finally:
        loomlm.set_default_backend(None)
    with pytest.raises(ValueError, match="set_default_backend"):
        small.run(name="Lily", thing="kite")
    with pytest.raises(TypeError, match="no argument colour"):
        small.bind(colour="red")


def test_stream_text_iter(backend, engine):
    @loomlm.function
    def prog(s):
        s += "Lily went to the"
        s += loomlm.gen("a", max_tokens=24)
        s += " Then" + loomlm.gen("b", max_tokens=16)

    state = prog.run(stream=True, temperature=0, backend=backend)
    chunks = list(state.text_iter())
    assert len(chunks) > 3  # it came in pieces
    assert "".join(chunks) == state.text()
    assert (
        state["a"]
        == engine.generate("Lily went to the", {"max_new_tokens": 24, "temperature": 0}).text
    )
    again = prog.run(stream=True, temperature=0, backend=backend)
    assert "".join(again.text_iter("b")) == state["b"]


def test_stream_async_iter(backend):
    @loomlm.function
    def prog(s):
        s += "Tom saw a" + loomlm.gen("a", max_tokens=16)

    async def collect() -> tuple[list[str], loomlm.ProgramState]:
        state = prog.run(stream=True, temperature=0, backend=backend)
        return [c async for c in state.text_async_iter("a")], state

    chunks, state = asyncio.run(collect())
    assert len(chunks) > 1 and "".join(chunks) == state["a"]


def test_an_error_in_the_program_reaches_the_caller_with_its_traceback(backend):
    @loomlm.function
    def faulty(s, n):
        s += "Lily had" + loomlm.gen("x", max_tokens=2)
        if n == 3:
            raise KeyError("the program's own bug")

    with pytest.raises(KeyError, match="own bug") as info:
        faulty.run(n=3, backend=backend)
    frames = [f.name for f in traceback.extract_tb(info.value.__traceback__)]
    assert "faulty" in frames


def test_a_failing_primitive_names_itself_and_the_program_line(backend):
    @loomlm.function
    def bad_regex(s):
        s += "Code:" + loomlm.gen("code", regex="[unclosed")

    with pytest.raises(loomlm.ProgramError, match=r"gen\('code'\) at .*test_run.py:\d+") as info:
        bad_regex.run(backend=backend).text()
    assert "regex" in str(info.value.__cause__)


def test_run_batch_keeps_going_past_a_failing_program(backend, engine):
    @loomlm.function
    def prog(s, n):
        if n == 2:
            raise ValueError("program 2 fails")
        s += f"Number {n}:" + loomlm.gen("x", max_tokens=3, regex="[0-9]+" if n != 4 else "[")

    before = _threads()
    states = prog.run_batch([{"n": i} for i in range(6)], temperature=0, backend=backend)
    assert "program 2 fails" in str(states[2].error())
    assert isinstance(states[4].error(), loomlm.ProgramError)
    for i in (0, 1, 3, 5):
        assert states[i].error() is None and states[i]["x"].isdigit()
    assert _wait_for(lambda: _threads() <= before)
    assert_pool_whole(engine)


def test_bad_arguments_are_refused_up_front(engine):
    with pytest.raises(ValueError, match="first argument"):
        loomlm.function(lambda x: None)
    with pytest.raises(TypeError, match="no argument colour"):
        small.run(name="a", thing="b", colour="c", backend=engine)
    with pytest.raises(ValueError, match="choices"):
        loomlm.select("x", [])
    with pytest.raises(ValueError, match="dtype"):
        loomlm.gen("x", dtype=list)
    with pytest.raises(TypeError, match="not int"):

        @loomlm.function
        def prog(s):
            s += 5

        prog.run(backend=engine)


def _wait_for(condition, timeout: float = 5.0) -> bool:
    deadline = time.time() + timeout
    while not condition():
        if time.time() > deadline:
            return False
        time.sleep(0.02)
    return True
