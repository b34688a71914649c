"""
nanoDMoE model: a GPT (nanoGPT shape) whose feed-forward layer can be a Mixture-of-Experts.

- GPTConfig.moe_layers chooses which blocks get an MoE instead of a dense MLP ("Group then Scale",
  step 2 picks those layers; upcycle.py builds the MoE from a trained dense model, step 4).
- MoE routes every token either by the sequence's language group (stage 1: routing="group") or by a
  learned softmax -> top-k router (stage 2: routing="learned"); see MoE.forward. adapt.py's keep_out
  adds a context part to the router (GPTConfig.router_context: the mean of the token's prefix).
- The experts run as ONE fused dropless dispatch: sort the (token, slot) pairs by expert, one gather,
  one grouped matmul over all experts, one weighted scatter back. No Python loop over experts, and the
  shapes do not depend on the routing, so torch.compile traces the layer once.
- Checkpoint helpers at the bottom: atomic save, load with one-line errors, rebuild a model.
"""

import math
import os
from dataclasses import dataclass, field

import torch
import torch.nn as nn
from torch.nn import functional as F

from common import atomic_open

# newer torch exposes F.grouped_mm, older only the private torch._grouped_mm (same signature)
grouped_mm = getattr(F, "grouped_mm", None) or getattr(torch, "_grouped_mm", None)


@dataclass
class GPTConfig:
    vocab_size: int = 8192  # number of token ids (the compact multilingual vocabulary of tokenizer.py)
    block_size: int = 256  # maximum context length (learned position embeddings)
    n_layer: int = 4  # number of transformer blocks
    n_head: int = 4  # attention heads per block
    n_embd: int = 256  # model width d; the FFN hidden width is 4d
    dropout: float = 0.0  # dropout on embeddings, attention and residual branches (0 for pretraining)
    bias: bool = True  # biases in Linear layers and LayerNorms (as GPT-2)
    moe_layers: list[int] = field(default_factory=list)  # block indices whose FFN is an MoE ([] = dense)
    n_experts: int = 0  # experts per MoE layer (DMoE: one per language group)
    top_k: int = 2  # experts per token under learned routing (weights renormalised over the k)
    router_context: bool = False  # routers also see each token's prefix mean (adapt.py's keep_out)


# -----------------------------------------------------------------------------
# the dense building blocks (as nanoGPT)


class CausalSelfAttention(nn.Module):
    def __init__(self, config):
        super().__init__()
        assert config.n_embd % config.n_head == 0
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)  # q, k, v at once
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.attn_dropout = config.dropout
        self.resid_dropout = nn.Dropout(config.dropout)
        self.n_head = config.n_head

    def forward(self, x):
        B, T, C = x.size()
        q, k, v = self.c_attn(x).split(C, dim=2)
        q = q.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, nh, T, hs)
        k = k.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, nh, T, hs)
        v = v.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, nh, T, hs)
        y = F.scaled_dot_product_attention(
            q, k, v, dropout_p=self.attn_dropout if self.training else 0.0, is_causal=True
        )  # (B, nh, T, hs)
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # (B, T, C)
        return self.resid_dropout(self.c_proj(y))


class MLP(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=config.bias)
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x):
        return self.dropout(self.c_proj(F.gelu(self.c_fc(x))))  # (B, T, C)


# -----------------------------------------------------------------------------
# the Mixture-of-Experts FFN


