"""Rope frequencies (Llama 3 scaling included) equal transformers' own."""

from __future__ import annotations

import torch
from loomlm.runtime.executor.models.config import ModelConfig
from loomlm.runtime.executor.models.rope import inverse_frequencies

from ..checkpoints import COMMON


def test_llama3_inverse_frequencies_match_transformers():
    from transformers import LlamaConfig
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    params = {
        "rope_type": "llama3",
        "rope_theta": 500000.0,
        "factor": 8.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 8192,
    }
    hf_config = LlamaConfig(
        **{
            **COMMON,
            "hidden_size": 256,
            "num_attention_heads": 2,
            "max_position_embeddings": 131072,
            "rope_parameters": params,
        }
    )
    ref, _ = ROPE_INIT_FUNCTIONS["llama3"](hf_config, "cpu")
    ours_cfg = ModelConfig.from_dict({**hf_config.to_dict(), "architectures": ["LlamaForCausalLM"]})
    ours = inverse_frequencies(ours_cfg.rope, ours_cfg.head_dim)
    assert ours_cfg.rope.kind == "llama3"
    assert torch.allclose(ours, ref.float(), rtol=1e-6)


def test_transformers4_style_rope_fields_are_read():
    raw = {
        **COMMON,
        "architectures": ["LlamaForCausalLM"],
        "rope_theta": 1e6,
        "rope_scaling": {"rope_type": "linear", "factor": 2.0},
    }
    cfg = ModelConfig.from_dict(raw)
    assert (cfg.rope.theta, cfg.rope.kind, cfg.rope.factor) == (1e6, "linear", 2.0)
