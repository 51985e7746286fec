"""PyTorch reference for bench/gpu.sh: the usual way to do shardquant's job in Python.

Loads each shard with safetensors.torch, quantizes every linear weight on the GPU with torch ops
(ModelOpt's NVFP4 / FP8 formulas, per-tensor weight amax, input amax from the amax file), and
saves the quantized shard with safetensors.torch. No group sharing of scales: this is a
throughput reference, not a format reference.

usage: python3 torch_reference.py INPUT_DIR OUTPUT_DIR AMAX_FILE nvfp4|fp8
"""
import json
import os
import sys
import time

import torch
from safetensors.torch import load_file, save_file

E2M1_BOUNDS = torch.tensor([0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0])


def nvfp4(w, amax):
    ws2 = amax.float() / 2688.0
    out_f, in_f = w.shape
    x = w.float().view(out_f, in_f // 16, 16)
    s = x.abs().amax(-1) / (6.0 * ws2)
    s = torch.where(s == 0, torch.ones_like(s), s).clamp(2**-9, 448.0).to(torch.float8_e4m3fn)
    q = x / (s.float().unsqueeze(-1) * ws2)
    a = q.abs()
    code = torch.searchsorted(E2M1_BOUNDS.to(w.device), a.contiguous())
    code += ((a == 0.75) | (a == 1.75) | (a == 3.5)).to(code.dtype)
    code = (code.to(torch.uint8) | ((q < 0).to(torch.uint8) << 3)).view(out_f, in_f)
    packed = code[:, 0::2] | (code[:, 1::2] << 4)
    return {"weight": packed, "weight_scale": s, "weight_scale_2": ws2.reshape(())}


def fp8(w, amax):
    scale = amax.float() / 448.0
    return {"weight": (w / scale).to(torch.float8_e4m3fn), "weight_scale": scale.reshape(())}


def main():
    src, dst, amax_path, fmt = sys.argv[1:5]
    os.makedirs(dst, exist_ok=True)
    amax = load_file(amax_path)
    index = json.load(open(os.path.join(src, "model.safetensors.index.json")))
    shards = sorted(set(index["weight_map"].values()))
    torch.cuda.reset_peak_memory_stats()
    start = time.time()
    for shard in shards:
        tensors = load_file(os.path.join(src, shard), device="cuda")
        out = {}
        for name, t in tensors.items():
            module = name[: -len(".weight")] if name.endswith(".weight") else None
            if module and t.dim() == 2 and "layers" in name and not name.endswith("mlp.gate.weight") and "norm" not in name:
                parts = nvfp4(t, t.abs().amax()) if fmt == "nvfp4" else fp8(t, t.abs().amax())
                for k, v in parts.items():
                    out[f"{module}.{k}"] = v
                key = f"{module}.input_quantizer._amax"
                if key in amax:
                    div = 2688.0 if fmt == "nvfp4" else 448.0
                    out[f"{module}.input_scale"] = (amax[key].float() / div).reshape(()).cuda()
            else:
                out[name] = t
        save_file({k: v.contiguous().cpu() for k, v in out.items()}, os.path.join(dst, shard))
        del tensors, out
    torch.cuda.synchronize()
    print(f"torch_reference {fmt}: {time.time() - start:.2f} s, peak GPU memory {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB")


if __name__ == "__main__":
    main()
