"""Chat templates as the language uses them: a prefix and a suffix around each role's text.

A program writes roles one at a time (`s += user(...)`, then `s += assistant(gen(...))`), so
the language needs each role's opening and closing text, not a renderer of whole chats.
`ChatTemplate.from_jinja` derives them from a model's Jinja chat template by rendering a probe
chat with marker contents and cutting at the markers. Where a model has no template, the plain
`DEFAULT` template (SGLang's) writes "USER:" / "ASSISTANT:" lines.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

logger = logging.getLogger(__name__)

ROLES = ("system", "user", "assistant")


@dataclass(frozen=True, slots=True)
class ChatTemplate:
    """Args:
    name: for messages and logs.
    role_prefix_and_suffix: role -> (text before its content, text after it).
    default_system_prompt: written as a system turn before a chat that starts without one.
    stop_str: strings that end an assistant turn; added to every gen's `stop`.
    """

    name: str
    role_prefix_and_suffix: dict[str, tuple[str, str]]
    default_system_prompt: str | None = None
    stop_str: tuple[str, ...] = field(default=())

    def prefix_and_suffix(self, role: str) -> tuple[str, str]:
        try:
            return self.role_prefix_and_suffix[role]
        except KeyError:
            raise ValueError(
                f"role: the chat template {self.name!r} has no {role!r} role"
            ) from None

    @classmethod
    def from_jinja(
        cls, template: str, bos_token: str | None = None, eos_token: str | None = None
    ) -> ChatTemplate:
        """Derive the roles' prefixes and suffixes from a Hugging Face chat template.

        The template's leading BOS text is dropped: the runtime's tokenizer adds BOS itself.
        Raises ValueError when the template does not render chats turn by turn (a system
        prompt folded into the first user turn, say).
        """
        render = _renderer(template, bos_token or "", eos_token or "")
        marks = {r: f"@@loomlm-{r}@@" for r in ROLES}  # no whitespace: templates trim

        def turns(*roles: str, gen: bool = False) -> str:
            text = render([{"role": r, "content": marks[r]} for r in roles], gen)
            return text[len(bos_token) :] if bos_token and text.startswith(bos_token) else text

        def cut(before: str, after: str, role: str) -> tuple[str, str]:
            if not after.startswith(before) or marks[role] not in after[len(before) :]:
                raise ValueError(f"chat template: the {role} turn is not appended to the chat")
            prefix, suffix = after[len(before) :].split(marks[role])
            return prefix, suffix

        roles: dict[str, tuple[str, str]] = {}
        try:
            roles["system"] = cut("", turns("system"), "system")
            roles["user"] = cut(turns("system"), turns("system", "user"), "user")
            first: tuple[str, ...] = ("system", "user")
        except Exception:  # a template without a system role
            roles.pop("system", None)
            roles["user"] = cut(
                turns("user", "assistant"), turns("user", "assistant", "user"), "user"
            )
            first = ("user",)
        roles["assistant"] = cut(turns(*first), turns(*first, "assistant"), "assistant")
        generation = turns(*first, gen=True)[len(turns(*first)) :]
        if generation and generation != roles["assistant"][0]:
            roles["assistant"] = (generation, roles["assistant"][1])

        default_system = None
        alone = turns("user")
        user_turn = "".join((roles["user"][0], marks["user"], roles["user"][1]))
        lead = alone[: len(alone) - len(user_turn)] if alone.endswith(user_turn) else ""
        if lead and "system" in roles:
            sys_prefix, sys_suffix = roles["system"]
            if lead.startswith(sys_prefix) and lead.endswith(sys_suffix):
                default_system = lead[len(sys_prefix) : len(lead) - len(sys_suffix)]
        end = roles["assistant"][1].strip()
        return cls(
            "jinja",
            roles,
            default_system,
            (end,) if end else (),
        )


def _renderer(template: str, bos_token: str, eos_token: str) -> Any:
    from jinja2.exceptions import TemplateError
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message: str) -> None:
        raise TemplateError(message)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    env.globals["raise_exception"] = raise_exception
    compiled = env.from_string(template)

    def render(messages: list[dict[str, str]], add_generation_prompt: bool) -> str:
        return compiled.render(
            messages=messages,
            add_generation_prompt=add_generation_prompt,
            bos_token=bos_token,
            eos_token=eos_token,
        )

    return render


DEFAULT = ChatTemplate(
    "default",
    {"system": ("SYSTEM:", "\n"), "user": ("USER:", "\n"), "assistant": ("ASSISTANT:", "\n")},
)

CHATML = ChatTemplate(
    "chatml",
    {r: (f"<|im_start|>{r}\n", "<|im_end|>\n") for r in ROLES},
    stop_str=("<|im_end|>",),
)

LLAMA3_INSTRUCT = ChatTemplate(
    "llama-3-instruct",
    {r: (f"<|start_header_id|>{r}<|end_header_id|>\n\n", "<|eot_id|>") for r in ROLES},
    stop_str=("<|eot_id|>",),
)

NAMED = {t.name: t for t in (DEFAULT, CHATML, LLAMA3_INSTRUCT)}


def resolve_template(
    given: ChatTemplate | str | None,
    jinja: str | None,
    bos_token: str | None,
    eos_token: str | None,
) -> ChatTemplate:
    """The template a backend uses: the one given (or its name), else the model's own, else
    the plain default."""
    if isinstance(given, ChatTemplate):
        return given
    if isinstance(given, str):
        if given not in NAMED:
            raise ValueError(f"chat_template: {given!r}; expected one of {sorted(NAMED)}")
        return NAMED[given]
    if jinja:
        try:
            return ChatTemplate.from_jinja(jinja, bos_token, eos_token)
        except Exception as exc:
            logger.warning("the model's chat template cannot be used turn by turn (%s)", exc)
    return DEFAULT
