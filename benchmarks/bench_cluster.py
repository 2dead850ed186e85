#!/usr/bin/env python
"""Benchmark: the paper's batched clustering (§3.1, eq. 3.3), ``mfarray.cluster``.

(a) Batched clustering of 10^5 Fermat-quintic points with the paper's settings (size 5000,
    batch 10,000: C = 20 clusters, 10 mini-batches) on Dask's threaded scheduler: wall time
    and peak memory (VmHWM of a fresh interpreter, and its RSS before clustering).  Goal: under
    60 s and 2 GiB on 2 cores.
(b) Full (unbatched) clustering at 10^4 points: scikit-learn's
    ``AgglomerativeClustering(metric="precomputed", linkage="average")`` on the (N, N) FS matrix
    against mfarray's one-batch path (batch >= N), time and peak memory, each in a fresh
    interpreter; and the quality (mean intra-cluster FS distance, 10-NN in own cluster) of
    batched against full clustering at 10^4 points, C = 20.
(c) Merge rules: "paper" (eq. 3.3, greedy) against "assignment" (one-to-one optimal) on the same
    max-distance cost, at 10^4 points over three seeds, and at 10^5 (quality with 2000 queries).

Usage::

    python benchmarks/bench_cluster.py            # everything (~10 min on 2 busy cores)
    python benchmarks/bench_cluster.py --quick    # 2x10^4 / 4x10^3 points
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from machine import cpu_model


def _status_mb(key: str) -> float:
    """A memory figure of this process from /proc/self/status (VmHWM: peak RSS; VmRSS: now), MB."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key):
                return int(line.split()[1]) / 1024.0
    return float("nan")


def vm_hwm_mb() -> float:
    return _status_mb("VmHWM")


def vm_rss_mb() -> float:
    return _status_mb("VmRSS")


def points(n, seed=7):
    import mfarray as mf

    return mf.sample_points(mf.fermat_quintic(), n, seed=seed).persist()


def child(mode, n, size, batch, merge):
    """In a fresh interpreter: time and memory of one clustering; print JSON."""
    import dask

    import mfarray as mf

    pts = points(n)
    dask.compute(pts["z"].data)
    rss0 = vm_rss_mb()
    t, cpu = time.perf_counter(), time.process_time()
    if mode == "mfarray":
        lab = mf.cluster(pts, size=size, batch=batch, merge=merge)["cluster"].values
    else:  # scikit-learn on the full (N, N) matrix
        from sklearn.cluster import AgglomerativeClustering

        d = mf.fs_distance(pts["z"].values, method="gemm")
        lab = AgglomerativeClustering(n_clusters=max(1, round(n / size)), metric="precomputed",
                                      linkage="average").fit_predict(d)
    wall, cpu = time.perf_counter() - t, time.process_time() - cpu
    print(json.dumps({"wall_s": wall, "cpu_s": cpu, "rss_before_mb": rss0, "vmhwm_mb": vm_hwm_mb(),
                      "clusters": int(np.max(lab)) + 1}))


def run_child(mode, n, size, batch, merge="assignment"):
    cmd = [sys.executable, os.path.abspath(__file__), "--_child", mode, "--n", str(n), "--size", str(size),
           "--batch", str(batch), "--merge", merge]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def quality(pts, size, batch, merge, seed=0, queries=None):
    import mfarray as mf

    t = time.perf_counter()
    out = mf.cluster(pts, size=size, batch=batch, merge=merge, seed=seed).compute()
    wall = time.perf_counter() - t
    q = mf.cluster_quality(out, k=10, queries=queries)
    return float(q.mean_intra_distance), float(q.knn_in_cluster), wall, q["size"].values


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--_child")
    ap.add_argument("--n", type=int)
    ap.add_argument("--size", type=int)
    ap.add_argument("--batch", type=int)
    ap.add_argument("--merge", default="assignment")
    a = ap.parse_args()
    if a._child:
        return child(a._child, a.n, a.size, a.batch, a.merge)

    big, small = (20_000, 4_000) if a.quick else (100_000, 10_000)
    load = os.getloadavg()
    print(f"machine: {cpu_model()}, {os.cpu_count()} cores; load average before {load[0]:.2f}")

    print(f"\n(a) batched clustering of {big} quintic points, size 5000, batch 10000 (fresh interpreter)")
    r = run_child("mfarray", big, 5000, 10_000)
    print(f"  wall {r['wall_s']:.1f} s (CPU {r['cpu_s']:.1f} s, all threads), peak RSS {r['vmhwm_mb']:.0f} MB (RSS before clustering "
          f"{r['rss_before_mb']:.0f} MB), {r['clusters']} clusters")

    print(f"\n(b) full clustering at {small} points, C = 20 (fresh interpreters)")
    for mode in ("sklearn", "mfarray"):
        r = run_child(mode, small, small // 20, small)
        print(f"  {mode:8s} wall {r['wall_s']:.1f} s (CPU {r['cpu_s']:.1f} s), peak RSS {r['vmhwm_mb']:.0f} MB "
              f"(before {r['rss_before_mb']:.0f} MB)")

    pts = points(small).compute()
    print(f"\n(b, c) quality at {small} points, C = 20, 10-NN, all points as queries")
    print(f"  {'clustering':34s} {'intra d_FS':>10s} {'10-NN in own':>12s} {'time s':>7s}  sizes min/max")
    rows = [("full (one batch)", small, "assignment", 0)]
    for batch in (small // 10, small // 5):
        for merge in ("paper", "assignment"):
            for seed in (0, 1, 2):
                rows.append((f"batch {batch}, {merge}, seed {seed}", batch, merge, seed))
    res = {}
    for name, batch, merge, seed in rows:
        intra, knn, wall, sizes = quality(pts, small // 20, batch, merge, seed)
        res[name] = (intra, knn)
        print(f"  {name:34s} {intra:10.4f} {knn:12.4f} {wall:7.1f}  {sizes.min()}/{sizes.max()}")
    rng = np.random.default_rng(0)
    import mfarray as mf

    rnd = mf.cluster_quality(pts.assign(cluster=("point", rng.permutation(np.arange(small) % 20))), k=10)
    print(f"  {'random labels (20 equal clusters)':34s} {float(rnd.mean_intra_distance):10.4f} "
          f"{float(rnd.knn_in_cluster):12.4f}")
    for batch in (small // 10, small // 5):
        for merge in ("paper", "assignment"):
            v = np.array([res[f"batch {batch}, {merge}, seed {s}"] for s in (0, 1, 2)])
            print(f"  mean over seeds: batch {batch}, {merge:10s} intra {v[:, 0].mean():.4f}, 10-NN {v[:, 1].mean():.4f}")

    print(f"\n(c) merge rules at {big} points (size 5000, batch 10000), quality with 2000 queries")
    bigpts = points(big).compute()
    for merge in ("paper", "assignment"):
        intra, knn, wall, sizes = quality(bigpts, 5000, 10_000, merge, 0, queries=2000)
        print(f"  {merge:10s} intra {intra:.4f}, 10-NN {knn:.4f}, clustering {wall:.1f} s, sizes "
              f"{sizes.min()}/{sizes.max()}")
    print(f"\nload average after {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