class MoE(nn.Module):
    """
    E copies of the MLP stored as stacked tensors, plus a router Linear(d, E, bias=False).
    Expert e computes  y = gelu(x @ w_fc[e] + b_fc[e]) @ w_proj[e] + b_proj[e]  (same as MLP, with the
    weights stored (in, out) so that expert e's w_fc[e] is the dense c_fc.weight.T).

    self.impl picks how the experts run: "auto" (below), "grouped_mm", "padded" (the loop-free
    fallback, _ffn_padded) or "loop" (the readable reference, experts_loop; tests and bench.py only).
    "auto" takes grouped_mm in eager mode on CPU (fp32, bf16) and CUDA (bf16: the CUTLASS kernel on
    sm90+; fp32: ATen's per-group kernel) and under torch.compile in bf16 (autocast); it takes the
    padded fallback under torch.compile in fp32 (compile's grouped_mm accepts bf16 only), on other
    devices, when n_embd is not a multiple of 8, or when this torch has no grouped_mm.
    """

    def __init__(self, config):
        super().__init__()
        E, C, H = config.n_experts, config.n_embd, 4 * config.n_embd
        assert E >= 1, "an MoE layer needs n_experts >= 1"
        self.n_experts, self.top_k = E, config.top_k
        self.router = nn.Linear(C, E, bias=False)
        # keep_out's (adapt.py): logits += router_context(mean of x over the token's prefix), zero but for
        # the rows it fits; None otherwise, and then the MoE computes exactly what it did without it
        self.router_context = nn.Linear(C, E, bias=False) if config.router_context else None
        self.w_fc = nn.Parameter(torch.empty(E, C, H))  # (E, C, 4C)
        self.w_proj = nn.Parameter(torch.empty(E, H, C))  # (E, 4C, C)
        self.b_fc = nn.Parameter(torch.zeros(E, H)) if config.bias else None  # (E, 4C)
        self.b_proj = nn.Parameter(torch.zeros(E, C)) if config.bias else None  # (E, C)
        self.dropout = nn.Dropout(config.dropout)
        self.impl = "auto"
        self.reset_parameters(config.n_layer)

    def reset_parameters(self, n_layer):
        # nanoGPT init: N(0, 0.02), the residual projection scaled by 1/sqrt(2 * n_layer)
        nn.init.normal_(self.router.weight, std=0.02)
        if self.router_context is not None:
            nn.init.zeros_(self.router_context.weight)
        nn.init.normal_(self.w_fc, std=0.02)
        nn.init.normal_(self.w_proj, std=0.02 / math.sqrt(2 * n_layer))
        for b in (self.b_fc, self.b_proj):
            if b is not None:
                nn.init.zeros_(b)

    # --- routing ---------------------------------------------------------------------------

    def router_logits(self, x):
        """x (B, T, C) -> (B*T, E) router logits in fp32, also under bf16 autocast (softmax / logsumexp of
        small logits in bf16 would quantise the routing decision and the aux losses)."""
        with torch.autocast(x.device.type, enabled=False):
            logits = F.linear(x.reshape(-1, x.shape[-1]).float(), self.router.weight.float())  # (N, E)
            if self.router_context is not None:   # + what the text so far says (its prefix mean)
                logits = logits + F.linear(prefix_mean(x.float()).reshape(logits.shape[0], -1),
                                           self.router_context.weight.float())
            return logits

    def route(self, x, expert_ids=None, routing="learned"):
        """
        x (B, T, C) tokens; expert_ids (N = B*T,) int64 the group expert of every token, or None.
        Returns expert (N, k) int64, weight (N, k) or None (= weight 1), aux dict of this layer.
        """
        E = self.n_experts
        logits = self.router_logits(x)  # (N, E)
        aux = {"z": torch.logsumexp(logits, dim=-1).pow(2).mean()}  # router z-loss (ST-MoE)
        if expert_ids is not None:
            aux["router_ce"] = F.cross_entropy(logits, expert_ids)  # stage 1 router loss, mean over tokens

        if routing == "group":
            # every token goes to its sequence's group expert with weight 1 (not gated)
            if expert_ids is None:
                raise ValueError("routing='group' needs expert_ids (one expert id per sequence)")
            expert, weight = expert_ids[:, None], None  # (N, 1)
        elif routing == "learned":
            probs = logits.softmax(dim=-1)  # (N, E) softmax first, then top-k (upcycles better)
            weight, expert = probs.topk(min(self.top_k, E), dim=-1)  # (N, k) each
            weight = weight / weight.sum(dim=-1, keepdim=True)  # renormalise: k weights sum to 1
        else:
            raise ValueError(f"unknown routing {routing!r} (learned | group)")
        counts = _count(expert.flatten(), E)  # (E,) token-slots per expert
        if routing == "learned":
            # Switch-Transformer load balancing, E * sum_e f_e * P_e: f_e = share of the N*k token-slots
            # sent to e (a count, no gradient), P_e = mean router probability of e (carries the gradient).
            # Equals 1 when routing is uniform, E when everything goes to one expert.
            f = counts.float() / expert.numel()  # (E,)
            aux["balance"] = E * (f * probs.mean(dim=0)).sum()
        aux["expert_counts"] = counts.detach()
        return expert, weight, aux

    def forward(self, x, expert_ids=None, routing="learned"):
        """x (B, T, C); expert_ids (B,) the group expert of each sequence, or None. Returns y (B, T, C), aux dict."""
        B, T, C = x.shape
        xf = x.reshape(B * T, C)  # (N, C) tokens
        token_experts = expert_ids.repeat_interleave(T) if expert_ids is not None else None  # (N,)
        expert, weight, aux = self.route(x, token_experts, routing)
        y = self.experts_loop(xf, expert, weight) if self.impl == "loop" else self.experts(xf, expert, weight)
        return self.dropout(y.view(B, T, C)), aux

    # --- the fused dropless dispatch -------------------------------------------------------

    def experts(self, x, expert, weight=None):
        """
        x (N, C); expert (N, k) int64; weight (N, k) or None. Returns (N, C):
        out[n] = sum_j weight[n, j] * FFN_{expert[n, j]}(x[n]).
        Every shape below is N*k rows whatever the routing: only the values in `offs` change.
        """
        N, k = expert.shape
        flat = expert.flatten()  # (N*k,) expert of every (token, slot) pair
        order = torch.argsort(flat, stable=True)  # (N*k,) pairs sorted by expert
        token = order // k  # (N*k,) the token each sorted pair reads
        sorted_expert = flat[order]  # (N*k,) non-decreasing
        counts = _count(flat, self.n_experts)  # (E,) rows per expert
        # gathers use index_select: its backward is an index_add_, where x[idx]'s is a sorting
        # index_put_ (16 ms vs 0.7 ms on an H200 for a bias gather with 2 experts)
        xs = x.index_select(0, token)  # (N*k, C) the one gather: rows grouped by expert

        dtype = _compute_dtype(x)  # bf16 under autocast: grouped_mm is not autocast-aware, so cast here
        xs = xs.to(dtype)
        # the biases stay in their own dtype (fp32 master weights): they are gathered per row first and
        # cast after, so that their gradient (a sum over thousands of rows) accumulates in fp32
        params = (self.w_fc.to(dtype), self.b_fc, self.w_proj.to(dtype), self.b_proj)
        if self._use_grouped_mm(xs):
            ys = _ffn_grouped_mm(xs, sorted_expert, counts, *params)  # (N*k, C)
        else:
            ys = _ffn_padded(xs, sorted_expert, counts, *params)  # (N*k, C)

        if weight is not None:
            ys = ys * weight.flatten().index_select(0, order)[:, None].to(ys.dtype)  # (N*k, C) gated
        return torch.zeros(N, x.shape[1], dtype=ys.dtype, device=ys.device).index_add_(0, token, ys)  # (N, C)

    def _use_grouped_mm(self, xs):
        if self.impl in ("grouped_mm", "padded"):
            return self.impl == "grouped_mm"
        if grouped_mm is None or xs.device.type not in ("cpu", "cuda"):
            return False
        # the grouped_mm kernels want 16-byte aligned row strides (C and 4C multiples of 8)
        if xs.shape[1] % 8 != 0:
            return False
        # eager runs fp32 and bf16 on CPU and CUDA (bf16 on sm90+ is the fast CUTLASS kernel);
        # torch.compile's shape function only accepts bf16, so compiled fp32 takes the fallback
        return xs.dtype == torch.bfloat16 or not torch.compiler.is_compiling()

    def experts_loop(self, x, expert, weight=None):
        """The same computation as experts(), written as the obvious loop over experts (reference)."""
        out = torch.zeros_like(x)  # (N, C)
        for e in range(self.n_experts):
            tok, slot = torch.where(expert == e)  # tokens routed to e, and in which of their k slots
            if tok.numel() == 0:
                continue
            h = x[tok] @ self.w_fc[e] + (self.b_fc[e] if self.b_fc is not None else 0)
            y = F.gelu(h) @ self.w_proj[e] + (self.b_proj[e] if self.b_proj is not None else 0)
            if weight is not None:
                y = y * weight[tok, slot, None]
            out.index_add_(0, tok, y.to(out.dtype))
        return out


