"""
Does the same training give the same bits in every process, idle and under load? (issue 20, item 6)

60 AdamW steps of the default-shaped dense GPT (4 layers, d = 64, vocab 8192, 16 x 128 tokens, random
tokens from a fixed generator); prints a hash of the weights and the last loss. Run it in fresh
processes, idle and beside busy loops, and compare the lines:

    for i in 1 2 3 4; do python experiments/determinism/load_probe.py; done
    for k in 1 2 3; do (python -c "while True: pass" &); done; sleep 20
    for i in 1 2 3 4 5 6; do python experiments/determinism/load_probe.py; cut -d' ' -f1 /proc/loadavg; done
    pkill -f "while True: pass"
"""
import hashlib
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
from model import GPT, GPTConfig  # noqa: E402

torch.manual_seed(0)
m = GPT(GPTConfig(vocab_size=8192, block_size=128, n_layer=4, n_head=2, n_embd=64))
opt = m.configure_optimizers(0.01, 5e-3, (0.9, 0.95), "cpu")
g = torch.Generator().manual_seed(1)
for step in range(60):
    x = torch.randint(0, 8192, (16, 129), generator=g)
    _, loss, _ = m(x[:, :-1].contiguous(), x[:, 1:].contiguous())
    loss.backward()
    torch.nn.utils.clip_grad_norm_(m.parameters(), 1.0)
    opt.step()
    opt.zero_grad(set_to_none=True)
h = hashlib.sha256()
for p in m.parameters():
    h.update(p.detach().numpy().tobytes())
print(h.hexdigest()[:16], f"{loss.item():.9f}")
