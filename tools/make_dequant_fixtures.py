#!/usr/bin/env python3
"""Makes tests/fixtures/dequant/: raw blocks of every weight type and what gguf-py dequantizes
them to, so tests/model/tensor_type_test.cpp can check dequantize_row bit for bit.

For each type <T> it writes <T>.bin (raw block bytes, random) and <T>.f32 (little-endian
float32, gguf.quants.dequantize of those bytes). Block scales are overwritten with finite F16
values: a few edge values (zeros of both signs, subnormals, the largest finite F16) and then
random magnitudes between 2^-14 and 2^4. Plain F16/BF16 data keeps its random bits (infinities,
NaNs with payloads, subnormals included); F32 is a pass-through.

With --model GGUF it also writes model_<tensor>.f32: gguf-py's dequantization of the first
rows of a few tensors of that model (by default the project's SmolLM2-135M Q4_1), which the
tests compare against when the model file is present.

Usage: python3 tools/make_dequant_fixtures.py [--model GGUF] [out_dir]
       (needs: pip install gguf numpy)
"""

import sys
from pathlib import Path

import numpy as np
from gguf import GGMLQuantizationType as T
from gguf.constants import GGML_QUANT_SIZES
from gguf.quants import dequantize

# type -> (number of blocks, byte offsets of the F16 scale fields inside a block)
SPECS = {
    T.F32: (2048, ()),
    T.F16: (4096, ()),
    T.BF16: (4096, ()),
    T.Q8_0: (256, (0,)),
    T.Q4_0: (256, (0,)),
    T.Q4_1: (256, (0, 2)),
    T.Q5_0: (256, (0,)),
    T.Q5_1: (256, (0, 2)),
    T.Q4_K: (48, (0, 2)),
    T.Q5_K: (48, (0, 2)),
    T.Q6_K: (48, (208,)),
}

EDGE_SCALES = [0.0, -0.0, 2.0**-24, -(2.0**-24), 1023 * 2.0**-24, 2.0**-14, 65504.0, -65504.0, 1.0, -1.0]


def make(qtype, n_blocks, scale_offsets, rng):
    _, type_size = GGML_QUANT_SIZES[qtype]
    raw = rng.integers(0, 256, size=(n_blocks, type_size), dtype=np.uint8)
    for off in scale_offsets:
        mags = 2.0 ** rng.uniform(-14, 4, size=n_blocks)
        signs = rng.choice([-1.0, 1.0], size=n_blocks)
        scales = (mags * signs).astype(np.float16)
        # Rotate the edge values over the scale fields so each field sees each of them.
        for i, v in enumerate(EDGE_SCALES):
            scales[(i * len(scale_offsets) + off) % len(EDGE_SCALES)] = np.float16(v)
        raw[:, off:off + 2] = scales.view(np.uint8).reshape(n_blocks, 2)
    if qtype == T.F16:
        # Make sure the interesting encodings are there, not left to chance.
        special = np.array([0x0000, 0x8000, 0x0001, 0x83FF, 0x0400, 0x7BFF, 0x7C00, 0xFC00,
                            0x7C01, 0x7E00, 0xFFFF, 0x3C00], dtype=np.uint16)
        raw.reshape(-1).view(np.uint16)[:len(special)] = special
    if qtype == T.BF16:
        special = np.array([0x0000, 0x8000, 0x0001, 0x7F80, 0xFF80, 0x7F81, 0x7FC0, 0x3F80],
                           dtype=np.uint16)
        raw.reshape(-1).view(np.uint16)[:len(special)] = special
    flat = raw.reshape(-1)
    values = dequantize(flat, qtype)
    values = np.ascontiguousarray(values, dtype=np.float32).reshape(-1)
    return flat, values


# tensor -> rows recorded from the model
MODEL_TENSORS = {
    "blk.0.ffn_gate.weight": 8,   # Q4_1
    "blk.0.ffn_down.weight": 4,   # Q4_1, k = 1536
    "token_embd.weight": 8,       # Q8_0
    "output_norm.weight": 1,      # F32
}


def model_fixtures(model, out):
    from gguf import GGUFReader
    reader = GGUFReader(model)
    by_name = {t.name: t for t in reader.tensors}
    for name, rows in MODEL_TENSORS.items():
        t = by_name[name]
        raw = np.asarray(t.data)
        if raw.ndim == 1:
            raw = raw.reshape(1, -1)
        values = dequantize(raw[:rows].view(np.uint8).reshape(-1) if t.tensor_type != T.F32 else raw[:rows].reshape(-1),
                            t.tensor_type)
        values = np.ascontiguousarray(values, dtype=np.float32).reshape(-1)
        (out / f"model_{name}.f32").write_bytes(values.astype("<f4").tobytes())
        print(f"model {name} ({t.tensor_type.name}): {rows} rows, {values.nbytes} bytes")


def main():
    args = sys.argv[1:]
    model = None
    if len(args) >= 2 and args[0] == "--model":
        model, args = args[1], args[2:]
    out = Path(args[0]) if args else Path(__file__).resolve().parent.parent / "tests/fixtures/dequant"
    out.mkdir(parents=True, exist_ok=True)
    if model:
        model_fixtures(model, out)
    total = 0
    for qtype, (n_blocks, offsets) in SPECS.items():
        rng = np.random.default_rng(1000 + int(qtype))
        raw, values = make(qtype, n_blocks, offsets, rng)
        block_size, _ = GGML_QUANT_SIZES[qtype]
        assert values.size == n_blocks * block_size
        (out / f"{qtype.name}.bin").write_bytes(raw.tobytes())
        (out / f"{qtype.name}.f32").write_bytes(values.astype("<f4").tobytes())
        total += raw.nbytes + values.nbytes
        print(f"{qtype.name}: {n_blocks} blocks, {raw.nbytes} + {values.nbytes} bytes")
    print(f"total {total} bytes in {out}")


if __name__ == "__main__":
    main()