def prefix_mean(x):
    """x (B, T, C) -> (B, T, C): at t, the mean of x over positions 0..t (causal: nothing after t)."""
    return x.cumsum(1) / torch.arange(1, x.shape[1] + 1, device=x.device, dtype=x.dtype).view(1, -1, 1)


def _count(ids, n):
    """(n,) int64 occurrences of 0..n-1 in ids. torch.bincount's output shape depends on the data
    (max(ids) + 1), so torch.compile without fullgraph breaks the graph there (5 breaks in a 1-MoE-layer
    GPT); a scatter_add into n zeros always has shape (n,)."""
    return torch.zeros(n, dtype=torch.long, device=ids.device).scatter_add_(0, ids, torch.ones_like(ids))


def _compute_dtype(x):
    dev = x.device.type
    return torch.get_autocast_dtype(dev) if torch.is_autocast_enabled(dev) else x.dtype


def _bias(b, rows_expert, dtype):
    """b (E, out) -> (rows, out): each row's expert bias, in dtype (or 0 without biases)."""
    return b.index_select(0, rows_expert).to(dtype) if b is not None else 0


def _ffn_grouped_mm(xs, sorted_expert, counts, w_fc, b_fc, w_proj, b_proj):
    """xs (M, C) rows sorted by expert; counts (E,). One grouped matmul per FFN matrix."""
    offs = torch.cumsum(counts, dim=0).to(torch.int32)  # (E,) end row of each expert's segment
    h = F.gelu(grouped_mm(xs, w_fc, offs=offs) + _bias(b_fc, sorted_expert, xs.dtype))  # (M, 4C)
    return grouped_mm(h, w_proj, offs=offs) + _bias(b_proj, sorted_expert, xs.dtype)  # (M, C)


