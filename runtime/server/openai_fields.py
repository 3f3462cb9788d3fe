"""Which request fields the OpenAI endpoints know, and what becomes of each.

The policy, so that users can predict it:
- every field of OpenAI's published chat and completions schemas is accepted; those with a
  meaning here are implemented, the rest (`IGNORED`) accepted without effect;
- vLLM's and SGLang's extension fields are accepted with their meaning (the guided /
  structured outputs become the engine's constraint kinds);
- a known field whose meaning is not implemented here (`REFUSED`) is a 400 when it asks for
  something (a value other than its default), since ignoring it would change the result;
- a field nobody defines is ignored with a warning naming it (vLLM's behaviour), or refused
  with `--strict-fields`.
Bad values of known fields are 400s naming the field, as before.
"""

from __future__ import annotations

import logging
from typing import Any

from ..constrained.request_formats import response_format_params
from ..utils.checks import shown
from .http_io import HTTPError

logger = logging.getLogger("loomlm.server")

# OpenAI name -> sampling_params name, for fields that map one to one.
RENAMED = {
    "temperature": "temperature",
    "top_p": "top_p",
    "n": "n",
    "stop": "stop",
    "seed": "seed",
    "presence_penalty": "presence_penalty",
    "frequency_penalty": "frequency_penalty",
    "logit_bias": "logit_bias",
    # SGLang's and vLLM's extensions, passed the same way
    "top_k": "top_k",
    "min_p": "min_p",
    "repetition_penalty": "repetition_penalty",
    "min_tokens": "min_new_tokens",
    "ignore_eos": "ignore_eos",
    "regex": "regex",
    "json_schema": "json_schema",
    "ebnf": "ebnf",
    "stop_token_ids": "stop_token_ids",
    "skip_special_tokens": "skip_special_tokens",
    "no_stop_trim": "no_stop_trim",
    "include_stop_str_in_output": "no_stop_trim",  # vLLM's name
    "guided_json": "json_schema",
    "guided_regex": "regex",
    "guided_choice": "choices",
    "guided_grammar": "ebnf",
}

# Implemented by the endpoints themselves (beyond RENAMED).
COMMON = {"model", "max_tokens", "response_format", "stream", "stream_options", "rid"}
COMMON |= {"request_id", "structured_outputs"}
COMPLETION_ONLY = {"prompt", "echo", "logprobs", "suffix", "best_of"}
CHAT_ONLY = {
    "messages",
    "max_completion_tokens",
    "logprobs",
    "top_logprobs",
    "tools",
    "tool_choice",
    "parallel_tool_calls",
    "functions",  # OpenAI's deprecated forms of tools and tool_choice
    "function_call",
    "add_generation_prompt",
    "continue_final_message",
    "chat_template_kwargs",
    "modalities",
    "separate_reasoning",  # SGLang's: with --reasoning-parser
    "stream_reasoning",
}

# OpenAI's fields without an effect on what this server computes (billing, storage, caching
# hints, moderation, hosted tools), and other servers' scheduling hints.
IGNORED = {
    "user",
    "metadata",
    "store",
    "service_tier",
    "prompt_cache_key",
    "prompt_cache_options",
    "prompt_cache_retention",
    "safety_identifier",
    "moderation",
    "reasoning_effort",  # only reasoning templates read it: pass it in chat_template_kwargs
    "verbosity",
    "prediction",  # a speculation hint: the output does not depend on it
    "web_search_options",  # this server never reaches the network for a client
    "priority",
    "guided_decoding_backend",
    "spaces_between_special_tokens",
}

# Known fields whose meaning is not implemented here, with what they would have needed: a
# 400 when they ask for anything, since ignoring them would change the result.
REFUSED = {
    "audio": "audio output is not supported",
    "use_beam_search": "beam search is not supported",
    "allowed_token_ids": "not supported; use logit_bias or a regex constraint",
    "bad_words": "not supported; use logit_bias",
    "prompt_logprobs": "not supported; use /v1/completions with echo and logprobs",
    "truncate_prompt_tokens": "not supported",
    "logits_processors": "not supported",
    "lora_path": "LoRA adapters are not supported",
    "return_hidden_states": "not supported",
    "guided_whitespace_pattern": "not supported",
    "structural_tag": "not supported",
    "chat_template": "a client's template is not rendered; start the server with --chat-template",
}

CHAT_FIELDS = set(RENAMED) | COMMON | CHAT_ONLY | IGNORED | set(REFUSED)
COMPLETION_FIELDS = set(RENAMED) | COMMON | COMPLETION_ONLY | IGNORED | set(REFUSED)

_warned: set[str] = set()  # unknown names already logged (bounded: a client picks the names)


def screen_fields(body: dict[str, Any], known: set[str], strict: bool) -> None:
    """Refuse known-but-unimplemented fields that ask for something; warn about (or, strict,
    refuse) unknown ones."""
    for name, why in REFUSED.items():
        if body.get(name) not in (None, False, [], {}, "", "none"):
            raise HTTPError(400, f"{name}: {why}")
    modalities = body.get("modalities")
    if modalities is not None and modalities != ["text"]:
        raise HTTPError(400, f"modalities: only ['text'] is supported, got {shown(modalities)}")
    unknown = sorted(set(body) - known)
    if not unknown:
        return
    if strict:
        raise HTTPError(400, f"{', '.join(unknown)}: unrecognized request field(s)")
    new = [n for n in unknown if n not in _warned]
    if new:
        logger.warning("ignoring unrecognized request field(s): %s", ", ".join(map(shown, new)))
        if len(_warned) < 256:
            _warned.update(new)


def constraint_params(body: dict[str, Any]) -> dict[str, Any]:
    """`response_format` and vLLM's `structured_outputs` as sampling_params keys."""
    params: dict[str, Any] = {}
    try:
        if body.get("response_format") is not None:
            params.update(response_format_params(body["response_format"]))
    except ValueError as exc:
        raise HTTPError(400, str(exc)) from None
    outputs = body.get("structured_outputs")
    if outputs is not None:
        if not isinstance(outputs, dict):
            raise HTTPError(400, f"structured_outputs: expected an object, got {shown(outputs)}")
        kinds = {"json": "json_schema", "regex": "regex", "choice": "choices", "grammar": "ebnf"}
        for key, value in outputs.items():
            if key in kinds and value is not None:
                params[kinds[key]] = value
            elif key == "json_object" and value:
                params["json_schema"] = {"type": "object"}
            elif key not in ("json_object", "disable_any_whitespace", "backend") and value:
                raise HTTPError(
                    400,
                    f"structured_outputs.{key}: not supported; expected json, regex, choice, "
                    "grammar or json_object",
                )
    return params
