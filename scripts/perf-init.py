#!/usr/bin/env python3
"""Where a cold start's CPU goes, by component and by function, from the
`perf record` files of `make bench-lambda-perf` (benches/lambda.rs with
BENCH_PERF_INIT: each file one cold start, exec to the first answer).

Prints markdown tables: the components (the kernel by what it was doing,
the dynamic loader, libc, the service binary's C code and its Rust crates)
side by side for every path, then each path's top functions by self
samples, with the share of samples that had the function on their stack.
ms are the samples' own CPU (the cpu-clock's periods), per cold start: the
sum over the files divided by --runs.

    scripts/perf-init.py --runs N LABEL=FILE[,FILE...] [LABEL=FILE...]
"""
import argparse
import collections
import os
import re
import subprocess
import sys

HEADER = re.compile(r"^\s*(.*?)\s+(\d+)/(\d+)\s+(\d+)\s*$")
FRAME = re.compile(r"^\s+([0-9a-f]+)\s+(.*?)\s+\((.*)\)$")
HASH = re.compile(r"::h[0-9a-f]{16}$")
# Components under this share (%) on every path are summed in one row.
MIN_PCT = 1.0
# Frames that only drive others (the runtime's poll loop, the entry point):
# every sample of the thread has them, so their "in" figure says nothing.
DRIVERS = re.compile(
    r"^(_start|__libc_start|main$|std::rt::|std::panic|std::panicking|core::ops::function::|"
    r"tokio::runtime::(scheduler|context|park|runtime|task|coop|blocking::pool)|tokio::task::|"
    r"std::sys::|std::thread::|__GI___clone|start_thread|__clone|"
    r"tenant_users::entry::|<core::future|<core::pin::Pin|core::future::|"
    r"<tenant_users::coldstart::Timed|tenant_users::coldstart::sync|<futures_util::future::|"
    r"futures_util::future::|<tokio::future|tokio::future::|tokio::runtime::blocking)"
)


def samples(path):
    """(period_ns, [(symbol, dso)] leaf first) for every sample in a file."""
    out = subprocess.run(
        ["perf", "script", "--no-inline", "-i", path, "-F", "comm,pid,tid,period,ip,sym,dso"],
        capture_output=True, text=True, check=True,
    ).stdout
    period, frames = None, []
    for line in out.splitlines():
        if not line.strip():
            if period is not None:
                yield period, frames
            period, frames = None, []
            continue
        f = FRAME.match(line)
        if f and period is not None:
            frames.append((HASH.sub("", f.group(2)), f.group(3)))
            continue
        h = HEADER.match(line)
        if h:
            if period is not None:
                yield period, frames
            period, frames = int(h.group(4)), []
    if period is not None:
        yield period, frames


PRIMITIVES = {"str", "bool", "char", "f32", "f64", "usize", "isize", "u8", "u16", "u32", "u64",
              "u128", "i8", "i16", "i32", "i64", "i128"}


def first_segment(s):
    while True:
        s2 = re.sub(r"^(<|&|mut |dyn |\*const |\*mut |\[|\()", "", s)
        if s2 == s:
            break
        s = s2
    return re.split(r"::|<| |>|\[|;|,|\)", s, maxsplit=1)[0]


def crate(symbol):
    """The crate a demangled Rust symbol's code belongs to: its path's
    first segment; for `<T as Trait>::f`, T's crate, or the trait's when T
    is a generic parameter or a primitive type (core's)."""
    c = first_segment(symbol)
    if re.fullmatch(r"[A-Z][A-Za-z0-9]*", c or ""):
        m = re.search(r" as ([^>]*)>", symbol)
        c = first_segment(m.group(1)) if m else "?"
    if c in PRIMITIVES:
        c = "core"
    return c or "?"


