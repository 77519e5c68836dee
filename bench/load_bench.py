#!/usr/bin/env python3
"""Strata under sustained load (issue 7): a real etcd and three store nodes on loopback
(`strata cluster`, started with cluster_bench's helpers, a fresh cluster per replication
factor: R=2, then R=1), then one strata-bench run against it per R: 16 streams put the data
set, then mix gets and puts for 60 s (`--ops put,mixed`), every byte of every get verified.

Prints a table (per op: calls/s, GB/s, p50/p99/p999 per call, errors by code, wrong bytes)
and writes the figures as JSON (default bench-results/load.json). Never asserts a speed.
Exit code: 0 when every run finished with no error and no wrong byte; 1 otherwise (errors,
wrong bytes, a run cut short, a cluster that did not start). Every process it starts is
stopped on exit, also on Ctrl-C, SIGTERM or an exception.
"""
import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile

sys.dont_write_bytecode = True  # importing cluster_bench must leave no __pycache__ in bench/
from cluster_bench import ROOT, start_cluster, stop_cluster  # noqa: E402


def parse_bytes(text):
    units = {"": 1, "B": 1, "KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30}
    num = text.rstrip("BKMGi")
    return int(float(num) * units[text[len(num):]])


def warm_bytes_per_node(a, replicas):
    """Each node's warm tier: its share of every block the run can store, with room to spare
    (rendezvous placement is not even, the slab allocator keeps partial pages), so that
    nothing is evicted and every get finds its block."""
    data = (a.blocks + a.fresh_blocks) * parse_bytes(a.block_size) * replicas
    share = data * 3 // (2 * a.nodes) + (256 << 20)
    return "%dMiB" % max(1024, -(-share // (1 << 20)))


def run_bench(a, etcd, replicas, json_path):
    cmd = [os.path.join(a.bindir, "strata-bench"), "--etcd", etcd, "--cluster", "bench",
           "--replicas", str(replicas), "--ops", "put,mixed", "--streams", str(a.streams),
           "--mixed-seconds", str(a.seconds), "--get-fraction", str(a.get_fraction),
           "--blocks", str(a.blocks), "--fresh-blocks", str(a.fresh_blocks),
           "--block-size", a.block_size, "--batch", str(a.batch),
           "--seed", str(a.seed + replicas), "--max-seconds", str(a.max_seconds),
           "--json", json_path]
    print("R=%d: %s" % (replicas, " ".join(cmd)), flush=True)
    # The bench's own table and first error lines go to this terminal as they come.
    try:
        rc = subprocess.run(cmd, timeout=a.max_seconds + 60).returncode
    except subprocess.TimeoutExpired:
        sys.exit("load_bench: strata-bench ran past --max-seconds + 60 s; killed")
    try:
        with open(json_path) as f:
            return rc, json.load(f), " ".join(cmd)
    except (OSError, ValueError) as e:
        sys.exit("load_bench: strata-bench (exit %d) wrote no report: %s" % (rc, e))


def print_table(runs):
    print("\n%-3s %-9s %9s %8s %8s %9s %9s %9s %7s %6s  %s" % (
        "R", "op", "calls", "calls/s", "GB/s", "p50 ms", "p99 ms", "p999 ms", "errors",
        "wrong", "errors by code"))
    for run in runs:
        for p in run["report"]["phases"]:
            codes = ", ".join("%s %d" % kv for kv in sorted(p.get("errors_by_code", {}).items()))
            print("%-3d %-9s %9d %8.1f %8.3f %9.2f %9.2f %9.2f %7d %6d  %s" % (
                run["replicas"], p["op"], p["calls"], p["calls_per_s"], p["gbps"],
                p["p50_us"] / 1e3, p["p99_us"] / 1e3, p["p999_us"] / 1e3, p["errors"],
                p["mismatches"], codes or "-"))


def interrupted(signum, frame):
    # SIGTERM unwinds like Ctrl-C, so that the finally blocks stop the cluster.
    raise KeyboardInterrupt


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--bindir", default=os.path.join(ROOT, "build", "release", "bin"),
                    help="strata, strata-storenode and strata-bench (default build/release/bin)")
    ap.add_argument("--nodes", type=int, default=3)
    ap.add_argument("--replicas", default="2,1", help="R values, one cluster each")
    ap.add_argument("--streams", type=int, default=16)
    ap.add_argument("--seconds", type=float, default=60, help="length of the mixed phase")
    ap.add_argument("--get-fraction", type=float, default=0.8)
    ap.add_argument("--blocks", type=int, default=1024, help="data set put before the mix")
    ap.add_argument("--fresh-blocks", type=int, default=8192,
                    help="blocks the mixed puts store for the first time (then: dedup)")
    ap.add_argument("--block-size", default="256KiB")
    ap.add_argument("--batch", type=int, default=4, help="blocks per call")
    ap.add_argument("--seed", type=int, default=100)
    ap.add_argument("--max-seconds", type=float, default=None,
                    help="strata-bench's limit per run (default: --seconds + 240)")
    ap.add_argument("--json", default=os.path.join("bench-results", "load.json"))
    a = ap.parse_args()
    if a.max_seconds is None:
        a.max_seconds = a.seconds + 240
    replicas = [int(r) for r in a.replicas.split(",")]

    signal.signal(signal.SIGTERM, interrupted)
    os.makedirs(os.path.dirname(os.path.abspath(a.json)), exist_ok=True)
    # Everything shares this machine's cores (etcd, the nodes, the bench, and whatever else
    # runs): the load average says how far to trust the figures.
    load = os.getloadavg()
    print("%d CPUs, load average %.2f %.2f %.2f" % ((os.cpu_count() or 0,) + load))
    results = {"nodes": a.nodes, "streams": a.streams, "mixed_seconds": a.seconds,
               "get_fraction": a.get_fraction, "block_size": a.block_size, "batch": a.batch,
               "cpus": os.cpu_count(), "load_average_at_start": load, "runs": []}
    failed = False
    for r in replicas:
        warm = warm_bytes_per_node(a, r)
        log = tempfile.NamedTemporaryFile("w+", prefix="load_bench.", suffix=".log",
                                          delete=False)
        report_path = log.name[:-4] + ".json"
        proc = None
        try:
            proc, etcd = start_cluster(a.bindir, r, a.nodes, log, warm_bytes=warm)
            print("R=%d: %d nodes, warm tier %s each, etcd %s" % (r, a.nodes, warm, etcd))
            rc, report, cmd = run_bench(a, etcd, r, report_path)
        finally:
            if proc is not None:
                stop_cluster(proc)
            log.close()
            for path in (log.name, report_path):
                if os.path.exists(path):
                    os.unlink(path)
        # errors include wrong bytes (mismatches)
        bad = sum(p["errors"] for p in report["phases"])
        complete = all(p["complete"] for p in report["phases"])
        failed = failed or rc != 0 or bad > 0 or not complete
        results["runs"].append({"replicas": r, "warm_bytes_per_node": warm, "command": cmd,
                                "exit_code": rc, "report": report})

    results["load_average_at_end"] = os.getloadavg()
    with open(a.json, "w") as f:
        json.dump(results, f, indent=1)
    print_table(results["runs"])
    print("ms per batched call of %d blocks of %s; GB/s = 1e9 B/s of payload (each block "
          "counted once, whatever R); load average at the end %.2f %.2f %.2f; JSON: %s" % (
              (a.batch, a.block_size) + results["load_average_at_end"] + (a.json,)))
    if failed:
        print("FAILED: errors, wrong bytes or an incomplete run (see above)")
        return 1
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        sys.exit("load_bench: interrupted; cluster stopped")
