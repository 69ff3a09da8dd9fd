"""An independent NumPy reference for `attnc run` on the CPU.

The masks here are written from the papers' definitions (GRAT surrounding blocks and
criss-cross, 3-D criss-cross lines, STA's clamped sliding tile window, NATTEN's
neighbourhood), not from attnc's code; the token order (text segments, tile-major or
raster canvas) is rebuilt from the layout description. Random shapes and inputs come
from a seed, so the cases are held out from the Rust tests. Every second round of the
kernels runs with `outputs lse;` added and its rows' log-sum-exps (`--lse-out`) are
compared with NumPy's as well.

    python independent_reference.py --attnc target/release/attnc --seed 11 [--cases 12]
"""
import argparse
import itertools
import math
import os
import subprocess
import sys
import tempfile

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def canvas_coords(canvas, tile, order):
    """Canvas coordinates of the token at each canvas-local position."""
    if order == "raster":
        return np.stack(np.unravel_index(np.arange(math.prod(canvas)), canvas), -1)
    grid = [math.ceil(c / t) for c, t in zip(canvas, tile)]
    out = []
    for tc in itertools.product(*[range(g) for g in grid]):  # tiles in raster order
        ranges = [range(tc[a] * tile[a], min((tc[a] + 1) * tile[a], canvas[a])) for a in range(len(canvas))]
        out.extend(itertools.product(*ranges))  # raster order inside the tile
    return np.array(out)