def component(frames, binary):
    """What a sample was doing, named by its leaf frame (and, in the
    kernel, by the fault or system call it served)."""
    if not frames:
        return "unknown"
    sym, dso = frames[0]
    base = os.path.basename(dso)
    if dso.startswith("[kernel"):
        for s, d in frames:
            if not d.startswith("[kernel"):
                break
            if "page_fault" in s:
                return "kernel: page faults"
            m = re.match(r"^__(?:x64|arm64|se)_sys_(\w+)", s)
            if m:
                name = m.group(1)
                if name in ("execve", "execveat"):
                    return "kernel: execve (loading the binary)"
                return f"kernel: {name}"
        return "kernel: other (interrupts, scheduling)"
    if base.startswith("ld-linux") or base.startswith("ld-"):
        return "ld.so: dynamic loader (relocations, symbols)"
    if base.startswith("libc.so") or base.startswith("libc-"):
        return "libc (malloc, memcpy, …)"
    if base == binary:
        if "::" in sym:
            c = crate(sym)
            if c.startswith("aws_"):
                return "Rust: aws_* (the AWS SDK)"
            return f"Rust: {c}"
        if sym.startswith("ring_core_"):
            return "ring's C and assembly"
        if sym.startswith(("__rust", "__rdl", "rust_")):
            return "Rust: std"
        if sym == "[unknown]":
            return "service binary, unnamed"
        return "OpenSSL (C, linked in)"
    if sym == "[unknown]" and base == "[unknown]":
        return "unknown"
    return base


# Init phases (src/coldstart.rs's names) told from a sample's stack: the
# first rule, in this order, with a frame matching it. A phase's figure
# counts the kernel's work under it (page faults, system calls).
PHASES = [
    ("database TLS connector (OpenSSL)", r"^tenant_users::db::tls_connector"),
    ("connect: TCP, TLS handshake, SCRAM", r"^tenant_users::db::connect::|^tokio_postgres::connect"),
    ("isolation self-audit", r"^tenant_users::db::Database::audit|^tenant_users::audit::"),
    ("AWS SDK: clients, STS, Secrets Manager", r"^tenant_users::secret::|^<tenant_users::https::Aws|^<?aws_"),
    ("rustls roots from the system store (shared)", r"^tenant_users::https::system_tls|^rustls_native_certs::"),
    ("token keys: JWKS client, fetch, parse", r"^tenant_users::token::"),
    ("the runtime API and the first request", r"^lambda_runtime::|^<lambda_runtime::"),
    ("log subscriber, configuration, runtime",
     r"^tenant_users::telemetry::|^tenant_users::app::Config|^tenant_users::config::|^tokio::runtime::builder"),
    ("exec and loader, to `main`",
     r"^_dl_start$|^_dl_start_user$|^_dl_sysdep_start$|^dl_main$|^_dl_init$|^_init$|^load_elf_binary$|^begin_new_exec$|^__x64_sys_execve$|^__arm64_sys_execve$"),
]


