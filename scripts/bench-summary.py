#!/usr/bin/env python3
"""Writes BENCHMARKS.md's goals summary from the sections the benches wrote.

The summary holds no figure of its own: each row is copied from a line that
a bench printed into its section (make bench, make bench-lambda, make
bench-fleet), named beside it with the commit that section was measured
on. A figure no section prints cannot appear; a goal whose section is
missing says "not measured". `make bench`, `make bench-lambda` and
`make bench-fleet` run this after writing their sections.

    scripts/bench-summary.py [BENCHMARKS.md]
"""
import re
import sys

path = sys.argv[1] if len(sys.argv) > 1 else "BENCHMARKS.md"
text = open(path, encoding="utf-8").read()
START, END = "<!-- summary:start -->", "<!-- summary:end -->"


def section(title):
    """The text of the `## title` section (up to the next `## ` heading)."""
    m = re.search(r"^## " + re.escape(title) + r".*?$(.*?)(?=^## |\Z)", text, re.S | re.M)
    return m.group(1) if m else None


def stamp(marker_start, marker_end, pattern):
    m = re.search(re.escape(marker_start) + "(.*?)" + re.escape(marker_end), text, re.S)
    if not m:
        return None
    c = re.search(pattern, m.group(1))
    return c.group(1)[:12] if c else None


service_commit = re.search(r"on commit ([0-9a-f]{7,})", text.split(START)[0])
service_commit = service_commit.group(1)[:12] if service_commit else "?"
lambda_commit = stamp("<!-- bench-lambda:start -->", "<!-- bench-lambda:end -->", r"on commit ([0-9a-f]{7,}[^,;]*)")
fleet_commit = stamp("<!-- fleet:begin -->", "<!-- fleet:end -->", r"commit ([0-9a-f]{7,})")

rows = []


def row(figure, value, goal, verdict, source):
    rows.append(f"| {figure} | {value} | {goal} | {verdict} | {source} |")


def missing(figure, goal, source):
    row(figure, "not measured", goal, "", source)


# make bench-lambda: its own goals table, copied row by row.
goals = section("Lambda's shape")
lambda_src = f"bench-lambda ({lambda_commit})" if lambda_commit else "bench-lambda"
phase_table = None
if goals:
    # Every goals table of the section (issue 11's, issue 20's), each the
    # first table under its `### Goals` heading.
    for heading in re.finditer(r"^### Goals.*$", goals, re.M):
        table = re.search(r"^(\|.*?)\n\n", goals[heading.end():], re.S | re.M)
        for line in (table.group(1).splitlines()[2:] if table else []):
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            if len(cells) >= 4:
                row(cells[0], cells[1], cells[2], cells[3], lambda_src)
    phases = re.search(r"^### Init CPU per phase\n\n.*?\n\n(\|.*?)\n\n", goals, re.S | re.M)
    phase_table = phases.group(1) if phases else None
else:
    missing("init CPU, cold starts, warm CPU in Lambda's shape", "(issue 11, 20)", "bench-lambda")

bench_src = f"bench ({service_commit})"

# make bench: round trips per route (goal ≤ 1.2 each).
rt = section("Database round trips per request")
if rt:
    trips = [float(x) for x in re.findall(r"^\| [A-Z]+ /\S+ \| [\d.]+ \| [\d.]+ \| ([\d.]+) \|$", rt, re.M)]
    if trips:
        worst = max(trips)
        row("database round trips per request, worst route", f"{worst:.2f} (of {len(trips)} routes)", "≤ 1.2",
            "met" if worst <= 1.2 else "**missed**", bench_src + ", Database round trips")
else:
    missing("database round trips per request", "≤ 1.2", "bench")

ratios = section("Ratios against the floor")
if ratios:
    for line in ratios.splitlines():
        if line.startswith("| HTTP throughput, 8 callers / pipelined") or line.startswith("| in-process mean latency"):
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            goal = cells[2].split(":")[0].strip()
            verdict = "**missed**" if "missed" in cells[2] else "met"
            row(cells[0], cells[1], goal, verdict, bench_src + ", Ratios")

tokens = section("Token verification")
if tokens:
    m = re.search(r"^\| rs256_first_sight \| ([\d.]+) \|", tokens, re.M)
    if m:
        v = float(m.group(1))
        row("RS256 verify, first sight (Criterion median, µs)", m.group(1), "≤ 50",
            "met" if v <= 50 else "**missed**", bench_src + ", Token verification")

mem = section("Memory")
if mem:
    m = re.search(r"\(VmHWM\): ([\d.]+) MiB", mem)
    if m:
        v = float(m.group(1))
        row("peak RSS of the local server (MiB)", m.group(1), "< 32", "met" if v < 32 else "**missed**",
            bench_src + ", Memory")

boot = section("Bootstrap")
if boot:
    m = re.search(r"`api` function: .*?bootstrap: ([\d.]+) MiB", boot)
    if m:
        v = float(m.group(1))
        row("API function's arm64 bootstrap (MiB)", m.group(1), "≤ 12", "met" if v <= 12 else "**missed**", bench_src + ", Bootstrap")
    else:
        missing("API function's arm64 bootstrap (MiB)", "≤ 12", bench_src + ", Bootstrap: " + boot.strip().splitlines()[0][:80])

scale = section("Scale")
if scale:
    m = re.search(r"Ratio large / small: ([\d.]+)", scale)
    if m:
        v = float(m.group(1))
        row("GET /users p50, 10M rows ÷ 100k rows", m.group(1), "≤ 1.5", "met" if v <= 1.5 else "**missed**",
            bench_src + ", Scale")

fleet = section("A fleet through the pooler")
if fleet:
    m = re.search(r"^\| 200 environments via PgBouncer.*?\| ([\d /]+) \| .*?\| .*?\| (\d+) \|$", fleet, re.M)
    if m:
        row("200 environments through PgBouncer (pool 20), requests/s min / median / max", m.group(1).strip(),
            "(informative)", f"{m.group(2)} errors", f"bench-fleet ({fleet_commit})")

summary = "\n".join([
    START,
    "## Goals: where they stand",
    "",
    "Generated by `scripts/bench-summary.py` from the sections below, each row from the run named beside it "
    "(`make bench`, `make bench-lambda`, `make bench-fleet`); the summary prints no figure of its own.",
    "",
    "| figure | measured | goal | | section (commit) |",
    "| --- | --- | --- | --- | --- |",
    *rows,
    *([
        "",
        f"Init CPU per phase, from the service's own account of each cold start (ms, median (min–max); "
        f"section \"Init CPU per phase\", {lambda_src}):",
        "",
        phase_table,
    ] if phase_table else []),
    END,
])
if START in text and END in text:
    a, b = text.index(START), text.index(END) + len(END)
    text = text[:a] + summary + text[b:]
else:
    head, _, rest = text.partition("\n\n")
    text = head + "\n\n" + summary + "\n\n" + rest
open(path, "w", encoding="utf-8").write(text)
print(f"{path}: goals summary written ({len(rows)} rows)")
