"""SGLang programs run with only the import changed: `import loomlm as sgl`."""

from __future__ import annotations

import loomlm as sgl

# SGLang's frontend API (sglang.lang), less what needs images, video or other vendors.
SGLANG_NAMES = [
    "Engine",
    "RuntimeEndpoint",
    "assistant",
    "assistant_begin",
    "assistant_end",
    "flush_cache",
    "function",
    "gen",
    "gen_int",
    "gen_string",
    "get_server_info",
    "greedy_token_selection",
    "select",
    "set_default_backend",
    "system",
    "system_begin",
    "system_end",
    "token_length_normalized",
    "unconditional_likelihood_normalized",
    "user",
    "user_begin",
    "user_end",
]


def test_the_frontend_names_exist():
    missing = [n for n in SGLANG_NAMES if not hasattr(sgl, n)]
    assert not missing


@sgl.function
def few_shot_qa(s, question):
    s += "The following are questions with answers.\n\n"
    s += "Q: What is the capital of France?\nA: Paris\n"
    s += "Q: " + question + "\n"
    s += "A:" + sgl.gen("answer", stop="\n", temperature=0)


@sgl.function
def parallel_decoding(s, topic):
    s += "Write an expert answer about " + topic + ".\n"
    s += "Two tips:\n1." + sgl.gen("tip_1", max_tokens=8, stop="\n") + "\n"
    s += "2." + sgl.gen("tip_2", max_tokens=8, stop="\n") + "\n"
    forks = s.fork(2)
    for i in range(2):
        forks[i] += f"Now, expand tip {i + 1} into a paragraph:\n"
        forks[i] += sgl.gen("detailed_tip", max_tokens=12, stop="\n\n")
    s += "Tip 1:" + forks[0]["detailed_tip"] + "\n"
    s += "Tip 2:" + forks[1]["detailed_tip"] + "\n"
    s += "In summary" + sgl.gen("summary", max_tokens=8)


@sgl.function
def decode_int(s):
    s += "The number of hours in a day is " + sgl.gen_int("hours") + "\n"
    s += "The number of days in a year is " + sgl.gen_int("days") + "\n"


@sgl.function
def multi_turn(s, q1, q2):
    s += sgl.system("You are a helpful assistant.")
    s += sgl.user(q1)
    s += sgl.assistant(sgl.gen("answer_1", max_tokens=12))
    s += sgl.user(q2)
    s += sgl.assistant(sgl.gen("answer_2", max_tokens=12))


def test_sglang_test_programs_run_on_both_backends(engine, endpoint):
    for backend in (engine, endpoint):
        sgl.set_default_backend(backend)
        try:
            assert (
                few_shot_qa.run(question="What is the capital of Spain?", max_new_tokens=8)[
                    "answer"
                ]
                is not None
            )
            state = parallel_decoding.run(topic="cats", temperature=0)
            assert "Tip 1:" in state.text() and "In summary" in state.text()
            ints = decode_int.run(temperature=0, max_new_tokens=4)
            assert ints["hours"].strip().lstrip("+-").isdigit()
            chat = multi_turn.run(q1="Hi", q2="Tell me a story", temperature=0)
            assert [m["role"] for m in chat.messages()] == ["system", "user", "assistant"] * 1 + [
                "user",
                "assistant",
            ]
        finally:
            sgl.set_default_backend(None)
