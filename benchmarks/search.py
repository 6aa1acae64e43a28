"""Vector search benchmark: exact vs HNSW on random unit vectors, next to plain numpy.

For each collection size N (default 100k and 1M vectors of dim 128, seeded Gaussian directions,
i.e. uniform on the sphere) it measures:

* build time: adding N vectors (HNSW builds its graph here; a flat index just copies);
* query latency p50/p99 of single queries (one query per call, as ``partita similar`` does), and
  the throughput of one batched call with all queries;
* recall@10 against the exact answer (the flat index's own batched search).

Peers in the same run: numpy brute force (``queries @ X.T`` + ``argpartition``, what one writes
without FAISS) and faiss's exact ``IndexFlatIP``, against ``IndexHNSWFlat`` (what ``partita
embed`` picks above 50k pieces) at a few ``efSearch`` values. Uniform random vectors have no
cluster structure, which makes them the hardest case for a graph index: the recall here is a
lower bound of what real embeddings (which cluster by composer and style) get.

    python benchmarks/search.py                         # 100k and 1M, 1 thread
    python benchmarks/search.py --sizes 100000 --queries 2000 --json bench.json
    python benchmarks/search.py --sizes 100000 --data clustered      # vectors around 1000 centres
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

import numpy as np


def unit(rng: np.random.Generator, n: int, dim: int, chunk: int = 200_000) -> np.ndarray:
    out = np.empty((n, dim), np.float32)
    for s in range(0, n, chunk):
        x = rng.standard_normal((min(chunk, n - s), dim), dtype=np.float32)
        out[s : s + len(x)] = x / np.linalg.norm(x, axis=1, keepdims=True)
    return out


def clustered(rng: np.random.Generator, n: int, dim: int, centres: np.ndarray, spread: float = 0.5) -> np.ndarray:
    """Unit vectors around shared centres: each is a centre plus Gaussian noise of norm ~``spread``,
    re-normalised. Real piece embeddings cluster like this (by composer, style, texture)."""
    out = np.empty((n, dim), np.float32)
    for s in range(0, n, 200_000):
        m = min(200_000, n - s)
        x = centres[rng.integers(0, len(centres), m)] + spread / np.sqrt(dim) * rng.standard_normal((m, dim), dtype=np.float32)
        out[s : s + m] = x / np.linalg.norm(x, axis=1, keepdims=True)
    return out


def latencies(search_one, queries: np.ndarray) -> np.ndarray:
    times = np.empty(len(queries))
    for i in range(len(queries)):
        t0 = time.perf_counter()
        search_one(queries[i : i + 1])
        times[i] = time.perf_counter() - t0
    return times * 1000.0


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    k = truth.shape[1]
    return float(np.mean([len(set(f[:k]) & set(t)) / k for f, t in zip(found, truth)]))


def bench_size(n: int, dim: int, n_queries: int, k: int, m: int, ef_construction: int, ef_searches: list[int],
               seed: int, numpy_queries: int, data: str = "random", clusters: int = 1000) -> list[dict]:
    import faiss

    rng = np.random.default_rng(seed)
    if data == "random":
        x = unit(rng, n, dim)
        q = unit(rng, n_queries, dim)
    else:
        centres = unit(rng, clusters, dim)
        x = clustered(rng, n, dim, centres)
        q = clustered(rng, n_queries, dim, centres)
    rows = []

    # Exact: faiss flat (inner product = cosine for unit vectors).
    t0 = time.perf_counter()
    flat = faiss.IndexFlatIP(dim)
    flat.add(x)
    build = time.perf_counter() - t0
    t0 = time.perf_counter()
    _, truth = flat.search(q, k)
    batch = time.perf_counter() - t0
    lat = latencies(lambda one: flat.search(one, k), q)
    rows.append({"n": n, "method": "faiss exact (IndexFlatIP)", "build_s": build, "p50_ms": float(np.percentile(lat, 50)),
                 "p99_ms": float(np.percentile(lat, 99)), "batch_qps": n_queries / batch, "recall@10": 1.0,
                 "bytes": int(n * dim * 4)})

    # Peer: numpy brute force, as one would write it without an index library.
    def np_search(one):
        s = one @ x.T
        top = np.argpartition(-s, k, axis=1)[:, :k]
        return np.take_along_axis(top, np.argsort(-np.take_along_axis(s, top, axis=1), axis=1), axis=1)

    qn = q[:numpy_queries]
    lat = latencies(np_search, qn)
    t0 = time.perf_counter()
    found = np.concatenate([np_search(qn[s : s + 100]) for s in range(0, len(qn), 100)])
    batch = time.perf_counter() - t0
    rows.append({"n": n, "method": "numpy brute force", "build_s": 0.0, "p50_ms": float(np.percentile(lat, 50)),
                 "p99_ms": float(np.percentile(lat, 99)), "batch_qps": len(qn) / batch,
                 "recall@10": recall(found, truth[: len(qn)]), "bytes": int(n * dim * 4), "queries": len(qn)})
    flat.reset()  # frees its memory before the HNSW graph is built

    # HNSW, as partita builds it (inner product, M links per node).
    t0 = time.perf_counter()
    hnsw = faiss.IndexHNSWFlat(dim, m, faiss.METRIC_INNER_PRODUCT)
    hnsw.hnsw.efConstruction = ef_construction
    hnsw.add(x)
    build = time.perf_counter() - t0
    size = int(faiss.serialize_index(hnsw).nbytes)
    for ef in ef_searches:
        hnsw.hnsw.efSearch = ef
        t0 = time.perf_counter()
        _, found = hnsw.search(q, k)
        batch = time.perf_counter() - t0
        lat = latencies(lambda one: hnsw.search(one, k), q)
        rows.append({"n": n, "method": f"faiss HNSW (M={m}, efC={ef_construction}, efSearch={ef})", "build_s": build,
                     "p50_ms": float(np.percentile(lat, 50)), "p99_ms": float(np.percentile(lat, 99)),
                     "batch_qps": n_queries / batch, "recall@10": recall(found, truth), "bytes": size})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--queries", type=int, default=1000, help="single queries timed per method")
    ap.add_argument("--numpy-queries", type=int, default=200, help="queries for the (slow) numpy peer")
    ap.add_argument("-k", type=int, default=10)
    ap.add_argument("--hnsw-m", type=int, default=32)
    ap.add_argument("--ef-construction", type=int, default=200)
    ap.add_argument("--ef-search", type=int, nargs="+", default=[64, 128, 256])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--data", choices=["random", "clustered"], default="random",
                    help="random: uniform on the sphere (the worst case for HNSW); clustered: around 1000 centres")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()

    import faiss

    faiss.omp_set_num_threads(args.threads)
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    rows = []
    for n in args.sizes:
        t0 = time.perf_counter()
        part = bench_size(n, args.dim, args.queries, args.k, args.hnsw_m, args.ef_construction, args.ef_search, args.seed,
                          args.numpy_queries, args.data)
        for r in part:
            r["data"] = args.data
        rows += part
        print(f"N={n:,} ({args.data}): {time.perf_counter() - t0:.0f} s", flush=True)
        for r in part:
            print(f"  {r['method']:<50} build {r['build_s']:7.1f} s  p50 {r['p50_ms']:8.3f} ms  p99 {r['p99_ms']:8.3f} ms  "
                  f"batch {r['batch_qps']:9.0f} q/s  recall@10 {r['recall@10']:.3f}  {r['bytes'] / 2**20:7.1f} MiB", flush=True)
    if args.json:
        meta = {"dim": args.dim, "queries": args.queries, "k": args.k, "threads": args.threads, "seed": args.seed,
                "faiss": faiss.__version__, "numpy": np.__version__, "machine": platform.machine(),
                "cpu": platform.processor() or platform.machine(), "cores": os.cpu_count()}
        with open(args.json, "w") as f:
            json.dump({"meta": meta, "rows": rows}, f, indent=2)


if __name__ == "__main__":
    main()
