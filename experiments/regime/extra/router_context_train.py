"""
Does a router that sees the text so far bring the grouping gain back? train.py with every MoE router given
keep_out's context part (model.GPTConfig.router_context, zero at upcycling) in stages 1 and 2. A wrapper,
not a train.py option: it sets GPTConfig's default and fills the context weights the upcycled state lacks.

    cp runs/regime/eps0_k9/s0/{base.pt,cpt.pt,cpt_stage1.pt,config.json,profile.json,groups.json} runs/ctxroute/s0/
    python experiments/regime/extra/router_context_train.py --langs 18 --base_langs auto --stage1_steps 100 \\
        --stage2_steps 900 --lr 0.002 --variants cpt,dmoe,random --eps 0.0 --n_groups 9 --new_experts grouped --seed 0 --out runs/ctxroute/s0
"""
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))))
import model  # noqa: E402

defaults = list(model.GPTConfig.__init__.__defaults__)
defaults[-1] = True   # router_context, GPTConfig's last field
model.GPTConfig.__init__.__defaults__ = tuple(defaults)
assert model.GPTConfig().router_context is True
_load = model.GPT.load_state_dict


def load_state_dict(self, state, strict=True, **kw):   # an upcycled or older state has no context weights: zero
    state = dict(state)
    for name, p in self.state_dict().items():
        if name.endswith("router_context.weight") and name not in state:
            state[name] = torch.zeros_like(p)
    return _load(self, state, strict=strict, **kw)


model.GPT.load_state_dict = load_state_dict
import train  # noqa: E402

if __name__ == "__main__":
    train.main(sys.argv[1:])
