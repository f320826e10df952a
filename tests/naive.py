"""A deliberately naive KV cache, written independently of the engine: the reference the
engine's tests (and generation's) compare against.

Token by token; python lists of per-token pre-RoPE K/V; torch.cat and re-rotate everything at
cache positions 0..L each step; attention written out with softmax. The keep/evict rules are
spelled out from the papers, entry by entry, with no shared code.
"""

from __future__ import annotations

import torch

from sepcli import arch


def hf_rope(x, cos, sin):
    """x [B, H, T, D] rotated as HF's Llama does (rotate_half) by cos/sin [B, T, R], R <= D."""
    cos, sin = cos.unsqueeze(1).to(x.dtype), sin.unsqueeze(1).to(x.dtype)
    r = cos.shape[-1]
    x_rot, x_pass = x[..., :r], x[..., r:]
    half = torch.cat((-x_rot[..., r // 2 :], x_rot[..., : r // 2]), dim=-1)
    return torch.cat((x_rot * cos + half * sin, x_pass), dim=-1)


def naive_evict(kept, method, a, s, w):
    """The methods' rules on a python list of entries (oldest first), once it is over budget."""
    if method == "sepllm":
        middle = [e for i, e in enumerate(kept) if e["idx"] >= a and i < len(kept) - w]
        mid_seps = [e for e in middle if e["sep"]]
        # the newest s separators: count them off one by one (no slicing arithmetic)
        keep_ids = set()
        for e in reversed(mid_seps):
            if len(keep_ids) == s:
                break
            keep_ids.add(e["idx"])
        return [e for e in kept if e not in middle or e["idx"] in keep_ids]
    if method == "streamingllm":
        first_recent = next(i for i, e in enumerate(kept) if e["idx"] >= a)
        return kept[:first_recent] + kept[first_recent + 1 :]
    if method == "window":
        return kept[1:]
    return kept


class NaiveRing:
    """``step(token) -> [vocab] fp32 logits`` after feeding ``token``.

    ``official=False``: sepcli's timing, a token attends to at most ``c`` entries with itself
    (evict before it is written). ``official=True``: the timing of the official loops
    (StreamingLLM's eval_long_ppl.py, which SepLLM's streaming evaluation builds on): the token
    attends to the ``c`` cached entries plus itself, and eviction runs after the forward on the
    ``c + 1`` entries that then exist."""

    def __init__(self, model, method, a, s, w, c, sep_ids, official=False):
        self.model, self.method, self.official = model, method, official
        self.a, self.s, self.w, self.c = a, s, w, c
        self.sep_ids = sep_ids
        self.shape = arch.shape_of(model)
        self.layers = arch.decoder_layers(model)
        self.kept = []  # entries: {"idx": text index, "sep": bool, "k": [per layer (Hkv, D)], "v"}
        self.t = 0

    @torch.inference_mode()
    def step(self, tok: int) -> torch.Tensor:
        model, shape, rule = self.model, self.shape, (self.method, self.a, self.s, self.w)
        if not self.official and len(self.kept) + 1 > self.c:
            self.kept = naive_evict(self.kept, *rule)
        entry = {"idx": self.t, "sep": tok in self.sep_ids, "k": [], "v": []}
        self.t += 1
        self.kept.append(entry)
        n = len(self.kept)
        h = arch.embed(model, torch.tensor([[tok]]))
        for li, layer in enumerate(self.layers):
            q, k, v = arch.project_qkv(layer, layer.input_layernorm(h), shape)
            entry["k"].append(k[0, :, 0])
            entry["v"].append(v[0, :, 0])
            keys = torch.stack([e["k"][li] for e in self.kept], dim=1)  # (Hkv, n, D)
            vals = torch.stack([e["v"][li] for e in self.kept], dim=1)
            # HF's own RoPE tables (not sepcli's), rotated by hand: an independent RoPE
            cos, sin = arch.backbone(model).rotary_emb(h, torch.arange(n)[None])  # (1, n, R)
            keys = hf_rope(keys[None], cos, sin)[0]
            qr = hf_rope(q, cos[:, -1:], sin[:, -1:])[0]  # (Hq, 1, D) at position n-1
            keys = keys.repeat_interleave(shape.group, dim=0)
            vals = vals.repeat_interleave(shape.group, dim=0)
            att = torch.softmax((qr @ keys.transpose(-1, -2)) * shape.scale, dim=-1)
            o = (att @ vals)[None]  # (1, Hq, 1, D)
            h = h + arch.attention_output(layer, o)
            h = arch.mlp_block(layer, h)
        if self.official and len(self.kept) > self.c:
            self.kept = naive_evict(self.kept, *rule)
        return arch.logits(model, h)[0, -1].float()


def naive_greedy(model, prompt, n, method, a, s, w, c, sep_ids) -> list[int]:
    """Feed ``prompt`` one token at a time, then take the argmax ``n`` times."""
    ring = NaiveRing(model, method, a, s, w, c, sep_ids)
    for tok in prompt:
        logits = ring.step(tok)
    out = []
    for _ in range(n):
        out.append(int(logits.argmax()))
        logits = ring.step(out[-1])
    return out
