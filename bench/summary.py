"""The last table of `make bench`: each target next to what this run measured.

Reads target/bench/{envoy,store,presidio}.json and mask-{native,wasm}.txt;
writes target/bench/summary.json. Targets are reported, never asserted.

usage: summary.py BENCH_DIR
"""

import json
import re
import sys
from pathlib import Path


def mask_mbs(path, case):
    for line in Path(path).read_text().splitlines():
        m = re.match(r"(.+?)\s+([0-9.]+)$", line.strip())
        if m and m.group(1).startswith(case):
            return float(m.group(2))
    return None


def main():
    d = Path(sys.argv[1])
    envoy = json.loads((d / "envoy.json").read_text())
    store = json.loads((d / "store.json").read_text())
    presidio = json.loads((d / "presidio.json").read_text())
    load = {r["body_kb"]: r for r in envoy["load"]}
    best_serve = max(store["serve"], key=lambda r: r["records_per_s"])
    wasm64 = mask_mbs(d / "mask-wasm.txt", "chat request 64 KB, 17 secrets")
    wasm4 = mask_mbs(d / "mask-wasm.txt", "chat request 4 KB, 1 secret")
    rows = []
    # Throughput: a share of passthrough, and a row with errors misses.
    for kb, share in ((1, 0.65), (4, 0.60), (64, 0.40)):
        row = load.get(kb)
        if row is None:
            continue
        ratio = row["throughput_ratio"]
        errors = row["tracegate"]["errors"]
        got = f"{ratio * 100:.0f} %" + ("" if errors == "none" else f", errors: {errors}")
        if "floor_ratio" in row:
            # What a filter that reads whole bodies without any policy reaches.
            got += f" (floor {row['floor_ratio'] * 100:.0f} %)"
        rows.append((f"throughput with tracegate at {kb} KB, share of passthrough, no errors",
                     f">= {share * 100:.0f} %", got, ratio >= share and row["clean"]))

    def latency(rate_name, listener):
        return next((r for r in envoy["latency_4kb_fixed_rate"]
                     if r["rate_name"] == rate_name and r["listener"] == listener), None)

    half = latency("half of passthrough's capacity", "tracegate (records async)")
    if half:
        rows.append(("p50 added at 4 KB, half of passthrough's capacity, open loop", "<= 0.15 ms",
                     f"{half['p50_added_ms']:.2f} ms", half["p50_added_ms"] <= 0.15))
        rows.append(("p99 added at 4 KB, half of passthrough's capacity, open loop", "<= 0.5 ms",
                     f"{half['p99_added_ms']:.2f} ms", half["p99_added_ms"] <= 0.5))
    ahead = latency("light", "tracegate (records written ahead)")
    if ahead:
        got = f"{ahead['p99_added_ms']:.2f} ms"
        disk = latency("light", "disk")
        if disk:
            # A written-ahead request waits for one fdatasync: the disk's
            # own p99 at that pace, measured in the same run.
            got += f" (the disk alone: fdatasync p99 {disk['p99_ms']:.2f} ms)"
        rows.append(("p99 added at 4 KB, records written ahead, light load (100/s)", "<= 2 ms",
                     got, ahead["p99_added_ms"] <= 2))
    memory = envoy["memory"]
    wasm_mb = memory["wasm_memory_bytes"] / 1048576
    rows.append(("wasm linear memory per worker, one configuration, after every body size",
                 "<= 16 MB", f"{wasm_mb:.1f} MB", wasm_mb <= 16))
    added_mb = (memory["envoy_rss_with_kb"] - memory["envoy_rss_without_kb"]) / 1024
    got = f"{added_mb:.1f} MB"
    if memory.get("envoy_rss_floor_kb"):
        # What the floor filter (no policy) adds in the same Envoy.
        floor_mb = (memory["envoy_rss_floor_kb"] - memory["envoy_rss_without_kb"]) / 1024
        got += f" (floor {floor_mb:.1f} MB)"
    rows.append(("Envoy RSS added by one configuration, one worker", "<= 40 MB",
                 got, added_mb <= 40))
    two = memory.get("two_workers")
    if two:
        added2_mb = (two["envoy_rss_with_kb"] - two["envoy_rss_without_kb"]) / 1024
        further = added2_mb - added_mb
        rows.append(("Envoy RSS added by one configuration, each further worker", "<= 40 MB",
                     f"{further:.1f} MB (two workers: {added2_mb:.1f} MB)", further <= 40))
    rows += [
        ("masking in wasm, 64 KB chat request with 17 secrets", ">= 100 MB/s",
         f"{wasm64:.0f} MB/s" if wasm64 else "?", bool(wasm64 and wasm64 >= 100)),
        ("masking in wasm, 4 KB chat request", ">= 100 MB/s",
         f"{wasm4:.0f} MB/s" if wasm4 else "?", bool(wasm4 and wasm4 >= 100)),
        ("collector durable records/s (best setup)", ">= 50,000",
         f"{best_serve['records_per_s']:,.0f} ({best_serve['clients']} clients x "
         f"{best_serve['records_per_call']})", best_serve["records_per_s"] >= 50_000),
    ]
    print("# Targets (reported, not asserted)")
    print()
    print("| measure | target | this run | met |")
    print("|---|---|---:|:---:|")
    for name, target, got, met in rows:
        print(f"| {name} | {target} | {got} | {'yes' if met else 'no'} |")
    print()
    print(f"Presidio on the same corpus: {presidio['presidio']['mb_per_s']:.2f} MB/s, "
          f"recall {presidio['presidio']['recall_all']:.1%}; tracegate "
          f"{presidio['tracegate']['mb_per_s']:.0f} MB/s, recall "
          f"{presidio['tracegate']['recall_all']:.1%}; agreement {presidio['agreement']:.1%}.")
    (d / "summary.json").write_text(json.dumps(
        [{"measure": n, "target": t, "measured": g, "met": m} for n, t, g, m in rows], indent=2))


if __name__ == "__main__":
    main()