class Layout:
    """Sequence = text prefix | canvas | text suffix."""

    def __init__(self, canvas, tile, order, text, valid, suffix):
        self.canvas, self.tile = list(canvas), list(tile)
        self.rank = len(canvas)
        n_canvas = math.prod(canvas)
        coords = canvas_coords(self.canvas, self.tile, order)
        first = 0 if suffix else text
        self.n = n_canvas + text
        self.is_text = np.ones(self.n, bool)
        self.is_text[first:first + n_canvas] = False
        self.text_index = np.full(self.n, -1)
        text_pos = np.arange(n_canvas, self.n) if suffix else np.arange(text)
        self.text_index[text_pos] = np.arange(text)
        self.valid_key = ~self.is_text | (self.text_index < valid)
        self.coord = np.full((self.n, self.rank), -1)
        self.coord[first:first + n_canvas] = coords
        self.tilec = np.where(self.coord >= 0, self.coord // np.array(self.tile), -1)
        self.grid = [math.ceil(c / t) for c, t in zip(self.canvas, self.tile)]

    def mask(self, canvas_rule):
        """Text queries see every valid key; every query sees valid text; canvas pairs follow the rule."""
        q_text = self.is_text[:, None]
        k_text = self.is_text[None, :]
        both_canvas = ~q_text & ~k_text
        m = q_text | k_text | (both_canvas & canvas_rule(self))
        return m & self.valid_key[None, :]


def d(L, a, unit="tile"):
    c = L.tilec if unit == "tile" else L.coord
    return c[None, :, a] - c[:, None, a]


def grat_b(r):
    return lambda L: np.all([np.abs(d(L, a)) <= r for a in range(L.rank)], axis=0)


def grat_x_2d(L):
    return (d(L, 0) == 0) | (d(L, 1) == 0)


def grat_x_lines_3d(L):
    e = [d(L, a) == 0 for a in range(3)]
    return (e[0] & e[1]) | (e[0] & e[2]) | (e[1] & e[2])


def clamped(q, k, r, n):
    """NATTEN/STA: the window of 2r+1 around q, shifted inside [0, n)."""
    centre = np.clip(q, r, n - 1 - r)
    return np.abs(k - centre) <= r


def sta(r):
    def rule(L):
        out = True
        for a in range(3):
            q, k = L.tilec[:, None, a], L.tilec[None, :, a]
            out = out & clamped(q, k, r, L.grid[a])
        return out
    return rule


def na(r):
    def rule(L):
        out = True
        for a in range(2):
            q, k = L.coord[:, None, a], L.coord[None, :, a]
            out = out & clamped(q, k, r, L.canvas[a])
        return out
    return rule


def attention(q, k, v, mask, scale):
    """The output and each row's log-sum-exp (natural log, -inf for a row without keys)."""
    b, h, n, dh = q.shape
    g = h // k.shape[1]
    out = np.zeros((b, h, n, v.shape[-1]))
    lse = np.full((b, h, n), -np.inf)
    for bi in range(b):
        for hi in range(h):
            s = (q[bi, hi].astype(np.float64) @ k[bi, hi // g].astype(np.float64).T) * scale
            s = np.where(mask, s, -np.inf)
            mx = s.max(axis=1, keepdims=True)
            seen = np.isfinite(mx[:, 0])
            p = np.where(mask, np.exp(s - np.where(np.isfinite(mx), mx, 0)), 0.0)
            o = p @ v[bi, hi // g].astype(np.float64)
            o[seen] /= p[seen].sum(axis=1, keepdims=True)
            out[bi, hi] = o
            lse[bi, hi, seen] = mx[seen, 0] + np.log(p[seen].sum(axis=1))
    return out, lse


def with_lse(path, kernel, tmp):
    """A copy of the kernel file whose kernel also writes its log-sum-exps (`outputs lse;`)."""
    text = open(path).read()
    at = text.index(f"kernel {kernel} = attention(")
    brace = text.index("{", at)
    out = os.path.join(tmp, f"{kernel}_lse.attn")
    with open(out, "w") as f:
        f.write(text[: brace + 1] + " outputs lse;" + text[brace + 1 :])
    return out


def lse_error(got, want):
    """max |got - want| / max(|want|, 1); -inf must meet -inf, anything else non-finite fails."""
    both_inf = np.isneginf(got) & np.isneginf(want)
    finite = np.isfinite(got) & np.isfinite(want)
    if not np.all(both_inf | finite):
        return math.inf
    if not finite.any():
        return 0.0
    return float((np.abs(got[finite] - want[finite]) / np.maximum(np.abs(want[finite]), 1.0)).max())


def case(rng, kind):
    """(file, kernel, sets, layout, rule) with random sizes."""
    heads, kvh = [(2, 2), (4, 1), (8, 2)][rng.integers(3)]
    hd = int(rng.choice([64, 128]))
    common = {"HEADS": heads, "KV_HEADS": kvh, "HEAD_DIM": hd}
    if kind in ("grat_b_2d", "grat_x_2d"):
        th, tw = int(rng.integers(2, 6)), int(rng.integers(2, 9))
        H, W = int(rng.integers(th + 1, 4 * th + 3)), int(rng.integers(tw + 1, 4 * tw + 3))
        text = int(rng.integers(0, 2 * th * tw + 5))
        valid = int(rng.integers(0, text + 1))
        sets = dict(H=H, W=W, TILE_H=th, TILE_W=tw, TEXT=text, TEXT_VALID=valid, **common)
        rule = grat_x_2d
        if kind == "grat_b_2d":
            r = int(rng.integers(1, 3))
            sets["R"] = r
            rule = grat_b(r)
        return "grat.attn", kind, sets, Layout([H, W], [th, tw], "tiled", text, valid, False), rule
    if kind in ("grat_b_3d", "grat_x_3d"):
        tile = [int(x) for x in rng.integers(2, 4, size=3)]
        canvas = [int(rng.integers(t + 1, 3 * t + 2)) for t in tile]
        text = int(rng.integers(0, 40))
        valid = int(rng.integers(0, text + 1))
        sets = dict(T=canvas[0], H=canvas[1], W=canvas[2], TILE_T=tile[0], TILE_H=tile[1], TILE_W=tile[2],
                    TEXT=text, TEXT_VALID=valid, **common)
        rule = grat_x_lines_3d
        if kind == "grat_b_3d":
            sets["R"] = 1
            rule = grat_b(1)
        return "grat.attn", kind, sets, Layout(canvas, tile, "tiled", text, valid, True), rule
    if kind == "sta_3d":
        tile = [int(x) for x in rng.integers(1, 3, size=3)]
        canvas = [t * int(rng.integers(3, 5)) - int(rng.integers(0, t)) for t in tile]
        text, valid = 256, int(rng.integers(200, 257))
        sets = dict(T=canvas[0], H=canvas[1], W=canvas[2], TILE_T=tile[0], TILE_H=tile[1], TILE_W=tile[2],
                    TEXT=text, TEXT_VALID=valid, R=1, **common)
        return "sta.attn", kind, sets, Layout(canvas, tile, "tiled", text, valid, True), sta(1)
    if kind in ("dense", "causal"):
        tile = int(rng.choice([32, 64, 128]))
        n = int(rng.integers(tile, 6 * tile))
        sets = dict(N=n, TILE=tile, **common)
        L = Layout([n], [tile], "tiled", 0, 0, False)
        rule = (lambda L: np.ones((L.n, L.n), bool)) if kind == "dense" else (lambda L: d(L, 0, "token") <= 0)
        return "dense.attn", kind, sets, L, rule
    # na_2d: token-level window, raster order, text prefix
    r = int(rng.integers(1, 4))
    H, W = int(rng.integers(2 * r + 1, 24)), int(rng.integers(2 * r + 1, 24))
    th, tw = int(rng.integers(2, 6)), int(rng.integers(2, 9))
    text = int(rng.integers(0, 20))
    valid = int(rng.integers(0, text + 1))
    sets = dict(H=H, W=W, TILE_H=th, TILE_W=tw, TEXT=text, TEXT_VALID=valid, R=r, **common)
    return "natten.attn", kind, sets, Layout([H, W], [th, tw], "raster", text, valid, False), na(r)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--attnc", required=True)
    ap.add_argument("--seed", type=int, default=11)
    ap.add_argument("--cases", type=int, default=12)
    ap.add_argument("--tolerance", type=float, default=1e-4)
    ap.add_argument("--backend", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--kernels", default=os.path.join(ROOT, "kernels"))
    a = ap.parse_args()
    rng = np.random.default_rng(a.seed)
    kinds = ["grat_b_2d", "grat_x_2d", "grat_b_3d", "grat_x_3d", "sta_3d", "na_2d"]
    if a.backend == "cuda":
        kinds += ["dense", "causal"]
    worst = 0.0
    failures = 0
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(a.cases):
            kind = kinds[i % len(kinds)]
            file, kernel, sets, layout, rule = case(rng, kind)
            heads, kvh, hd = sets["HEADS"], sets["KV_HEADS"], sets["HEAD_DIM"]
            n = layout.n
            q = rng.standard_normal((1, heads, n, hd)).astype(np.float32)
            k = rng.standard_normal((1, kvh, n, hd)).astype(np.float32)
            v = rng.standard_normal((1, kvh, n, hd)).astype(np.float32)
            paths = {x: os.path.join(tmp, f"{x}.npy") for x in ("q", "k", "v", "o", "lse")}
            for x, t in zip("qkv", (q, k, v)):
                np.save(paths[x], t)
            # Every second round of the kinds also writes the rows' log-sum-exps
            # (`outputs lse;`), compared with NumPy's in f64.
            lse = (i // len(kinds)) % 2 == 1
            path = os.path.join(a.kernels, file)
            if lse:
                path = with_lse(path, kernel, tmp)
            cmd = [a.attnc, "run", path, "--kernel", kernel, "--backend", a.backend]
            for name, val in sets.items():
                cmd += ["--set", f"{name}={val}"]
            cmd += ["--q", paths["q"], "--k", paths["k"], "--v", paths["v"], "-o", paths["o"], "--color", "never"]
            if lse:
                cmd += ["--lse-out", paths["lse"]]
            res = subprocess.run(cmd, capture_output=True, text=True)
            if res.returncode != 0:
                print(f"FAIL {kernel} {sets}: attnc exited {res.returncode}\n{res.stderr}")
                failures += 1
                continue
            out = np.load(paths["o"])
            ref, ref_lse = attention(q, k, v, layout.mask(rule), 1.0 / math.sqrt(hd))
            err = float(np.abs(out - ref).max() / max(np.abs(ref).max(), 1e-30))
            note = ""
            if lse:
                lse_err = lse_error(np.load(paths["lse"]).astype(np.float64), ref_lse)
                err = max(err, lse_err)
                note = f" (lse {lse_err:.2e})"
            worst = max(worst, err)
            ok = err < a.tolerance
            failures += 0 if ok else 1
            dens = layout.mask(rule).mean()
            print(f"{'ok  ' if ok else 'FAIL'} {kernel:10s} tokens {n:5d} density {dens:.3f} heads {heads}/{kvh} "
                  f"d {hd}: relative error {err:.2e}{note}  {sets}")
    print(f"{a.cases - failures}/{a.cases} cases within {a.tolerance:g}; worst relative error {worst:.2e}")
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
