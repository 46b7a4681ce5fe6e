"""Does packing change what a model learns? A check with a small causal transformer (needs torch).

Inside a packed row, each item must see only itself: with position ids restarting per item and
attention limited to the item (a block-diagonal causal mask from `seq_lens`, or flash-attention's
varlen kernel with `cu_seqlens`), the per-token loss of an item inside the row equals its loss
computed alone. `packed_vs_alone` measures the largest difference; the tests and
benchmarks/pack_gpu.py use it, and it shows a wrong mask (plain causal attention over the row)
at once.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from .reader import block_causal_mask


def varlen_backend() -> Optional[str]:
    """The varlen attention kernel this machine has: "flash_attn" (the flash-attn package),
    "torch" (PyTorch's own `torch.nn.attention.varlen.varlen_attn`, a flash kernel in torch
    2.10 and later), or None. Both need a CUDA device and fp16/bf16 tensors."""
    try:
        import flash_attn  # noqa: F401

        return "flash_attn"
    except ImportError:
        pass
    try:
        from torch.nn.attention.varlen import varlen_attn  # noqa: F401

        return "torch"
    except ImportError:
        return None


def varlen_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu_seqlens: torch.Tensor, max_seqlen: int) -> torch.Tensor:
    """Causal attention inside each packed item: q, k, v [total tokens, heads, head_dim],
    cu_seqlens int32 [items + 1]; returns [total tokens, heads, head_dim]. Uses flash-attn's
    `flash_attn_varlen_func` when installed, else PyTorch's `varlen_attn`.

    Raises RuntimeError when neither kernel is available."""
    backend = varlen_backend()
    if backend == "flash_attn":
        from flash_attn import flash_attn_varlen_func

        return flash_attn_varlen_func(q, k, v, cu_seqlens, cu_seqlens, max_seqlen, max_seqlen, causal=True)
    if backend == "torch":
        import inspect

        from torch.nn.attention.varlen import varlen_attn

        # torch 2.10 spells causality `is_causal`; later releases a (left, right) window.
        causal = {"is_causal": True} if "is_causal" in inspect.signature(varlen_attn).parameters else {"window_size": (-1, 0)}
        return varlen_attn(q, k, v, cu_seqlens, cu_seqlens, max_seqlen, max_seqlen, **causal)
    raise RuntimeError("no varlen attention kernel: install flash-attn, or torch >= 2.10 on a CUDA device")


class TinyCausalLM(nn.Module):
    """A pre-norm transformer decoder with learned absolute positions (indexed by position_ids).

    attention: "mask" (SDPA with a boolean [L, L] mask per row), "varlen" (causal attention inside
    each cu_seqlens segment by `varlen_attention`: CUDA, half precision), or "causal" (plain causal
    attention over the whole row: the wrong choice for packed rows, kept to show the difference)."""

    def __init__(self, vocab_size: int, dim: int = 64, heads: int = 4, layers: int = 2, max_positions: int = 8192):
        super().__init__()
        self.heads = heads
        self.embed = nn.Embedding(vocab_size, dim)
        self.positions = nn.Embedding(max_positions, dim)
        self.blocks = nn.ModuleList(
            nn.ModuleDict({"norm1": nn.LayerNorm(dim), "qkv": nn.Linear(dim, 3 * dim), "out": nn.Linear(dim, dim),
                           "norm2": nn.LayerNorm(dim), "up": nn.Linear(dim, 4 * dim), "down": nn.Linear(4 * dim, dim)})
            for _ in range(layers)
        )
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, vocab_size, bias=False)

    def forward(self, input_ids: torch.Tensor, position_ids: torch.Tensor, attention: str = "mask",
                mask: Optional[torch.Tensor] = None, cu_seqlens: Optional[torch.Tensor] = None, max_seqlen: int = 0) -> torch.Tensor:
        """input_ids, position_ids: [B, L]; mask: bool [B, L, L] for "mask"; cu_seqlens (int32) and
        max_seqlen for "varlen" (B = 1). Returns logits [B, L, vocab]."""
        x = self.embed(input_ids) + self.positions(position_ids)
        batch, length, dim = x.shape
        head_dim = dim // self.heads
        for block in self.blocks:
            q, k, v = block["qkv"](block["norm1"](x)).split(dim, dim=-1)
            if attention == "varlen":
                shape = (batch * length, self.heads, head_dim)
                attended = varlen_attention(q.reshape(shape), k.reshape(shape), v.reshape(shape), cu_seqlens,
                                            max_seqlen).reshape(batch, length, dim)
            else:
                q, k, v = (t.view(batch, length, self.heads, head_dim).transpose(1, 2) for t in (q, k, v))
                if attention == "causal":
                    attended = F.scaled_dot_product_attention(q, k, v, is_causal=True)
                else:
                    attended = F.scaled_dot_product_attention(q, k, v, attn_mask=mask[:, None])
                attended = attended.transpose(1, 2).reshape(batch, length, dim)
            x = x + block["out"](attended)
            x = x + block["down"](F.gelu(block["up"](block["norm2"](x))))
        return self.head(self.norm(x))


def token_losses(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per-token loss [B, L - 1] of predicting labels[:, t + 1] from position t; 0 where -100."""
    return F.cross_entropy(logits[:, :-1].transpose(1, 2).float(), labels[:, 1:], ignore_index=-100, reduction="none")


@torch.no_grad()
def packed_vs_alone(model: TinyCausalLM, input_ids: torch.Tensor, labels: torch.Tensor, position_ids: torch.Tensor,
                    seq_lens: list[int], attention: str = "mask") -> float:
    """Largest |loss inside the packed row - loss of the item alone| over every token of every
    item of one row (tensors [L]); 0 up to rounding when packing is sound."""
    cu = torch.tensor([0, *torch.tensor(seq_lens).cumsum(0).tolist()], dtype=torch.int32, device=input_ids.device)
    used = int(cu[-1])
    length = len(input_ids)
    if length > used:  # padding: a segment of its own
        cu = torch.cat([cu, torch.tensor([length], dtype=torch.int32, device=cu.device)])
    kwargs = {}
    if attention == "mask":
        kwargs["mask"] = block_causal_mask(cu, length)[None]
    elif attention == "varlen":
        kwargs.update(cu_seqlens=cu, max_seqlen=int((cu[1:] - cu[:-1]).max()))
    packed = token_losses(model(input_ids[None], position_ids[None], attention, **kwargs), labels[None])[0]
    worst = 0.0
    for start, end in zip(cu[:-1].tolist()[: len(seq_lens)], cu[1:].tolist()):
        n = end - start
        if attention == "varlen":
            alone_kwargs = {"cu_seqlens": torch.tensor([0, n], dtype=torch.int32, device=input_ids.device), "max_seqlen": n}
        else:  # an item alone: plain causal attention is right
            alone_kwargs = {"mask": torch.ones(n, n, dtype=torch.bool, device=input_ids.device).tril()[None]}
        logits = model(input_ids[None, start:end], position_ids[None, start:end], "varlen" if attention == "varlen" else "mask", **alone_kwargs)
        alone = token_losses(logits, labels[None, start:end])[0]
        worst = max(worst, float((packed[start : end - 1] - alone).abs().max()) if n > 1 else 0.0)
        if not math.isfinite(worst):
            return math.inf
    return worst
