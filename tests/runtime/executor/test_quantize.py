"""Weight-only int8 quantization at load: the layer computes with its quantized weight, the
held-out perplexity stays within 1% of the unquantized model's (the built-in model in float32
and bfloat16, random-weight models of every architecture), outputs are deterministic, the
weights take fewer bytes, and what cannot be quantized says so."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from loomlm.runtime import Engine
from loomlm.runtime.engine.perplexity import HELDOUT_TEXT, perplexity, token_logprobs
from loomlm.runtime.executor.cpu_kernels import int8_linear
from loomlm.runtime.executor.quantize import Int8Linear, quantize_int8, weight_bytes
from torch import nn

from ..checkpoints import make_checkpoint

GREEDY = {"max_new_tokens": 32, "temperature": 0, "ignore_eos": True}


@pytest.mark.parametrize("path", ["vnni", "widen", "torch"])
@pytest.mark.parametrize(
    ("k", "n", "dtype"),
    [(64, 48, torch.float32), (172, 70, torch.bfloat16), (172, 130, torch.float32)],
)
def test_int8_linear_computes_with_its_quantized_weight(monkeypatch, path, k, n, dtype):
    """Every product (our VNNI and widening kernels where they run, torch's op) against the
    dequantized weight, over ragged sizes: rows past a tile, outputs past a block, K off 16.
    VNNI quantizes the activations too, so it is held to a looser bound."""
    monkeypatch.setenv("LOOMLM_INT8_KERNEL", path)
    if int8_linear.mode(dtype) != path:
        pytest.skip(f"the {path} int8 kernel does not run here")
    torch.manual_seed(0)
    linear = nn.Linear(k, n, bias=True).to(dtype)
    q, scale = quantize_int8(linear.weight)
    assert q.dtype == torch.int8
    # symmetric rounding: every weight within half a step of its row's scale
    error = (linear.weight.float() - q.float() * scale[:, None]).abs()
    assert bool((error <= scale[:, None] / 2 + 1e-6).all())
    layer = Int8Linear(linear)
    assert layer.mode == path
    kept = scale.to(dtype).float() if path == "torch" else scale  # the kernels keep float32
    torch.testing.assert_close(layer.dequantized(), q.float() * kept[:, None])
    for rows in (1, 5, 13):
        x = torch.randn(rows, k).to(dtype)
        want = F.linear(x.float(), layer.dequantized(), linear.bias.float())
        tol = 1e-4 if dtype == torch.float32 else 5e-2
        if path == "vnni":  # each row's activations rounded to 1/127 of its largest
            tol = 2e-2 if dtype == torch.float32 else 6e-2
        torch.testing.assert_close(layer(x).float(), want, atol=tol, rtol=tol)
    assert layer(x[None]).shape == (1, 13, n)  # leading dimensions kept


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_builtin_model_perplexity_within_one_percent(dtype):
    with Engine(dtype=dtype) as plain:
        base = perplexity(plain)
        layer_bytes = weight_bytes(plain.model.layers)
        element = next(plain.model.parameters()).element_size()
        out_plain = plain.generate("Once upon a time", GREEDY).output_ids
    with Engine(dtype=dtype, quantization="int8") as quant:
        ppl = perplexity(quant)
        # a byte per weight, plus scales, norms and the kernels' padding to blocks of 64
        # outputs (a large share of this tiny model's 64- and 172-wide layers)
        assert weight_bytes(quant.model.layers) <= layer_bytes / element * 1.3
        first = quant.generate("Once upon a time", GREEDY).output_ids
        assert quant.generate("Once upon a time", GREEDY).output_ids == first  # deterministic
    assert ppl <= base * 1.01, (ppl, base)
    assert sum(a == b for a, b in zip(first, out_plain)) >= 16  # and it mostly agrees


@pytest.mark.parametrize("name", ["llama", "qwen2", "qwen3", "mistral-window", "llama3-rope"])
def test_every_architecture_runs_quantized(tmp_path, name):
    """Random weights, the built-in tokenizer's ids of the held-out text (same vocabulary)."""
    path = make_checkpoint(tmp_path, name)
    with Engine(dtype="float32") as tokens:
        ids = tokens.tokenizer.encode(HELDOUT_TEXT.read_text())[:600]
    scores = {}
    for scheme in (None, "int8"):
        with Engine(path, skip_tokenizer_init=True, quantization=scheme, enforce_eager=True) as e:
            lps = token_logprobs(e, ids, window=200)
            scores[scheme] = -sum(lps) / len(lps)
            runs = [e.generate(input_ids=ids[:20], sampling_params=GREEDY).output_ids for _ in "ab"]
            assert runs[0] == runs[1]
    # perplexity ratio = exp(difference of mean negative logprobs)
    assert torch.tensor(scores["int8"] - scores[None]).exp().item() <= 1.01, scores


def test_what_cannot_be_quantized_says_so():
    with pytest.raises(ValueError, match="quantization: 'int3' is not a supported scheme"):
        Engine(quantization="int3")
    with pytest.raises(ValueError, match="quantization: not available in deterministic mode"):
        Engine(quantization="int8", deterministic=True)
    with Engine(quantization="int8") as e:
        with pytest.raises(ValueError, match="quantized its weights at load"):
            e.update_weights_from_tensor([("model.norm.weight", torch.ones(64))])


def test_an_untied_head_is_quantized_unless_kept(tmp_path):
    path = make_checkpoint(tmp_path, "llama")  # untied head
    with Engine(path, skip_tokenizer_init=True, quantization="int8", enforce_eager=True) as e:
        assert isinstance(e.model.lm_head, Int8Linear)
    with Engine(
        path,
        skip_tokenizer_init=True,
        quantization="int8",
        quantization_keep_lm_head=True,
        enforce_eager=True,
    ) as e:
        assert not isinstance(e.model.lm_head, Int8Linear)
        assert isinstance(e.model.layers[0].mlp.down_proj, Int8Linear)