def _ffn_padded(xs, sorted_expert, counts, w_fc, b_fc, w_proj, b_proj):
    """
    The loop-free fallback where grouped_mm is missing or cannot run (compiled fp32): block-padded
    batched matmul (MegaBlocks style). Each expert's rows are padded to a multiple of `b` rows, so every
    block of b rows belongs to ONE expert and one torch.bmm does all blocks. With b ~ M/(4E) the number
    of blocks is at most M/b + E ~ 5E whatever the routing (a static shape, so compile traces it once):
    padding adds <= ~25% FLOPs and the per-block weight gather holds <= ~5E expert matrices.
    Measured (fwd+bwd, 8192 rows, d=256, E=6): ~1.8x the time of grouped_mm on CPU fp32, ~1.2x on an
    H200 in bf16; still no Python loop and no host sync. (Padding every expert to the worst case,
    N*k rows, would cost E times the FLOPs; a per-row gather of expert weights, N*k weight matrices.)
    """
    M, C = xs.shape
    E = counts.shape[0]
    b = -(-M // (4 * E))  # block rows: ceil(M / 4E) ...
    b = -(-b // 8) * 8  # ... rounded up to a multiple of 8
    n_blocks = -(-M // b) + E  # static upper bound on sum_e ceil(count_e / b)
    start = torch.cumsum(counts, 0) - counts  # (E,) first sorted row of each expert
    padded = (counts + b - 1) // b * b  # (E,) rows of each expert after padding
    pad_end = torch.cumsum(padded, 0)  # (E,)
    pad_start = pad_end - padded  # (E,)
    dest = pad_start[sorted_expert] + torch.arange(M, device=xs.device) - start[sorted_expert]  # (M,)
    xp = xs.new_zeros(n_blocks * b, C).index_copy(0, dest, xs).view(n_blocks, b, C)  # (nb, b, C)
    block_start = torch.arange(n_blocks, device=xs.device) * b  # (nb,)
    block_expert = torch.searchsorted(pad_end, block_start, right=True).clamp(max=E - 1)  # (nb,)
    # unused trailing blocks are all-zero rows computed with the last expert and never read back
    h = torch.bmm(xp, w_fc.index_select(0, block_expert))  # (nb, b, 4C)
    if b_fc is not None:
        h = h + _bias(b_fc, block_expert, xs.dtype)[:, None, :]
    y = torch.bmm(F.gelu(h), w_proj.index_select(0, block_expert))  # (nb, b, C)
    if b_proj is not None:
        y = y + _bias(b_proj, block_expert, xs.dtype)[:, None, :]
    return y.view(n_blocks * b, C).index_select(0, dest)  # (M, C) back to sorted order


# -----------------------------------------------------------------------------
# the transformer


class Block(nn.Module):
    def __init__(self, config, moe):
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.ffn = MoE(config) if moe else MLP(config)  # the FFN slot: dense MLP or MoE

    def forward(self, x, expert_ids=None, routing="learned"):
        x = x + self.attn(self.ln_1(x))
        if isinstance(self.ffn, MoE):
            y, aux = self.ffn(self.ln_2(x), expert_ids, routing)
        else:
            y, aux = self.ffn(self.ln_2(x)), {}
        return x + y, aux  # (B, T, C), this layer's aux (empty when dense)


class GPT(nn.Module):
    def __init__(self, config):
        super().__init__()
        assert config.vocab_size is not None and config.block_size is not None
        bad = [l for l in config.moe_layers if not 0 <= l < config.n_layer]
        if bad:
            raise ValueError(f"moe_layers {bad} out of range for n_layer={config.n_layer}")
        if config.moe_layers and config.n_experts < 1:
            raise ValueError("moe_layers given but n_experts < 1")
        self.config = config
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(config.vocab_size, config.n_embd),
            wpe=nn.Embedding(config.block_size, config.n_embd),
            drop=nn.Dropout(config.dropout),
            h=nn.ModuleList([Block(config, l in config.moe_layers) for l in range(config.n_layer)]),
            ln_f=nn.LayerNorm(config.n_embd, bias=config.bias),
        ))
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self.transformer.wte.weight = self.lm_head.weight  # weight tying
        self.apply(self._init_weights)
        # scaled init of the residual projections, per GPT-2 (MoE.reset_parameters does its own)
        for pn, p in self.named_parameters():
            if pn.endswith("c_proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))

    def _init_weights(self, module):
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
        elif isinstance(module, MoE):
            module.reset_parameters(self.config.n_layer)

    def moe_modules(self):
        return [b.ffn for b in self.transformer.h if isinstance(b.ffn, MoE)]

    def num_params(self):
        """All parameters; the tied embedding / lm_head matrix counted once."""
        return sum(p.numel() for p in self.parameters())

    def forward(self, idx, targets=None, expert_ids=None, routing="learned"):
        """
        idx (B, T) token ids; targets (B, T) or None; expert_ids (B,) int64 the group expert of each
        sequence (its language group's), or None.
        routing "learned": router softmax -> top_k -> renormalised weights;
                "group":   every token of sequence b goes to expert expert_ids[b] with weight 1.
        Returns logits (B, T, V), loss (mean CE, or None), aux (dict of tensors, {} for a dense model):
          router_ce      mean over MoE layers of CE(router logits, group id)   (when expert_ids is given)
          balance        mean over MoE layers of the load-balancing loss        (learned routing only)
          z              mean over MoE layers of the router z-loss
          expert_counts  (n_moe_layers, E) token-slots per expert, detached
        """
        device = idx.device
        B, T = idx.size()
        assert T <= self.config.block_size, f"sequence of length {T} > block_size {self.config.block_size}"
        if expert_ids is not None and self.config.moe_layers and not torch.compiler.is_compiling():
            E = self.config.n_experts
            if expert_ids.shape != (B,) or expert_ids.min() < 0 or expert_ids.max() >= E:
                raise ValueError(f"expert_ids must be (B,)={B} expert ids in [0, {E}), got {expert_ids.tolist()}")
        pos = torch.arange(0, T, dtype=torch.long, device=device)  # (T,)
        x = self.transformer.drop(self.transformer.wte(idx) + self.transformer.wpe(pos))  # (B, T, C)
        layer_aux = []
        for block in self.transformer.h:
            x, aux = block(x, expert_ids, routing)
            if aux:
                layer_aux.append(aux)
        x = self.transformer.ln_f(x)
        logits = self.lm_head(x)  # (B, T, V)
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.view(-1, logits.size(-1)).float(), targets.view(-1), ignore_index=-1)
        return logits, loss, self._merge_aux(layer_aux)

    @staticmethod
    def _merge_aux(layer_aux):
        if not layer_aux:
            return {}
        out = {k: torch.stack([a[k] for a in layer_aux]).mean() for k in layer_aux[0] if k != "expert_counts"}
        out["expert_counts"] = torch.stack([a["expert_counts"] for a in layer_aux])  # (n_moe_layers, E)
        return out

    def configure_optimizers(self, weight_decay, learning_rate, betas, device_type):
        """
        AdamW. Weight decay on the weight matrices: embeddings, Linear weights and the 3-D expert stacks
        (w_fc, w_proj). Never on biases and LayerNorm gains (1-D), nor on the expert biases b_fc, b_proj
        (2-D only because they stack E 1-D biases). Not on the router either: decaying it pulls its
        logits toward uniform routing, against the router loss of stage 1 and the routing learned in
        stage 2; it is tiny, so we leave it free.
        """
        params = {pn: p for pn, p in self.named_parameters() if p.requires_grad}
        no_decay_names = ("router.weight", "router_context.weight", ".b_fc", ".b_proj")
        decay = [p for n, p in params.items() if p.dim() >= 2 and not n.endswith(no_decay_names)]
        no_decay = [p for n, p in params.items() if p.dim() < 2 or n.endswith(no_decay_names)]
        param_groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
        extra = dict(fused=True) if device_type == "cuda" else dict()
        return torch.optim.AdamW(param_groups, lr=learning_rate, betas=betas, **extra)

    def flops_per_token(self, routing):
        """6 * active params + attention (nanoGPT's estimate): MoE layers count only the experts a token uses."""
        c = self.config
        n = self.num_params() - self.transformer.wpe.weight.numel()
        for moe in self.moe_modules():
            per_expert = sum(p[0].numel() for p in (moe.w_fc, moe.w_proj, moe.b_fc, moe.b_proj) if p is not None)
            n -= (moe.n_experts - (1 if routing == "group" else min(c.top_k, moe.n_experts))) * per_expert
        return 6 * n + 12 * c.n_layer * c.n_embd * c.block_size

    @torch.no_grad()
    def generate(self, idx, max_new_tokens, temperature=1.0, top_k=None, expert_ids=None, routing="learned"):
        """Sample max_new_tokens after idx (B, T); expert_ids (B,) keeps each sequence's expert fixed."""
        for _ in range(max_new_tokens):
            idx_cond = idx if idx.size(1) <= self.config.block_size else idx[:, -self.config.block_size:]
            logits, _, _ = self(idx_cond, expert_ids=expert_ids, routing=routing)
            logits = logits[:, -1, :] / temperature  # (B, V)
            if top_k is not None:
                v, _ = torch.topk(logits, min(top_k, logits.size(-1)))
                logits[logits < v[:, [-1]]] = -float("Inf")
            idx_next = torch.multinomial(F.softmax(logits, dim=-1), num_samples=1)  # (B, 1)
            idx = torch.cat((idx, idx_next), dim=1)
        return idx


# -----------------------------------------------------------------------------
# optimizer state across stages


def adam_by_name(model, optimizer):
    """{param name: AdamW state}: an optimizer's state in a form the next stage's optimizer (of another
    model object, e.g. the upcycled MoE: upcycle.upcycle_adam) can start from."""
    return {n: optimizer.state[p] for n, p in model.named_parameters() if optimizer.state.get(p)}


def load_adam_by_name(model, optimizer, adam):
    """Start `optimizer` from adam_by_name() state (copied: several stages may start from one state)."""
    names = {p: n for n, p in model.named_parameters()}
    index = {names[p]: i for i, p in enumerate(p for g in optimizer.param_groups for p in g["params"])}
    sd = optimizer.state_dict()
    sd["state"] = {index[n]: {k: v.clone() for k, v in s.items()} for n, s in adam.items() if n in index}
    optimizer.load_state_dict(sd)


# -----------------------------------------------------------------------------
# checkpoints


def save_checkpoint(path, ckpt):
    """torch.save through common.atomic_open: a crash mid-save leaves the previous checkpoint intact."""
    with atomic_open(path) as f:
        torch.save(ckpt, f)


def load_checkpoint(path, device="cpu"):
    """The checkpoint dict, or a one-line RuntimeError naming the file if it is missing or unreadable."""
    if not os.path.isfile(path):
        raise RuntimeError(f"{path}: no such checkpoint file")
    try:
        ckpt = torch.load(path, map_location=device, weights_only=True)
    except Exception as e:
        raise RuntimeError(
            f"{path}: not a readable checkpoint ({e.__class__.__name__}); "
            f"delete it (train.py then redoes that stage) or use another file"
        ) from None
    if not isinstance(ckpt, dict) or "model" not in ckpt or "model_args" not in ckpt:
        raise RuntimeError(f"{path}: not a nanoDMoE checkpoint (no 'model'/'model_args' entries)")
    return ckpt


def model_from_checkpoint(ckpt, device="cpu"):
    """Rebuild the GPT of ckpt["model_args"] and load ckpt["model"] (a compiled model's _orig_mod. keys ok)."""
    model = GPT(GPTConfig(**ckpt["model_args"]))
    prefix = "_orig_mod."
    state = {(k[len(prefix):] if k.startswith(prefix) else k): v for k, v in ckpt["model"].items()}
    model.load_state_dict(state)
    return model.to(device)
