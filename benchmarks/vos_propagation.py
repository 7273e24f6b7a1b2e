"""Time one DAVIS label-propagation step against the bare dense affinity product.

Setting of the issue: a 30 x 55 patch grid (480 x 880 pixels, patch 16), 384-d features,
8 source frames (the first + 7 previous), 4 objects + background. Both are timed in the same run,
interleaved, and the median ratio is printed together with the time to build the radius-12
neighbourhood plan (cached per (h, w, radius) afterwards). ``--reference`` also times the DINO
reference computation (dense exp-affinity, mask multiply, column top-k) for comparison.

    python benchmarks/vos_propagation.py [--repeats 15] [--threads N] [--device cpu|cuda] [--reference]
"""

from __future__ import annotations

import argparse
import statistics

import torch

from lore.bench import timed
from lore.tasks.vos import _window_plan, label_propagation


def dino_reference(feat_tar, feats_src, segs, h, w, mask, topk=5, temperature=0.1):
    """The DINO computation, for timing only (mask given, its 6 s Python build left out)."""
    n = feats_src.shape[0]
    ft = torch.nn.functional.normalize(feat_tar, dim=1)
    fs = torch.nn.functional.normalize(feats_src, dim=1)
    aff = torch.exp(torch.bmm(ft.unsqueeze(0).repeat(n, 1, 1), fs) / temperature)
    aff *= mask
    aff = aff.transpose(2, 1).reshape(-1, h * w)
    top = torch.topk(aff, dim=0, k=topk).values.min(dim=0).values
    aff[aff < top] = 0
    aff = aff / aff.sum(dim=0, keepdim=True)
    C = segs.shape[1]
    table = segs.reshape(n, C, -1).transpose(2, 1).reshape(-1, C).T
    return (table @ aff).reshape(C, h, w)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--h", type=int, default=30)
    parser.add_argument("--w", type=int, default=55)
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--objects", type=int, default=4)
    parser.add_argument("--radius", type=int, default=12)
    parser.add_argument("--topk", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--reference", action="store_true", help="also time the DINO reference step")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    h, w, d, n, C = args.h, args.w, args.dim, args.frames, args.objects + 1
    g = torch.Generator().manual_seed(0)
    feat_tar = torch.randn(h * w, d, generator=g).to(device)
    feats_src = torch.randn(n, d, h * w, generator=g).to(device)
    segs = torch.rand(n, C, h, w, generator=g).to(device)

    _window_plan(h + 1, w + 1, args.radius, str(device))  # first torch calls pay one-off start-up costs
    _window_plan.cache_clear()
    build = timed(lambda: _window_plan(h, w, args.radius, str(device)), device)

    def bare():
        return torch.bmm(feat_tar.unsqueeze(0).expand(n, -1, -1), feats_src)

    def step():
        return label_propagation(feat_tar, feats_src, segs, h, w, args.topk, args.radius)

    for _ in range(2):  # warm-up (allocator, kernels, the cached plan)
        bare(), step()
    t_bare, t_step, ratios = [], [], []
    for _ in range(args.repeats):
        a, b = timed(bare, device), timed(step, device)
        t_bare.append(a)
        t_step.append(b)
        ratios.append(b / a)
    print(f"grid {h}x{w}, {d}-d, {n} source frames, {args.objects} objects, radius {args.radius}, "
          f"top-{args.topk}, {torch.get_num_threads()} threads, {device}")
    print(f"bare bmm(feat_tar, feats_src): median {statistics.median(t_bare) * 1e3:8.2f} ms")
    print(f"label_propagation step:        median {statistics.median(t_step) * 1e3:8.2f} ms")
    print(f"ratio step / bmm:              median {statistics.median(ratios):.2f}x "
          f"(min {min(ratios):.2f}x, max {max(ratios):.2f}x)")
    print(f"neighbourhood plan build:      {build * 1e3:.1f} ms (once per (h, w, radius))")
    if args.reference:
        ii = torch.arange(h, device=device).repeat_interleave(w)
        jj = torch.arange(w, device=device).repeat(h)
        mask = (((ii[:, None] - ii[None]).abs() <= args.radius)
                & ((jj[:, None] - jj[None]).abs() <= args.radius)).float()
        ref = dino_reference(feat_tar, feats_src, segs, h, w, mask, args.topk)
        diff = (ref - step()).abs().max().item()
        t_ref = [timed(lambda: dino_reference(feat_tar, feats_src, segs, h, w, mask, args.topk), device)
                 / timed(bare, device) for _ in range(max(3, args.repeats // 3))]
        print(f"DINO reference step / bmm:     median {statistics.median(t_ref):.2f}x "
              f"(max |difference| to ours {diff:.2e})")


if __name__ == "__main__":
    main()
