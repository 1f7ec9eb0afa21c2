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
    row4 = next(r for r in envoy["load"] if r["body_kb"] == 4)
    best_serve = max(store["serve"], key=lambda r: r["records_per_s"])
    wasm64 = mask_mbs(d / "mask-wasm.txt", "chat request 64 KB, 17 secrets")
    wasm4 = mask_mbs(d / "mask-wasm.txt", "chat request 4 KB, 1 secret")
    rows = [
        ("throughput with tracegate at 4 KB, share of passthrough", ">= 80 %",
         f"{row4['throughput_ratio'] * 100:.0f} %", row4["throughput_ratio"] >= 0.8),
        ("p50 latency added at 4 KB", "<= 0.1 ms",
         f"{row4['p50_added_ms']:.2f} ms", row4["p50_added_ms"] <= 0.1),
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
