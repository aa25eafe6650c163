#!/usr/bin/env python3
"""Draws benches/lambda-memory.png from the CSV `make bench-lambda` writes:
warm p99 (paced at 20/s) of the service and of hello-world, and the cost
per million requests, against the function's memory size."""
import csv
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

source, target = sys.argv[1], sys.argv[2]
with open(source, newline="") as f:
    rows = list(csv.DictReader(f))
mb = [int(r["mb"]) for r in rows]
fig, left = plt.subplots(figsize=(7, 4))
left.plot(mb, [float(r["service_p99_ms"]) for r in rows], "o-", label="service p99 (ms)")
left.plot(mb, [float(r["hello_p99_ms"]) for r in rows], "s--", label="hello-world p99 (ms)")
left.set_xlabel("memory size (MB)")
left.set_ylabel("warm p99, paced at 20/s (ms)")
left.set_xscale("log", base=2)
left.set_xticks(mb, [str(m) for m in mb])
right = left.twinx()
right.plot(mb, [float(r["cost_per_million_usd"]) for r in rows], "^:", color="tab:green",
           label="cost per million requests (USD)")
right.set_ylabel("USD per million requests (arm64)")
lines = left.get_legend_handles_labels()
more = right.get_legend_handles_labels()
left.legend(lines[0] + more[0], lines[1] + more[1], loc="upper center")
left.set_title("GET /users (50 rows) under the Lambda emulator")
fig.tight_layout()
fig.savefig(target, dpi=110)
