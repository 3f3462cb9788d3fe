"""Constrained decoding: regexes, JSON schemas, choices and grammars as token-level matchers.

A request's constraint (`constraint.Constraint`) is compiled once per (constraint, tokenizer)
by a grammar backend into a `CompiledGrammar`; each request gets its own `Matcher` from it.
Every decode step, each constrained request's matcher writes its allowed tokens into one
packed int32 bitmask row, and the whole batch's rows are applied to the logits in one tensor
operation (`bitmask.apply_token_bitmask_`). Where the matcher admits exactly one
continuation, `jump_forward` appends it without running the model token by token.

(No imports here: the language reads `constraint.py` without loading torch.)
"""
