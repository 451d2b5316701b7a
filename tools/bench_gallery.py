"""Benchmark the gallery's index types on synthetic face-like embeddings.

    python tools/bench_gallery.py --sizes 10000,100000 [--indexes flat,hnsw,ivf] [--json]

Vectors are unit length, dim 512, grouped like enrolled faces: identity centres at random, several
embeddings per identity scattered around their centre (same-person cosine ~0.6), and queries are fresh
noisy samples of existing identities. The indexes are built by facekit.datastore's own code, with its
parameters. Each index is asked for 32 hits per query, what Gallery.search(k=5) fetches before grouping by
identity. recall_at_1 is the share of queries whose best hit is the exact (flat) best vector.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import os
import sys
import time
from pathlib import Path

import faiss
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from facekit import datastore
from facekit.datastore import IndexSpec, ShardedIndex, choose_index

HITS = 32


def rss_bytes() -> int:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def release_memory() -> None:
    gc.collect()
    ctypes.CDLL("libc.so.6").malloc_trim(0)  # so the next RSS delta is not hidden by reused free memory


def unit(rows: np.ndarray) -> np.ndarray:
    rows /= np.linalg.norm(rows, axis=1, keepdims=True)
    return rows


def synthetic(size: int, queries: int, dim: int, per_identity: int, noise: float, seed: int = 0):
    """(base, base identity, queries, query identity); noise is the norm of the offset from the centre."""
    rng = np.random.default_rng(seed)
    n_identities = max(1, size // per_identity)
    centres = unit(rng.standard_normal((n_identities, dim), dtype=np.float32))
    base = np.empty((size, dim), np.float32)
    owner = np.arange(size) % n_identities
    scale = noise / np.sqrt(dim)
    for start in range(0, size, 65536):
        part = slice(start, min(size, start + 65536))
        offsets = rng.standard_normal((part.stop - start, dim), dtype=np.float32) * scale
        base[part] = unit(centres[owner[part]] + offsets)
    query_owner = rng.integers(0, n_identities, queries)
    offsets = rng.standard_normal((queries, dim), dtype=np.float32) * scale
    return base, owner, unit(centres[query_owner] + offsets), query_owner


def build(kind: str, base: np.ndarray) -> tuple[ShardedIndex, float]:
    spec = choose_index("ivf", len(base)) if kind == "ivf" else IndexSpec(kind)
    started = time.perf_counter()
    train = None
    if spec.kind == "ivf":
        rng = np.random.default_rng(1)
        size = min(len(base), datastore.IVF_TRAIN_PER_CLUSTER * spec.nlist)
        train = base[np.sort(rng.choice(len(base), size, replace=False))]
    index = ShardedIndex.create(spec, base.shape[1], 1, train)
    for start in range(0, len(base), 65536):
        part = base[start : start + 65536]
        index.add(part, np.arange(start, start + len(part), dtype=np.int64) + 1)  # ids start at 1, like SQLite
    return index, time.perf_counter() - started


def measure(index: ShardedIndex, queries: np.ndarray, singles: int) -> dict:
    index.search(queries[:8], HITS)  # warm up
    single, cpu = [], []
    for query in queries[:singles]:
        started, cpu_started = time.perf_counter(), time.thread_time()
        index.search(query[None, :], HITS)
        single.append(time.perf_counter() - started)
        cpu.append(time.thread_time() - cpu_started)
    batched = []
    for start in range(0, len(queries) - 63, 64):
        started = time.perf_counter()
        index.search(queries[start : start + 64], HITS)
        batched.append((time.perf_counter() - started) / 64)
    _, ids = index.search(queries, HITS)
    return {
        "p50_ms": 1000 * float(np.percentile(single, 50)),
        "p99_ms": 1000 * float(np.percentile(single, 99)),
        # CPU time of the searching thread: the latency on an idle machine (single queries use one thread).
        "cpu_p50_ms": 1000 * float(np.percentile(cpu, 50)),
        "batch64_ms_per_query": 1000 * float(np.median(batched)) if batched else None,
        "top1": ids[:, 0] - 1,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10000,100000")
    parser.add_argument("--indexes", default="flat,hnsw,ivf")
    parser.add_argument("--json", action="store_true", help="one JSON object per row")
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--singles", type=int, default=300, help="single queries timed one by one")
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--per-identity", type=int, default=5)
    parser.add_argument("--noise", type=float, default=0.8)
    parser.add_argument("--threads", type=int, default=0, help="FAISS threads (default: facekit's choice)")
    parser.add_argument("--probe-share", type=float, help="override IVF_PROBE_SHARE")
    parser.add_argument("--ef-search", type=int, help="override HNSW_EF_SEARCH")
    args = parser.parse_args()
    threads = datastore.set_threads(args.threads or None)
    if args.probe_share:
        datastore.IVF_PROBE_SHARE = args.probe_share
    if args.ef_search:
        datastore.HNSW_EF_SEARCH = args.ef_search
    kinds = args.indexes.split(",")
    if not args.json:
        print(f"dim {args.dim}, {args.per_identity} vectors per identity, {threads} threads, {HITS} hits per query")
        print(
            f"{'size':>9} {'index':>5} {'auto':>4} {'build s':>8} {'B/vec':>6} {'p50 ms':>7} {'p99 ms':>7}"
            f" {'cpu p50':>7} {'b64 ms/q':>8} {'recall@1':>8} {'id rec@1':>8}"
        )
    for size in (int(s) for s in args.sizes.split(",")):
        base, _, queries, query_owner = synthetic(size, args.queries, args.dim, args.per_identity, args.noise)
        _, exact = faiss.knn(queries, base, 1, metric=faiss.METRIC_INNER_PRODUCT)
        exact = exact[:, 0]
        n_identities = max(1, size // args.per_identity)
        for kind in kinds:
            release_memory()
            before = rss_bytes()
            index, build_s = build(kind, base)
            resident = rss_bytes() - before
            result = measure(index, queries, args.singles)
            top1 = result.pop("top1")
            row = {
                "size": size,
                "index": kind,
                "auto": choose_index("auto", size).kind == kind,
                "build_s": round(build_s, 2),
                "bytes_per_vector": round(resident / size, 1),
                "p50_ms": round(result["p50_ms"], 3),
                "p99_ms": round(result["p99_ms"], 3),
                "recall_at_1": round(float(np.mean(top1 == exact)), 4),
                "cpu_p50_ms": round(result["cpu_p50_ms"], 3),
                "batch64_ms_per_query": round(result["batch64_ms_per_query"] or 0.0, 3),
                "identity_recall_at_1": round(float(np.mean(top1 % n_identities == query_owner)), 4),
                "resident_mb": round(resident / 2**20, 1),
                "params": {
                    "nlist": index.spec.nlist,
                    "probe_share": round(datastore.IVF_PROBE_SHARE, 3),
                    "ef_search": datastore.HNSW_EF_SEARCH,
                    "hnsw_m": datastore.HNSW_M,
                },
            }
            del index
            if args.json:
                print(json.dumps(row), flush=True)
            else:
                print(
                    f"{size:>9} {kind:>5} {'*' if row['auto'] else '':>4} {row['build_s']:>8.1f}"
                    f" {row['bytes_per_vector']:>6.0f} {row['p50_ms']:>7.2f} {row['p99_ms']:>7.2f}"
                    f" {row['cpu_p50_ms']:>7.2f} {row['batch64_ms_per_query']:>8.3f} {row['recall_at_1']:>8.4f}"
                    f" {row['identity_recall_at_1']:>8.4f}",
                    flush=True,
                )
        del base
        release_memory()


if __name__ == "__main__":
    main()
