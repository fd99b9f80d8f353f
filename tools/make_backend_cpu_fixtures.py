#!/usr/bin/env python3
"""Reference outputs of Hugging Face transformers for the CPU backend's ops.

Writes tests/fixtures/backend_cpu/hf_ops.txt: RoPE (default, linear, llama3 scaling) through
LlamaRotaryEmbedding + apply_rotary_pos_emb, LlamaRMSNorm, silu(gate) * up, and causal GQA
attention (repeat_kv + softmax) -- all in float32 as transformers runs them on CPU.

Format: one array per line, `name count v0 v1 ...`, floats printed with 9 significant digits
(exact for float32). Integer arrays (positions, shapes) are printed the same way.

Usage: python3 tools/make_backend_cpu_fixtures.py [output]   (needs torch, transformers)
"""
import sys

import torch
import transformers
from transformers import LlamaConfig
from transformers.models.llama import modeling_llama as llama

OUT = sys.argv[1] if len(sys.argv) > 1 else "tests/fixtures/backend_cpu/hf_ops.txt"
torch.manual_seed(1234)
lines = []


def put(name, t):
    flat = torch.as_tensor(t).reshape(-1).tolist()
    vals = " ".join(f"{float(v):.9g}" for v in flat)
    lines.append(f"{name} {len(flat)} {vals}")


# --- RoPE -----------------------------------------------------------------------------------
N_HEAD, N_HEAD_KV, HEAD_DIM = 3, 1, 64
POSITIONS = [0, 1, 7, 100, 4097, 30000, 131071]
ROPE_CASES = {
    "default": dict(rope_theta=100000.0, rope_type="default"),
    "linear": dict(rope_theta=10000.0, rope_type="linear", factor=2.0),
    "llama3": dict(rope_theta=500000.0, rope_type="llama3", factor=8.0, low_freq_factor=1.0,
                   high_freq_factor=4.0, original_max_position_embeddings=8192),
}
put("rope.positions", torch.tensor(POSITIONS))
put("rope.shape", torch.tensor([N_HEAD, N_HEAD_KV, HEAD_DIM]))
for name, params in ROPE_CASES.items():
    cfg = LlamaConfig(hidden_size=N_HEAD * HEAD_DIM, num_attention_heads=N_HEAD,
                      num_key_value_heads=N_HEAD_KV, head_dim=HEAD_DIM,
                      max_position_embeddings=131072, rope_parameters=params)
    rope = llama.LlamaRotaryEmbedding(cfg)
    pos = torch.tensor([POSITIONS])
    # HF layout [batch, heads, seq, dim]; the fixture stores [seq, heads, dim] like tpnode.
    q = torch.randn(1, N_HEAD, len(POSITIONS), HEAD_DIM)
    k = torch.randn(1, N_HEAD_KV, len(POSITIONS), HEAD_DIM)
    cos, sin = rope(q, pos)
    q_out, k_out = llama.apply_rotary_pos_emb(q, k, cos, sin)
    put(f"rope.{name}.inv_freq", rope.inv_freq)
    put(f"rope.{name}.q", q[0].transpose(0, 1))
    put(f"rope.{name}.k", k[0].transpose(0, 1))
    put(f"rope.{name}.q_out", q_out[0].transpose(0, 1))
    put(f"rope.{name}.k_out", k_out[0].transpose(0, 1))

# --- RMSNorm and SwiGLU ---------------------------------------------------------------------
ROWS, HIDDEN, EPS = 5, 67, 1e-5
norm = llama.LlamaRMSNorm(HIDDEN, eps=EPS)
with torch.no_grad():
    norm.weight.copy_(torch.randn(HIDDEN))
x = torch.randn(ROWS, HIDDEN) * 3.0
put("rmsnorm.shape", torch.tensor([ROWS, HIDDEN]))
put("rmsnorm.eps", torch.tensor([EPS]))
put("rmsnorm.x", x)
put("rmsnorm.w", norm.weight.detach())
put("rmsnorm.y", norm(x).detach())

gate = torch.randn(300) * 6.0
up = torch.randn(300)
put("swiglu.gate", gate)
put("swiglu.up", up)
put("swiglu.out", torch.nn.functional.silu(gate) * up)

# --- causal GQA attention (eager_attention_forward's math) ----------------------------------
A_HEAD, A_KV, A_DIM, A_SEQ = 6, 2, 8, 11
q = torch.randn(1, A_HEAD, A_SEQ, A_DIM)
k = torch.randn(1, A_KV, A_SEQ, A_DIM)
v = torch.randn(1, A_KV, A_SEQ, A_DIM)
scale = A_DIM ** -0.5
kr = llama.repeat_kv(k, A_HEAD // A_KV)
vr = llama.repeat_kv(v, A_HEAD // A_KV)
scores = torch.matmul(q, kr.transpose(2, 3)) * scale
mask = torch.triu(torch.full((A_SEQ, A_SEQ), float("-inf")), diagonal=1)
probs = torch.softmax(scores + mask, dim=-1, dtype=torch.float32)
out = torch.matmul(probs, vr)
put("attention.shape", torch.tensor([A_HEAD, A_KV, A_DIM, A_SEQ]))
put("attention.q", q[0].transpose(0, 1))
put("attention.k", k[0].transpose(0, 1))
put("attention.v", v[0].transpose(0, 1))
put("attention.out", out[0].transpose(0, 1))

with open(OUT, "w") as f:
    f.write(f"# made by tools/make_backend_cpu_fixtures.py with torch {torch.__version__}, "
            f"transformers {transformers.__version__}\n")
    f.write("\n".join(lines) + "\n")
print(f"wrote {OUT}")
