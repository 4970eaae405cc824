#!/usr/bin/env python3
"""Times matgrad over Dask against one process, and the block size where scheduling stops
mattering.

1. The six workloads (shared/workloads.md, batches divided by --scale): `f.grad` in this
   process (all cores) against `matgrad.dask.grad` on a LocalCluster of --workers processes
   of one thread each, the batched input already on the workers (persisted) and the result
   left there (persist and wait: on a cluster the gradients stay distributed), and with the
   result gathered to the client.
2. W3 (8×8 per item, 1 048 576 items / --sweep-scale) in blocks of 1 024 to 524 288 items:
   seconds per batch against one process, i.e. where per-block overhead stops mattering.

Every answer is checked against the single-process one first. Prints one JSON object per line.
Usage: python benches/dask_scaling.py [--scale 16] [--sweep-scale 1] [--workers 2] [--samples 5]
Optional; not run by CI. Needs the matgrad package with its dask extra.
"""

import argparse
import json
import os
import statistics
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import peers  # noqa: E402
from python_calls import PROGRAMS  # noqa: E402

import matgrad  # noqa: E402
import matgrad.dask as mdask  # noqa: E402


def kept_seconds(client, g, samples):
    """Median seconds of computing `g` on the cluster and keeping it there. After each sample
    the keys are released and the next waits until no worker holds them: a persist that finds
    them still in memory would compute nothing."""
    from dask.core import flatten
    from dask.distributed import wait

    keys = set(flatten(g.__dask_keys__()))
    times = []
    for k in range(samples + 1):
        start = time.perf_counter()
        kept = client.persist(g)
        wait(kept)
        if k > 0:  # the first is the warm-up
            times.append(time.perf_counter() - start)
        del kept
        deadline = time.time() + 30
        while keys & set(client.who_has()) and time.time() < deadline:
            time.sleep(0.002)
    return statistics.median(times)


def split(data, batched_names, batch, block):
    import dask.array as da

    lazy = {}
    for name, value in data.items():
        if name in batched_names:
            lazy[name] = da.from_array(value, chunks=(min(block, batch),) + value.shape[1:]).persist()
        else:
            lazy[name] = value
    return lazy


def batched_of(workload):
    return {"W3 lsq-per-item": {"A", "x", "b"}}.get(workload, {PROGRAMS[workload][1]})


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--scale", type=int, default=16)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--samples", type=int, default=5)
    p.add_argument("--sweep-scale", type=int, default=1, help="W3's batch divisor for the sweep")
    args = p.parse_args()
    import warnings

    from dask.distributed import Client, LocalCluster

    # The inputs are made here and sent once (persisted); Dask's large-graph advice is moot.
    warnings.filterwarnings("ignore", message="Sending large graph")

    cluster = LocalCluster(n_workers=args.workers, threads_per_worker=1, processes=True,
                           host="127.0.0.1", dashboard_address=None, silence_logs=40)
    client = Client(cluster)
    try:
        for workload, (program, wrt) in PROGRAMS.items():
            batch = max(1, peers.BATCH[workload] // args.scale)
            data = peers.inputs(workload, batch)
            f = matgrad.compile(program, wrt, device="cpu")
            single = f.grad(**data)
            one_process = peers.median_seconds(lambda: f.grad(**data), args.samples)
            block = -(-batch // (4 * args.workers))  # four blocks per worker
            lazy = split(data, batched_of(workload), batch, block)
            g = mdask.grad(f, **lazy)
            if not np.array_equal(g.compute(), single):
                raise SystemExit(f"{workload}: the cluster's answer differs")
            kept = kept_seconds(client, g, args.samples)
            gathered = peers.median_seconds(lambda: g.compute(), args.samples)
            print(json.dumps(dict(part="workload", workload=workload, batch=batch, block=block,
                                  one_process_s=one_process, cluster_kept_s=kept,
                                  cluster_gathered_s=gathered,
                                  kept_speed_up=one_process / kept)), flush=True)
        workload = "W3 lsq-per-item"
        program, wrt = PROGRAMS[workload]
        batch = peers.BATCH[workload] // args.sweep_scale
        data = peers.inputs(workload, batch)
        f = matgrad.compile(program, wrt, device="cpu")
        one_process = peers.median_seconds(lambda: f.grad(**data), args.samples)
        for block in (1024, 4096, 16384, 65536, 131072, 262144, 524288):
            if block > batch:
                break
            g = mdask.grad(f, **split(data, batched_of(workload), batch, block))
            kept = kept_seconds(client, g, args.samples)
            print(json.dumps(dict(part="block size", workload=workload, batch=batch, block=block,
                                  blocks=-(-batch // block), cluster_kept_s=kept,
                                  one_process_s=one_process,
                                  per_block_ms=1e3 * kept / -(-batch // block))), flush=True)
    finally:
        client.close()
        cluster.close()


if __name__ == "__main__":
    main()
