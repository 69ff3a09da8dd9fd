"""The decode peers on the GPU, as ../shared/peers/peer_bench.py runs them: dense decode
through scaled_dot_product_attention (FlashAttention, memory-efficient, cuDNN) and the plain
PyTorch pipeline of exact group-summed scores, top-k, gather and attend. Same shapes as
attnc's decode benchmark (B=8, 32 query / 8 KV heads, head dim 128, 131072 tokens, top-4096,
bf16). Prints one line per case, then a JSON summary; writes decode_peers.json to
$RESULTS_DIR when it is set."""
import json, os
import torch
import torch.nn.functional as F
from torch.nn.attention import sdpa_kernel, SDPBackend
from triton.testing import do_bench

torch.manual_seed(0)
dev = "cuda"
B, Hkv, G, D, T, K = 8, 8, 4, 128, 131072, 4096


def bench(fn):
    return do_bench(fn, warmup=25, rep=200, return_mode="median")  # ms


q = torch.randn(B, Hkv * G, 1, D, dtype=torch.bfloat16, device=dev)
kc = torch.randn(B, Hkv, T, D, dtype=torch.bfloat16, device=dev)
vc = torch.randn(B, Hkv, T, D, dtype=torch.bfloat16, device=dev)
kv_bytes = 2 * B * Hkv * T * D * 2
rows = []
for be in (SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.CUDNN_ATTENTION):
    name = str(be).split(".")[-1]
    try:
        with sdpa_kernel(be):
            ms = bench(lambda: F.scaled_dot_product_attention(q, kc, vc, enable_gqa=True))
        rows.append(dict(case=f"decode dense T={T}", impl=name, ms=ms, TBps=kv_bytes / ms / 1e9))
    except Exception as e:  # a backend this torch build lacks
        rows.append(dict(case=f"decode dense T={T}", impl=name, error=repr(e)[:200]))
    print(rows[-1], flush=True)


def select_and_attend():
    qg = q.view(B, Hkv, G, D)
    s = torch.einsum("bhgd,bhtd->bht", qg.float(), kc.float())
    idx = s.topk(K, dim=-1).indices
    ks = torch.gather(kc, 2, idx[..., None].expand(-1, -1, -1, D))
    vs = torch.gather(vc, 2, idx[..., None].expand(-1, -1, -1, D))
    return F.scaled_dot_product_attention(q, ks, vs, enable_gqa=True)


ms = bench(select_and_attend)
rows.append(dict(case=f"decode exact top{K} of T={T} + attend", impl="torch", ms=ms))
print(rows[-1], flush=True)
s = torch.randn(B, Hkv, T, device=dev)
ms = bench(lambda: s.topk(K, dim=-1))
rows.append(dict(case=f"topk {K} of {T} x {B * Hkv} rows", impl="torch.topk", ms=ms))
print(rows[-1], flush=True)
out = os.environ.get("RESULTS_DIR")
res = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "rows": rows}
if out:
    json.dump(res, open(os.path.join(out, "decode_peers.json"), "w"), indent=1)
print("SUMMARY", json.dumps(rows))