def phase(frames):
    for name, rule in PHASES:
        if any(re.search(rule, s) for s, _ in frames):
            return name
    if all(d.startswith("[kernel") for _, d in frames):
        return "kernel, no user stack (interrupts, exit of a thread)"
    return "no phase on the stack: spawned tasks (the HTTP connections of the JWKS, AWS and runtime API clients), the runtime between polls, other threads"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, required=True)
    ap.add_argument("--top", type=int, default=15)
    ap.add_argument("paths", nargs="+", help="LABEL=FILE[,FILE...]")
    args = ap.parse_args()

    paths = []
    phase_counts = []
    for spec in args.paths:
        label, files = spec.split("=", 1)
        comp = collections.Counter()
        phases = collections.Counter()
        self_ = collections.Counter()
        incl = collections.Counter()
        total = 0
        binary = None
        for f in files.split(","):
            for period, frames in samples(f):
                if binary is None:
                    binary = next((os.path.basename(d) for _, d in frames
                                   if not d.startswith("[") and ".so" not in d), None)
                total += period
                comp[component(frames, binary)] += period
                phases[phase(frames)] += period
                if frames:
                    sym, dso = frames[0]
                    self_[(sym, os.path.basename(dso))] += period
                for key in {(s, os.path.basename(d)) for s, d in frames}:
                    incl[key] += period
        paths.append((label, total, comp, self_, incl))
        phase_counts.append(phases)

    ms = lambda ns: ns / 1e6 / args.runs
    pct = lambda x, total: 100.0 * x / total if total else 0.0

    print("| init phase, told from the stack | " + " | ".join(f"{l}: % | {l}: ms" for l, *_ in paths) + " |")
    print("| --- |" + " --- | --- |" * len(paths))
    order = [n for n, _ in PHASES] + ["kernel, no user stack (interrupts, exit of a thread)",
                                      "no phase on the stack: spawned tasks (the HTTP connections of the JWKS, AWS and runtime API clients), the runtime between polls, other threads"]
    for name in order:
        cells = " | ".join(f"{pct(ph[name], p[1]):.1f} | {ms(ph[name]):.2f}" for ph, p in zip(phase_counts, paths))
        print(f"| {name} | {cells} |")
    cells = " | ".join(f"100.0 | {ms(total):.2f}" for _, total, *_ in paths)
    print(f"| **all samples** | {cells} |\n")

    names = sorted({c for _, _, comp, _, _ in paths for c in comp},
                   key=lambda c: -max(pct(p[2][c], p[1]) for p in paths))
    shown = [c for c in names if max(pct(p[2][c], p[1]) for p in paths) >= MIN_PCT]
    rest = [c for c in names if c not in shown]
    print("| component (self) | " + " | ".join(f"{l}: % | {l}: ms" for l, *_ in paths) + " |")
    print("| --- |" + " --- | --- |" * len(paths))
    for c in shown:
        cells = " | ".join(f"{pct(comp[c], total):.1f} | {ms(comp[c]):.2f}"
                           for _, total, comp, _, _ in paths)
        print(f"| {c} | {cells} |")
    if rest:
        cells = " | ".join(f"{pct(sum(comp[c] for c in rest), total):.1f} | {ms(sum(comp[c] for c in rest)):.2f}"
                           for _, total, comp, _, _ in paths)
        print(f"| {len(rest)} others, each under {MIN_PCT} % | {cells} |")
    cells = " | ".join(f"100.0 | {ms(total):.2f}" for _, total, *_ in paths)
    print(f"| **all samples** | {cells} |\n")

    for label, total, comp, self_, incl in paths:
        print(f"Top functions, {label} path (self ms per cold start; *in*: % of samples with it on the stack):\n")
        print("| function | where | self % | self ms | in % |")
        print("| --- | --- | --- | --- | --- |")
        for (sym, dso), v in self_.most_common(args.top):
            print(f"| `{short(sym)}` | {dso} | {pct(v, total):.1f} | {ms(v):.2f} | {pct(incl[(sym, dso)], total):.1f} |")
        print()
        print(f"Callers that hold the most, {label} path (user-space functions by % of samples with the function on the stack, kernel time under them included; the runtime's and the entry point's frames left out):\n")
        print("| function | where | in % | in ms |")
        print("| --- | --- | --- | --- |")
        shown = 0
        for (sym, dso), v in incl.most_common():
            if DRIVERS.search(sym) or sym == "[unknown]" or dso.startswith("[kernel"):
                continue
            print(f"| `{short(sym)}` | {dso} | {pct(v, total):.1f} | {ms(v):.2f} |")
            shown += 1
            if shown >= args.top:
                break
        print()


def short(sym, limit=110):
    """A symbol cut to fit a table cell (generic arguments elided)."""
    s = sym.replace("|", "\\|")
    return s if len(s) <= limit else s[: limit - 1] + "…"


if __name__ == "__main__":
    sys.exit(main())
