#!/usr/bin/env python3
"""Reference outputs of the default model (SmolLM2-135M-Instruct Q4_1) from Hugging Face
transformers: the GGUF's weights dequantized to float32 by transformers' own GGUF loader
(which also undoes llama.cpp's Q/K permutation), run in float32 with eager attention.

For each prompt of tests/fixtures/llamacpp/smollm2_135m_q4_1_greedy.json (same prompt ids):
the top-64 logits after the prompt, and the 32-token greedy continuation with each step's
top-2 margin. Written to tests/fixtures/default_model/transformers_dequant.json.

usage: tools/make_default_model_reference.py [MODEL.gguf]
"""
import json
import sys
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM

REPO = Path(__file__).resolve().parent.parent
model_path = Path(sys.argv[1]) if len(sys.argv) > 1 else REPO / "models/SmolLM2-135M-Instruct.Q4_1.gguf"
cases = json.loads((REPO / "tests/fixtures/llamacpp/smollm2_135m_q4_1_greedy.json").read_text())["cases"]

torch.manual_seed(0)
model = AutoModelForCausalLM.from_pretrained(
    str(model_path.parent), gguf_file=model_path.name, torch_dtype=torch.float32,
    attn_implementation="eager")
model.eval()

out = {"model": model_path.name, "made_by": "tools/make_default_model_reference.py",
       "reference": "transformers float32 on the GGUF's dequantized weights",
       "transformers": __import__("transformers").__version__, "torch": torch.__version__,
       "top_k": 64, "cases": []}
with torch.no_grad():
    for c in cases:
        ids = list(c["prompt_ids"])
        first = None
        gen, margins = [], []
        for step in range(32):
            logits = model(torch.tensor([ids])).logits[0, -1].double()
            top = torch.topk(logits, 64)
            if first is None:
                first = [[int(i), float(v)] for v, i in zip(top.values, top.indices)]
            margins.append(float(top.values[0] - top.values[1]))
            nxt = int(top.indices[0])
            gen.append(nxt)
            ids.append(nxt)
            if nxt in (0, 2):  # <|endoftext|>, <|im_end|>
                break
        out["cases"].append({"name": c["name"], "prompt_ids": c["prompt_ids"],
                             "first_top_logits": first, "generated_ids": gen,
                             "top2_margins": margins})
        print(c["name"], gen[:10], "min margin %.4f" % min(margins), flush=True)
dst = REPO / "tests/fixtures/default_model/transformers_dequant.json"
dst.write_text(json.dumps(out, indent=1))
print("wrote", dst)
