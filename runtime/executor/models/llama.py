"""The Llama family: Llama (incl. Llama 3 rope scaling), Mistral, Qwen2 (qkv bias), Qwen3 (q/k norm).

Inputs are flattened: a forward sees [T] tokens from many requests at once, and attention
reads and writes the paged KV pool through the forward context. q/k/v and gate/up are fused
into one matmul each (the loader fills the fused weights from the checkpoint's separate ones).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..attention.op import attention
from .config import ModelConfig
from .rope import RotaryEmbedding


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Normalise in float32 and cast back before the weight, exactly as transformers does,
        # so that half-precision results agree with it bit for bit where possible.
        dtype = x.dtype
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x32.to(dtype)


class Attention(nn.Module):
    def __init__(self, config: ModelConfig, layer_id: int, rotary: RotaryEmbedding) -> None:
        super().__init__()
        self.layer_id = layer_id
        self.num_heads = config.num_heads
        self.num_kv_heads = config.num_kv_heads
        self.head_dim = config.head_dim
        self.q_size = config.num_heads * config.head_dim
        self.kv_size = config.num_kv_heads * config.head_dim
        self.qkv_proj = nn.Linear(
            config.hidden_size, self.q_size + 2 * self.kv_size, bias=config.attention_bias
        )
        self.o_proj = nn.Linear(self.q_size, config.hidden_size, bias=False)
        self.q_norm = RMSNorm(config.head_dim, config.rms_norm_eps) if config.qk_norm else None
        self.k_norm = RMSNorm(config.head_dim, config.rms_norm_eps) if config.qk_norm else None
        self.rotary = rotary

    def forward(
        self, positions: torch.Tensor, x: torch.Tensor, keep: torch.Tensor | None = None
    ) -> torch.Tensor:
        qkv = self.qkv_proj(x)
        q, k, v = qkv.split([self.q_size, self.kv_size, self.kv_size], dim=-1)
        q = q.view(-1, self.num_heads, self.head_dim)  # [T, H, D]
        k = k.view(-1, self.num_kv_heads, self.head_dim)  # [T, Hkv, D]
        v = v.view(-1, self.num_kv_heads, self.head_dim)
        if self.q_norm is not None and self.k_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        q, k = self.rotary(positions, q, k)
        out = attention(q, k, v, self.layer_id)  # [T, H, D]; reads and writes the pool
        out = out.reshape(-1, self.q_size)
        if keep is not None:  # every token's k/v is in the pool; only these rows go on
            out = out[keep]
        return self.o_proj(out)


class MLP(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.intermediate = config.intermediate_size
        self.gate_up_proj = nn.Linear(config.hidden_size, 2 * config.intermediate_size, bias=False)
        self.down_proj = nn.Linear(config.intermediate_size, config.hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.gate_up_proj(x).split(self.intermediate, dim=-1)
        return self.down_proj(F.silu(gate) * up)


class DecoderLayer(nn.Module):
    def __init__(self, config: ModelConfig, layer_id: int, rotary: RotaryEmbedding) -> None:
        super().__init__()
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.self_attn = Attention(config, layer_id, rotary)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.mlp = MLP(config)

    def forward(
        self, positions: torch.Tensor, x: torch.Tensor, keep: torch.Tensor | None = None
    ) -> torch.Tensor:
        """The layer's output for the rows `keep` (all rows when None)."""
        h = self.self_attn(positions, self.input_layernorm(x), keep)
        x = (x if keep is None else x[keep]) + h
        return x + self.mlp(self.post_attention_layernorm(x))


class LlamaForCausalLM(nn.Module):
    """Returns final hidden states of the rows asked for; `logits` turns them into logits."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        rotary = RotaryEmbedding(config.rope, config.head_dim, config.max_position_embeddings)
        self.rotary = rotary
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(
            DecoderLayer(config, i, rotary) for i in range(config.num_layers)
        )
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.lm_head: nn.Module | None = None  # tied: the embedding serves as the head
        # Tied, in batch-invariant mode: the embedding packed for the row-wise linear kernel
        # (F.linear's blocking depends on the number of rows); kept equal to the embedding.
        self.tied_head: nn.Module | None = None
        if not config.tie_word_embeddings:
            self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)

    def forward(
        self, input_ids: torch.Tensor, positions: torch.Tensor, keep: torch.Tensor
    ) -> torch.Tensor:
        """Final hidden states of the rows `keep` (ascending token indices). Every token's keys
        and values reach the pool, but past the last layer's attention only the kept rows go
        on: a prefill that samples one token skips that layer's output projection and MLP
        for the rest (6% of the benchmark model's matrix products)."""
        x = self.embed_tokens(input_ids)
        *layers, last = self.layers
        for layer in layers:
            x = layer(positions, x)
        return self.norm(last(positions, x, keep))

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        if self.lm_head is None:
            if self.tied_head is not None:
                return self.tied_head(hidden).float()
            return F.linear(hidden, self.embed_tokens.weight).float()
        return self.lm_head(hidden).float()
