#!/usr/bin/env python3
"""Turns the benchmark's JSON (ours.json, peer.json, env.json in --results) into PNG plots beside
them, prints the tables, and writes them into the generated part of --markdown (between the
`results:begin` and `results:end` markers; the rest of the file, the notes, is kept)."""

import argparse
import json
import math
import re
import os
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

BEGIN = "<!-- results:begin (written by bench/report.py from bench/results/*.json) -->"
END = "<!-- results:end -->"

TARGET_FANOUT_RATIO = 0.70
# Read p50 against the raw 25-row read of the same store: flat, aggregated.
TARGET_READ_RATIO = {"flat": 1.3, "aggregated": 1.5}
# SQLite read p50 against the raw read plus a bare HTTP round trip of the same page.
TARGET_HTTP_FLOOR_RATIO = 1.5
# Aggregated read p50 of a busy day (10,000 activities today) against a quiet one (100).
TARGET_BUSY_RATIO = 1.2
# Read p50 of a follower of a pulled author against a reader whose followees are all fanned out.
TARGET_PULLED_RATIO = 1.5
# Amazon Keyspaces on-demand throughput, US dollars per million request units (US East, N.
# Virginia). Prices change and differ by region: set FEEDS_KEYSPACES_WRU_USD / _RRU_USD to yours.
KEYSPACES_WRU_USD = float(os.environ.get("FEEDS_KEYSPACES_WRU_USD", "0.625"))
KEYSPACES_RRU_USD = float(os.environ.get("FEEDS_KEYSPACES_RRU_USD", "0.125"))
# The workload priced: daily active users, each posting, reading pages and following this much a
# day, with this many followers on average; 30 days a month.
COST_WORKLOAD = {"users": 100_000, "posts": 2, "followers": 100, "flat": 10, "aggregated": 10, "follows": 1}
TARGET_PEER_RATIO = 10.0
TARGET_INIT_MS = 30.0
TARGET_BOOTSTRAP_BYTES = 10_000_000


def load(path):
    try:
        with open(path) as f:
            return json.load(f)
    except FileNotFoundError:
        return None


def fmt(x, digits=None):
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "—"
    if digits is not None:
        return f"{x:,.{digits}f}"
    a = abs(x)
    if a >= 100:
        return f"{x:,.0f}"
    if a >= 10:
        return f"{x:.1f}"
    return f"{x:.2f}"


def spread(s, digits=None):
    """median [min–max]"""
    return f"{fmt(s['median'], digits)} [{fmt(s['min'], digits)}–{fmt(s['max'], digits)}]"


def verdict(ok):
    return "**met**" if ok else "**missed**"


def table(header, rows):
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(out)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--results", required=True)
    ap.add_argument("--markdown", required=True)
    ap.add_argument("--seconds", type=int, default=None)
    args = ap.parse_args()
    res = args.results
    ours = load(os.path.join(res, "ours.json")) or {}
    peer = load(os.path.join(res, "peer.json"))
    env = load(os.path.join(res, "env.json")) or {}
    tiny = ours.get("meta", {}).get("size") == "tiny"
    sections = {}

    def sec(key):
        return sections.setdefault(key, [])

    targets = []

    # ---- machine
    md = sec("0")
    md.append("## Machine and run\n")
    md.append(
        table(
            ["", ""],
            [
                ["date", env.get("date", "—")],
                ["command", f"`{env.get('command', 'scripts/bench.sh')}`"],
                ["size", ours.get("meta", {}).get("size", "—")],
                ["CPU", f"{env.get('cpu', '—')} × {env.get('nproc', '—')} (nproc)"],
                ["memory", env.get("memory", "—")],
                ["kernel", env.get("kernel", "—")],
                ["load before", f"`{env.get('load_before', '—')}`"],
                ["load after", f"`{env.get('load_after', '—')}`"],
                [
                    "Cassandra",
                    f"{env.get('cassandra', '—').rstrip('.')}, one node on 127.0.0.1:9042, JIT "
                    f"`{env.get('cassandra_jit', '—')}`"
                    + (" (started by the benchmark)" if env.get("cassandra_started_by_bench") else " (already running: shared with other work)"),
                ],
                ["ElasticMQ", env.get("elasticmq", "—").rstrip(".")],
                ["JDK", env.get("java", "—")],
                ["Rust", env.get("rustc", "—")],
                ["build", f"{env.get('build', '—')}, {env.get('build_seconds', '—')} s"],
                ["commit", env.get("git", "—")],
                ["wall time", f"{args.seconds} s" if args.seconds is not None else "—"],
                [
                    "feeds-bench workloads",
                    ", ".join(
                        f"{k} {v:.0f} s" for k, v in ours.get("meta", {}).get("workload_seconds", {}).items()
                    )
                    or "—",
                ],
            ],
        )
    )
    md.append(
        "\nEvery figure is the median of repeated runs, with [min–max] over the runs. Rates are "
        "rows (or requests) per second; latencies in milliseconds.\n"
    )

    # ---- 1. fan-out
    fan = ours.get("fanout", [])
    peer_fan = {f["followers"]: f for f in (peer or {}).get("fanout", [])}
    if fan:
        md = sec("1")
        m = ours.get("meta", {})
        md.append("## 1. Fan-out rate (Cassandra)\n")
        md.append(
            f"One activity to N followers through the Lambda code path: one `deliver` job sent to a "
            f"fresh ElasticMQ queue, {m.get('fanout_consumers')} concurrent consumers (as concurrent "
            f"Lambda invocations, each with its own Cassandra session and SQS client) running "
            f"receive → `Fanout::handle_sqs_event` → delete, chunks of {m.get('fanout_chunk_size')} "
            f"followers; rate = N / (job sent → last chunk's rows acknowledged). Raw ceiling: the same "
            f"rows, the same prepared single-row `INSERT` on the same table through the same driver, "
            f"at concurrency {', '.join(map(str, m.get('write_concurrencies', [])))}; the best is "
            f"shown.\n"
        )
        rows = []
        for f in fan:
            ok = f["ratio"] >= TARGET_FANOUT_RATIO
            rows.append(
                [
                    f"{f['followers']:,}",
                    f["reps"],
                    spread(f["fanout_rows_per_s"], 0),
                    spread(f["ceiling_rows_per_s"], 0),
                    f["ceiling_best_setting"],
                    f"{f['ratio']:.2f}",
                    f"{verdict(ok)} (target ≥ {TARGET_FANOUT_RATIO:.2f})",
                ]
            )
            targets.append(
                (
                    f"fan-out ≥ 70 % of the raw write ceiling, N = {f['followers']:,}",
                    f"{f['ratio'] * 100:.0f} %",
                    ok,
                )
            )
        md.append(
            table(
                ["N", "runs", "fan-out rows/s", "raw ceiling rows/s", "best ceiling", "fan-out / ceiling", "target"],
                rows,
            )
        )
        def setting_order(k):
            digits = "".join(ch for ch in k if ch.isdigit())
            return (int(digits) if digits else 10**9, k)

        settings = sorted(fan[0]["ceiling_by_setting"], key=setting_order)
        detail = []
        for f in fan:
            detail.append(
                [f"{f['followers']:,}"]
                + [spread(f["ceiling_by_setting"][k], 0) for k in settings]
                + [spread(f["fanout_wall_s"]), f["jobs_per_fanout"], f["failed_messages"]]
            )
        md.append("\nRaw ceiling at each concurrency, and the fan-out's wall time:\n")
        md.append(
            table(
                ["N"] + [f"raw, {k}" for k in settings] + ["fan-out wall s", "jobs", "failed messages"],
                detail,
            )
        )
        procs = list(fan[0].get("fanout_cpu_ms_per_1k_rows", {}).keys())
        if procs:
            md.append(
                "\nWhere the CPU goes (both cores are shared by all of these): CPU milliseconds per "
                "1,000 rows, fan-out / best raw ceiling. `feeds-bench` holds the Lambda-like "
                "consumers (fan-out) or the raw driver (ceiling).\n"
            )
            md.append(
                table(
                    ["N"] + procs + ["total"],
                    [
                        [f"{f['followers']:,}"]
                        + [
                            f"{fmt(f['fanout_cpu_ms_per_1k_rows'].get(p))} / {fmt(f['ceiling_cpu_ms_per_1k_rows'].get(p))}"
                            for p in procs
                        ]
                        + [
                            f"{fmt(sum(f['fanout_cpu_ms_per_1k_rows'].values()))} / "
                            f"{fmt(sum(f['ceiling_cpu_ms_per_1k_rows'].values()))}"
                        ]
                        for f in fan
                    ],
                )
            )
        md.append("\n![fan-out](bench/results/fanout.png)\n" if not tiny else "")

    # ---- 4. peer
    md = sec("4")
    md.append("## 4. Stream-Framework 1.4.0, the peer\n")
    if peer is None:
        md.append("skipped (tiny)\n" if tiny else "not run\n")
    else:
        pm = peer.get("meta", {})
        md.append(
            f"{pm.get('package')} on Python {pm.get('python')}, cassandra-driver "
            f"{pm.get('cassandra_driver')}, Celery {pm.get('celery')} (kombu {pm.get('kombu')}, "
            f"redis-py {pm.get('redis_py')}), on the same Cassandra (keyspace `{pm.get('keyspace')}`, "
            f"tables made by cqlengine `sync_table` from the package's models: "
            f"{fmt(pm.get('schema_setup_s'))} s). "
            + (
                f"Deployed as its documentation describes: "
                f"`Manager.add_user_activity` writes the user's own feed and publishes one "
                f"`fanout_operation` task per {pm.get('fanout_chunk_size')} followers (pickled) to a "
                f"Redis {pm.get('redis_server')} broker on 127.0.0.1 (`scripts/redis.sh`), and "
                f"`{pm.get('workers')}` ({pm.get('worker_processes')} processes, as many as our fan-out "
                f"consumers; started by the benchmark, ready after {fmt(pm.get('worker_startup_s'))} s, "
                f"stopped after its fan-outs) writes each task's followers in one batch interface.\n"
                if pm.get("workers")
                else "Its Celery tasks ran eagerly, in the benchmark's process, one after another.\n"
            )
        )
        md.append("As shipped, it does not run here:\n")
        for name, f in peer.get("findings", {}).items():
            if f["ok"]:
                md.append(f"- {f['what']}: works")
                continue
            lines = [
                re.sub(r'"[^"]*/site-packages/', '"site-packages/', l.rstrip())
                for l in f["error"].strip().splitlines()
            ][-4:]
            lines = [re.sub(r"\(/[^()]*/site-packages/", "(site-packages/", l) for l in lines]
            md.append(f"- {f['what']}:\n\n  ```\n" + "\n".join("  " + l for l in lines) + "\n  ```")
        md.append("\nSo the benchmark runs it with these workarounds, in its own processes only:\n")
        for w in pm.get("workarounds", []):
            md.append(f"- {w}")
        md.append("")
        ours_fan = {f["followers"]: f for f in fan}
        rows = []
        for n in sorted(set(ours_fan) | set(peer_fan)):
            o, p = ours_fan.get(n), peer_fan.get(n)
            theirs = "not run" if p is None else f"{spread(p['fanout_rows_per_s'], 0)} (n={p['reps']})"
            row = [
                f"{n:,}",
                spread(o["fanout_rows_per_s"], 0) if o else "—",
                theirs,
                spread(p["fanout_wall_s"]) if p else "—",
                p.get("tasks_per_fanout", "—") if p else "—",
            ]
            if o and p:
                r = o["fanout_rows_per_s"]["median"] / p["fanout_rows_per_s"]["median"]
                ok = r >= TARGET_PEER_RATIO
                row += [f"{r:.1f}×", f"{verdict(ok)} (target ≥ {TARGET_PEER_RATIO:.0f}×)"]
                targets.append((f"≥ 10× Stream-Framework's fan-out rate, N = {n:,}", f"{r:.1f}×", ok))
            else:
                row += ["—", "not measured"]
                if o:
                    targets.append((f"≥ 10× Stream-Framework's fan-out rate, N = {n:,}", "theirs not run", None))
            rows.append(row)
        md.append(
            "Fan-out (rows/s), ours as in 1; theirs timed from the `add_user_activity` call until the "
            "workers have reported tasks covering every follower (each after its batch's writes "
            "were acknowledged; a sample of the followers' feeds and the empty broker queue checked "
            "after each run):\n"
        )
        md.append(
            table(
                ["N", "ours", "Stream-Framework", "its wall s", "its tasks", "ours / theirs", "target"],
                rows,
            )
        )
        ours_reads = {(r["endpoint"], r["concurrency"]): r for r in ours.get("reads", [])}
        rows = []
        for r in sorted(peer.get("reads", []), key=lambda r: (r["endpoint"] != "aggregated", r["concurrency"])):
            o = ours_reads.get((r["endpoint"], r["concurrency"]))
            rows.append(
                [
                    r["endpoint"],
                    r["concurrency"],
                    spread(o["rps"], 0) if o else "—",
                    spread(r["rps"], 0),
                    spread(r["p50_ms"]),
                    spread(r["p99_ms"]),
                    f"{o['rps']['median'] / r['rps']['median']:.1f}×" if o else "—",
                ]
            )
        md.append(
            "\nReads of a page of 25: `feed[:25]` on its `CassandraAggregatedFeed` (25 groups by verb "
            "and day, precomputed on write) and its `CassandraFeed` (flat), called in-process from "
            "Python threads in a closed loop (it has no HTTP layer); ours through the HTTP server as "
            "in 3:\n"
        )
        md.append(
            table(
                ["endpoint", "conc.", "ours req/s", "Stream-Framework req/s", "its p50", "its p99", "ours / theirs req/s"],
                rows,
            )
        )
        md.append("")

    # ---- 3. reads
    def reads_section(reads, store, peer_reads=None):
        """Against the raw read (Cassandra), or against the raw read plus a bare HTTP round trip
        of the same page (SQLite, whose raw read alone is far below any HTTP request)."""
        by = {(r["endpoint"], r["concurrency"]): r for r in reads}
        pby = {(r["endpoint"], r["concurrency"]): r for r in (peer_reads or [])}
        with_bare = any(e.startswith("bare_") for e, _ in by)
        rows = []
        for (endpoint, c), r in sorted(by.items(), key=lambda kv: (kv[0][1], kv[0][0])):
            if endpoint == "raw" or endpoint.startswith("bare_"):
                continue
            raw = by.get(("raw", c))
            ratio = r["p50_ms"]["median"] / raw["p50_ms"]["median"] if raw else float("nan")
            row = [
                endpoint,
                c,
                spread(r["rps"], 0),
                spread(r["p50_ms"]),
                spread(r["p99_ms"]),
                spread(raw["rps"], 0) if raw else "—",
                spread(raw["p50_ms"]) if raw else "—",
                spread(raw["p99_ms"]) if raw else "—",
                f"{ratio:.2f}×",
            ]
            if with_bare:
                bare = by.get((f"bare_{endpoint}", c))
                floor = raw["p50_ms"]["median"] + bare["p50_ms"]["median"] if raw and bare else float("nan")
                floor_ratio = r["p50_ms"]["median"] / floor
                ok = floor_ratio <= TARGET_HTTP_FLOOR_RATIO
                bare_p50 = "—"
                if bare:
                    size = bare.get("page_bytes")
                    bare_p50 = spread(bare["p50_ms"]) + (f" ({size:,} bytes)" if size else "")
                row += [bare_p50, f"{floor_ratio:.2f}×", verdict(ok)]
                targets.append(
                    (
                        f"read p50 ≤ {TARGET_HTTP_FLOOR_RATIO}× (raw read + bare HTTP round trip), "
                        f"{store} {endpoint}, concurrency {c}",
                        f"{floor_ratio:.2f}×",
                        ok,
                    )
                )
            else:
                target = TARGET_READ_RATIO.get(endpoint, TARGET_READ_RATIO["flat"])
                ok = ratio <= target
                row += [f"{verdict(ok)} (≤ {target}×)"]
                targets.append(
                    (f"read p50 ≤ {target}× the raw read, {store} {endpoint}, concurrency {c}", f"{ratio:.2f}×", ok)
                )
            if peer_reads is not None:
                p = pby.get((endpoint, c))
                row += (
                    [spread(p["rps"], 0), spread(p["p50_ms"]), f"{r['rps']['median'] / p['rps']['median']:.1f}×"]
                    if p
                    else ["—", "—", "—"]
                )
            rows.append(row)
        header = [
            "endpoint",
            "conc.",
            "req/s",
            "p50",
            "p99",
            "raw req/s",
            "raw p50",
            "raw p99",
            "p50 / raw p50",
        ]
        if with_bare:
            header += [
                "bare HTTP p50",
                "p50 / (raw p50 + bare p50)",
                f"target ≤ {TARGET_HTTP_FLOOR_RATIO}×",
            ]
        else:
            header += ["target (flat ≤ 1.3×, aggregated ≤ 1.5×)"]
        if peer_reads is not None:
            header += ["Stream-Framework req/s", "its p50", "ours / theirs req/s"]
        out = table(header, rows)
        procs = sorted({p for r in reads for p in r.get("cpu_ms_per_request", {})})
        if procs:
            out += "\n\nCPU milliseconds per request, by process (the server's own is `feeds-server`):\n\n"
            out += table(
                ["endpoint", "conc."] + procs,
                [
                    [r["endpoint"], r["concurrency"]] + [fmt(r["cpu_ms_per_request"].get(p)) for p in procs]
                    for r in sorted(reads, key=lambda r: (r["concurrency"], r["endpoint"]))
                ],
            )
        return out

    reads = ours.get("reads", [])
    if reads:
        md = sec("3")
        m = ours.get("meta", {})
        md.append("## 3. Feed reads (Cassandra)\n")
        md.append(
            f"`GET /feeds/flat?limit=25` and `GET /feeds/aggregated?limit=25` through the standalone "
            f"server (release binary, `FEEDS_STORE=cassandra FEEDS_QUEUE=sqs`), closed loop at each "
            f"concurrency, HTTP/1.1 keep-alive; the reader's timeline holds "
            f"{m.get('reader_timeline_rows')} activities over 30 days (3 verbs a day, so 25 groups "
            f"span 9 days), written as the fan-out writes them (the rows, then their groups' marks; "
            f"feeds bounded at {m.get('feed_max_length', '—')} activities), and the first page of "
            f"each is checked to hold 25 activities and 25 groups before measuring. Raw: the same "
            f"driver reading the same 25 rows from the same partition (prepared `SELECT … LIMIT "
            f"25`, rows deserialised), at the same concurrency.\n"
        )
        md.append(reads_section(reads, "cassandra", (peer or {}).get("reads") if peer else None))
        md.append("\n![reads](bench/results/reads.png)\n" if not tiny else "")

    # ---- 3b. busy day
    busy = ours.get("busy_day", [])
    if busy:
        md = sec("3b")
        md.append("## 3b. A busy day against a quiet one (aggregated reads)\n")
        md.append(
            "Two readers, each following 10 users, set up through the fan-out's own path "
            "(`Fanout::run` on `deliver` jobs, in process: timeline rows, group marks, trims at "
            f"{busy[0].get('feed_max_length', '—')} activities): the same earlier days for both, then "
            "a busy day (its followees posted many activities today, with 25 verbs, so that its "
            "first page is 25 groups of today) or a quiet one (100 today, 5 verbs: its page spans "
            "5 days). `GET /feeds/aggregated?limit=25` through the standalone server, closed loop, "
            "both readers interleaved. The first read after the set-up (every day of the page "
            "marked) and the first read after each further delivery today (today recomputed from "
            "one scan) are the cost after a change, shown apart from the steady reads.\n"
        )
        set_up, ratios = [], []
        for b in busy:
            for r in b["readers"]:
                set_up.append(
                    [
                        b["store"],
                        r["reader"],
                        f"{r['today']:,}",
                        f"{r['history_days']} × {r['history_per_day']}",
                        r["verbs"],
                        f"{r['timeline_rows']:,}",
                        f"{r['page_bytes']:,}",
                        fmt(r["first_read_ms"]),
                        spread(r["after_delivery_read_ms"]),
                    ]
                )
            by = {r["reader"]: {x["concurrency"]: x for x in r["reads"]} for r in b["readers"]}
            for c in sorted(by.get("busy", {})):
                hot, cold = by["busy"][c], by.get("quiet", {}).get(c)
                if not cold:
                    continue
                ratio = hot["p50_ms"]["median"] / cold["p50_ms"]["median"]
                ok = ratio <= TARGET_BUSY_RATIO
                ratios.append(
                    [
                        b["store"],
                        c,
                        spread(hot["p50_ms"]),
                        spread(cold["p50_ms"]),
                        spread(hot["rps"], 0),
                        spread(cold["rps"], 0),
                        f"{ratio:.2f}×",
                        verdict(ok),
                    ]
                )
                targets.append(
                    (
                        f"aggregated p50 of a busy day ≤ {TARGET_BUSY_RATIO}× a quiet day's, {b['store']}, concurrency {c}",
                        f"{ratio:.2f}×",
                        ok,
                    )
                )
        md.append(
            table(
                [
                    "store",
                    "reader",
                    "today",
                    "earlier days × a day",
                    "verbs",
                    "feed rows",
                    "page bytes",
                    "first read ms",
                    "first read after a delivery ms",
                ],
                set_up,
            )
        )
        md.append("")
        md.append(
            table(
                ["store", "conc.", "busy p50", "quiet p50", "busy req/s", "quiet req/s", "busy / quiet p50", f"target ≤ {TARGET_BUSY_RATIO}×"],
                ratios,
            )
        )
        md.append("")

    # ---- 3c. tombstones
    tomb = ours.get("tombstones")
    if tomb:
        md = sec("3c")
        md.append("## 3c. Tombstones a page reads (Cassandra)\n")
        md.append(
            f"{tomb['deliveries']:,} activities (1,000 a day up to now, 10 followees) delivered into "
            f"one reader's feed by the real path, trimmed at {tomb['feed_max_length']:,} with one "
            f"range delete now and then; the flat feed then holds {tomb['timeline_rows']:,} "
            f"activities ({tomb['flat_pages']} pages of 25). Each read below is the statement the "
            "store runs, executed once with Cassandra's query tracing on; live rows and tombstone "
            "cells are the node's own count (\"Read N live rows and M tombstone cells\"), sstables "
            "the ones it merged besides the memtables.\n"
        )
        md.append(
            table(
                ["read", "rows answered", "live rows read", "tombstone cells read", "sstables merged", "traced µs"],
                [
                    [
                        r["read"],
                        f"{r['rows']:,}",
                        f"{r['live_rows']:,}",
                        f"{r['tombstone_cells']:,}",
                        "—" if r.get("sstables") is None else r["sstables"],
                        "—" if r.get("trace_duration_us") is None else f"{r['trace_duration_us']:,}",
                    ]
                    for r in tomb["reads"]
                ],
            )
        )
        md.append("")


    # ---- 3d. pulled author
    pulled = ours.get("pulled")
    if pulled:
        md = sec("3d")
        md.append("## 3d. A pulled author (hybrid fan-out)\n")
        post, tenth = pulled["post"], pulled.get("post_at_tenth")
        md.append(
            f"An author with {pulled['followers']:,} followers (the pull threshold is "
            f"{pulled['pull_threshold']:,}: its first post found more and told them once, "
            f"{pulled['adopt_s']:.0f} s for the first {pulled['pull_threshold'] + 1:,}). Each post of "
            "it runs the statements below whatever the followers, counted by the store as they ran "
            "(`Feeds::post` in process), once with a tenth of the followers and once with all:\n"
        )
        rows = []
        for label, c in [("all followers", post), ("a tenth of them", tenth)]:
            if not c:
                continue
            writes = sum(v["runs"] for v in c["statements"].values() if v["write"]) / max(c["ops"], 1)
            reads = sum(v["runs"] for v in c["statements"].values() if not v["write"]) / max(c["ops"], 1)
            rows.append([label, c["ops"], fmt(writes, 1), fmt(reads, 1), fmt(c["write_units_per_op"], 2), fmt(c["read_units_per_op"], 2)])
        md.append(table(["followers", "posts", "writes a post", "reads a post", "WRU a post", "RRU a post"], rows))
        md.append("")
        md.append("Statements of one post (all followers):\n")
        md.append(
            table(
                ["statement", "runs a post"],
                [[f"`{cql}`", fmt(v["runs"] / max(post["ops"], 1), 2)] for cql, v in post["statements"].items()],
            )
        )
        md.append("")
        md.append(
            "Reads through the standalone server: one reader follows the pulled author and 9 "
            "fanned-out users, the other 10 fanned-out users; every followee posted alike over the "
            "last days. Closed loop, both readers interleaved.\n"
        )
        by = {}
        for r in pulled["reads"]:
            feed, who = r["endpoint"].split(" (")
            by.setdefault((feed, r["concurrency"]), {})[who.rstrip(")")] = r
        rows = []
        for (feed, c), pair in sorted(by.items()):
            if "pulled" not in pair or "pushed" not in pair:
                continue
            ratio = pair["pulled"]["p50_ms"]["median"] / pair["pushed"]["p50_ms"]["median"]
            ok = ratio <= TARGET_PULLED_RATIO
            rows.append([feed, c, spread(pair["pulled"]["p50_ms"]), spread(pair["pushed"]["p50_ms"]), spread(pair["pulled"]["rps"], 0), spread(pair["pushed"]["rps"], 0), f"{ratio:.2f}×", verdict(ok)])
            targets.append((f"{feed} p50 of a pulled author's follower ≤ {TARGET_PULLED_RATIO}× a pushed-only reader's, concurrency {c}", f"{ratio:.2f}×", ok))
        md.append(table(["feed", "conc.", "pulled p50", "pushed p50", "pulled req/s", "pushed req/s", "pulled / pushed", f"target ≤ {TARGET_PULLED_RATIO}×"], rows))
        md.append("")
        if tenth:
            same = abs(post["statements_per_op"] - tenth["statements_per_op"]) < 1e-9
            targets.append((
                f"a pulled author's post runs a constant number of statements ({pulled['followers']:,} followers against a tenth)",
                f"{post['statements_per_op']:.1f} against {tenth['statements_per_op']:.1f}",
                same,
            ))

    # ---- 7. Keyspaces
    ks = ours.get("keyspaces")
    if ks:
        md = sec("7")
        md.append("## 7. What it costs on Amazon Keyspaces\n")
        md.append(
            "Counted, not estimated: the service and the fan-out ran each operation in process on "
            "a Cassandra store that counts every statement it runs, the bytes each write binds and "
            "the bytes each read answers. Units as Keyspaces bills them: a write is one write "
            "request unit (WRU) per started KiB, a `LOCAL_QUORUM` read one read request unit (RRU) "
            "per started 4 KiB (at least one). Two things the count cannot see: a range delete (the "
            "trim) is counted once here but billed per row it deletes (in a full feed, one row per "
            "activity delivered, so add 1 WRU to a delivery), and a lightweight transaction is "
            f"counted as a write of its size. The author of the posts had {ks['followers']:,} "
            f"followers; feeds hold at most {ks['feed_max_length']:,} activities.\n"
        )
        md.append(
            table(
                ["operation", "WRU", "RRU", "statements", "counted over"],
                [[o["op"], fmt(o["write_units_per_op"], 2), fmt(o["read_units_per_op"], 2), fmt(o["statements_per_op"], 1), f"{o['ops']:,}"] for o in ks["ops"]],
            )
        )
        md.append("")
        unit = {}
        for o in ks["ops"]:
            unit.setdefault(o["op"].split(" (")[0], o)
        w = COST_WORKLOAD
        day = [
            ("posts", w["users"] * w["posts"], unit.get("post")),
            ("deliveries (+1 WRU each for the trim)", w["users"] * w["posts"] * w["followers"], unit.get("delivery to one follower")),
            ("flat pages", w["users"] * w["flat"], unit.get("flat page")),
            ("aggregated pages", w["users"] * w["aggregated"], unit.get("aggregated page")),
            ("follows with backfill", w["users"] * w["follows"], unit.get("follow with its backfill")),
        ]
        rows, total = [], 0.0
        for name, per_day, o in day:
            if not o:
                continue
            wru = o["write_units_per_op"] + (1 if name.startswith("deliveries") else 0)
            month = per_day * 30
            usd = month * (wru * KEYSPACES_WRU_USD + o["read_units_per_op"] * KEYSPACES_RRU_USD) / 1e6
            total += usd
            rows.append([name, f"{month:,}", fmt(wru, 2), fmt(o["read_units_per_op"], 2), f"${usd:,.0f}"])
        rows.append(["total", "", "", "", f"${total:,.0f}"])
        md.append(
            f"A month of {w['users']:,} daily active users, each posting {w['posts']} activities to "
            f"{w['followers']} followers, reading {w['flat']} flat and {w['aggregated']} aggregated pages "
            f"and following {w['follows']} user a day, at ${KEYSPACES_WRU_USD} per million WRU and "
            f"${KEYSPACES_RRU_USD} per million RRU (on-demand; set FEEDS_KEYSPACES_WRU_USD and "
            "FEEDS_KEYSPACES_RRU_USD to the prices of your region and day); storage, backups and "
            "Lambda, SQS and API Gateway are not in it:\n"
        )
        md.append(table(["operation", "a month", "WRU each", "RRU each", "cost a month"], rows))
        md.append("")

    # ---- 2. delivery
    dl = ours.get("delivery", [])
    if dl:
        md = sec("2")
        md.append("## 2. Delivery latency (Cassandra + SQS)\n")
        md.append(
            "From the `201` of `POST /activities` (the post-activity function's router, served "
            "over HTTP) to the moment the last chunk's rows are acknowledged, after which the last "
            "follower's feed shows the activity (checked by reading it); fan-out by the same "
            "Lambda-like consumers as in 1. Posts one after another.\n"
        )
        md.append(
            table(
                ["followers", "posts", "p50 ms", "p99 ms", "min–max ms", "IQR ms", "POST itself p50 ms"],
                [
                    [
                        f"{d['followers']:,}",
                        d["posts"],
                        fmt(d["p50_ms"]),
                        fmt(d["p99_ms"]),
                        f"{fmt(d['latency_ms']['min'])}–{fmt(d['latency_ms']['max'])}",
                        f"{fmt(d['latency_ms']['q1'])}–{fmt(d['latency_ms']['q3'])}",
                        fmt(d["post_ms"]["median"]),
                    ]
                    for d in dl
                ],
            )
        )
        md.append("\n![delivery](bench/results/delivery.png)\n" if not tiny else "")

    # ---- 5. embedded
    sf = ours.get("sqlite_fanout", [])
    sr = ours.get("sqlite_reads", [])
    if sf or sr:
        md = sec("5")
        md.append("## 5. Embedded default (SQLite)\n")
        md.append(
            "Fan-out through the embedded queue in the same SQLite file, one worker running the "
            "loop of `Fanout::work` (as the standalone server does); ceiling: the store's "
            "own `INSERT` for the same rows through rusqlite on the same connection wrapper, 500 "
            "rows a transaction or all in one, the best shown. Reads through the standalone server "
            "on its default store; raw: the same 25-row `SELECT` through the same wrapper; bare "
            "HTTP: axum (the server's framework) in the benchmark's process on 127.0.0.1 answering "
            "the very bodies the server answered for these pages, pre-serialised, measured in the "
            "same run. The target compares our p50 to the raw read's plus the bare round trip's.\n"
        )
        rows = []
        for f in sf:
            ok = f["ratio"] >= TARGET_FANOUT_RATIO
            rows.append(
                [
                    f"{f['followers']:,}",
                    f["reps"],
                    spread(f["fanout_rows_per_s"], 0),
                    spread(f["ceiling_rows_per_s"], 0),
                    f["ceiling_best_setting"],
                    f"{f['ratio']:.2f}",
                    verdict(ok),
                ]
            )
            targets.append((f"SQLite fan-out ≥ 70 % of its ceiling, N = {f['followers']:,}", f"{f['ratio'] * 100:.0f} %", ok))
        md.append(table(["N", "runs", "fan-out rows/s", "raw rows/s", "best raw", "ratio", "target ≥ 0.70"], rows))
        md.append("")
        md.append(reads_section(sr, "sqlite"))
        md.append("")

    # ---- 6. lambda
    lam = ours.get("lambda", [])
    boot = ours.get("bootstrap", [])
    if lam:
        md = sec("6")
        md.append("## 6. Lambda costs\n")
        md.append(
            "Each function's release binary (x86_64, this machine) started as Lambda starts it, "
            "against a Runtime API emulated by feeds-bench (`AWS_LAMBDA_RUNTIME_API`): "
            "initialisation = process spawn → its first `GET …/invocation/next`; first event and "
            "warm events (median of 10 per start) = event handed out → `…/response` received; peak "
            "RSS = VmHWM. `embedded` = `FEEDS_STORE=sqlite FEEDS_QUEUE=embedded` (no database "
            "connection: opens a fresh SQLite file); `cassandra+sqs` = connects to Cassandra and "
            "prepares its statements during init. Events: `events/follow.json`, "
            "`post-activity.json`, `get-feed-flat.json`, `fanout.json`.\n"
        )
        rows = []
        for r in lam:
            rows.append(
                [
                    r["function"],
                    r["mode"],
                    r["runs"],
                    spread(r["init_ms"]),
                    spread(r["first_event_ms"]),
                    spread(r["warm_event_ms"]),
                    spread(r["peak_rss_mib"]),
                    f"{r['binary_bytes'] / 1e6:.1f}",
                ]
            )
            if r["mode"] == "embedded":
                ok = r["init_ms"]["median"] <= TARGET_INIT_MS
                targets.append(
                    (f"init ≤ 30 ms without the database connection, {r['function']}", f"{r['init_ms']['median']:.1f} ms", ok)
                )
        md.append(
            table(
                ["function", "mode", "starts", "init ms", "first event ms", "warm event ms", "peak RSS MiB", "x86_64 binary MB"],
                rows,
            )
        )
        md.append("\nBootstraps (arm64, `sam build`, `.aws-sam/build/*/bootstrap`):\n")
        brows = []
        for b in boot:
            if b["bytes"] is None:
                brows.append([b["function"], "not built (scripts/sam-check.sh builds it)", "—", "—"])
                targets.append((f"bootstrap ≤ 10 MB, {b['function']}", "not built", None))
            else:
                ok = b["bytes"] <= TARGET_BOOTSTRAP_BYTES
                brows.append([b["function"], f"{b['bytes'] / 1e6:.2f} MB ({b['bytes']:,} bytes)", b["modified"][:16].replace("T", " "), verdict(ok)])
                targets.append((f"bootstrap ≤ 10 MB, {b['function']}", f"{b['bytes'] / 1e6:.2f} MB", ok))
        md.append(table(["function", "size", "built (UTC)", "target ≤ 10 MB"], brows))
        md.append("\n![lambda](bench/results/lambda.png)\n" if not tiny else "")

    # ---- 8. realtime
    rt = ours.get("realtime")
    if rt:
        md = sec("8")
        md.append("## 8. Realtime\n")
        md.append(
            "The standalone server's release binary, `GET /realtime` with `?token=`; feeds-bench holds "
            "one WebSocket per follower (tokio-tungstenite) and stamps each `activity` message as it is "
            "read. Latency = the `201` of `POST /activities` read → the message read, over every "
            "(post, follower); posts 50 ms apart. `sqlite` = the embedded default (its queue in the "
            "same file); `cassandra` = Cassandra + ElasticMQ, the server's own fan-out worker "
            "consuming. Connections: idle WebSockets of distinct users, the server's VmRSS before and "
            "after opening them (2 s settle each side).\n"
        )
        rows = [
            [
                r["store"],
                r["followers"],
                r["posts"],
                fmt(r["p50_ms"], 1),
                fmt(r["p99_ms"], 1),
                spread(r["last_follower_ms"], 1),
            ]
            for r in rt.get("latency", [])
        ]
        md.append(table(["store", "followers", "posts", "p50 ms", "p99 ms", "last follower ms, median [min–max]"], rows))
        md.append("")
        rows = [
            [
                m["store"],
                f"{m['connections']:,}",
                f"{m['rss_before_kib'] / 1024:.1f}",
                f"{m['rss_after_kib'] / 1024:.1f}",
                fmt(m["kib_per_connection"], 1),
                f"{m['connections_per_gib']:,.0f}",
            ]
            for m in rt.get("memory", [])
        ]
        md.append(table(["store", "idle connections", "RSS before MiB", "RSS after MiB", "KiB per connection", "connections per GiB"], rows))
        md.append("")

    # ---- targets summary (first in the document)
    summary = ["## Targets\n"]
    summary.append(
        table(
            ["target", "measured", "verdict"],
            [[t, m, "not measured" if ok is None else verdict(ok)] for t, m, ok in targets],
        )
    )
    summary.append("")
    body = [line for key in sorted(sections) for line in sections[key]]
    text = "\n".join(summary + body)

    plots(res, ours, peer)
    print(text)
    write_markdown(args.markdown, text, tiny)


def write_markdown(path, text, tiny):
    generated = f"{BEGIN}\n\n{text}\n{END}"
    try:
        with open(path) as f:
            old = f.read()
    except FileNotFoundError:
        old = None
    if old and BEGIN.split(" (")[0] in old and END in old:
        head = old[: old.index(BEGIN.split(" (")[0])]
        tail = old[old.index(END) + len(END) :]
        new = head + generated + tail
    else:
        new = (
            "# Benchmarks\n\n"
            + ("Smoke check at tiny size: the numbers mean nothing.\n\n" if tiny else "")
            + "`scripts/bench.sh` (full) or `scripts/bench.sh --tiny` (smoke check) writes this.\n\n"
            + generated
            + "\n"
        )
    with open(path, "w") as f:
        f.write(new)


def errbar(s):
    return [[s["median"] - s["min"]], [s["max"] - s["median"]]]


def plots(res, ours, peer):
    fan = ours.get("fanout", [])
    sf = {f["followers"]: f for f in ours.get("sqlite_fanout", [])}
    pf = {f["followers"]: f for f in (peer or {}).get("fanout", [])}
    if fan:
        fig, ax = plt.subplots(figsize=(9, 5))
        series = [
            ("ours: fan-out (SQS → Lambda path)", lambda f: f["fanout_rows_per_s"]),
            ("raw write ceiling (best concurrency)", lambda f: f["ceiling_rows_per_s"]),
            ("Stream-Framework 1.4.0 (Cassandra)", lambda f: pf.get(f["followers"], {}).get("fanout_rows_per_s")),
            ("ours on SQLite (embedded)", lambda f: sf.get(f["followers"], {}).get("fanout_rows_per_s")),
        ]
        width = 0.2
        for k, (label, get) in enumerate(series):
            xs, ys, errs = [], [[], []], []
            for i, f in enumerate(fan):
                s = get(f)
                if not s:
                    continue
                xs.append(i + (k - 1.5) * width)
                ys[0].append(s["median"])
                e = errbar(s)
                errs.append((e[0][0], e[1][0]))
            if xs:
                ax.bar(xs, ys[0], width, label=label, yerr=[[e[0] for e in errs], [e[1] for e in errs]], capsize=3)
        ax.set_xticks(range(len(fan)))
        ax.set_xticklabels([f"N = {f['followers']:,}" for f in fan])
        ax.set_yscale("log")
        ax.set_ylabel("feed rows written per second (log)")
        ax.set_title("Fan-out of one activity to N followers (median, min–max)")
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(os.path.join(res, "fanout.png"), dpi=110)
        plt.close(fig)

    reads = ours.get("reads", [])
    if reads:
        fig, axes = plt.subplots(1, 2, figsize=(11, 4.5))
        concs = sorted({r["concurrency"] for r in reads})
        lines = [("flat", "ours flat (HTTP)"), ("aggregated", "ours aggregated (HTTP)"), ("raw", "raw 25-row read")]
        for endpoint, label in lines:
            rs = [next((r for r in reads if r["endpoint"] == endpoint and r["concurrency"] == c), None) for c in concs]
            axes[0].plot(concs, [r["rps"]["median"] for r in rs], marker="o", label=label)
            axes[1].plot(concs, [r["p50_ms"]["median"] for r in rs], marker="o", label=label)
        for endpoint in ("flat", "aggregated"):
            pr = [r for r in (peer or {}).get("reads", []) if r["endpoint"] == endpoint]
            if pr:
                pr.sort(key=lambda r: r["concurrency"])
                axes[0].plot([r["concurrency"] for r in pr], [r["rps"]["median"] for r in pr], marker="x", linestyle="--", label=f"Stream-Framework {endpoint}")
                axes[1].plot([r["concurrency"] for r in pr], [r["p50_ms"]["median"] for r in pr], marker="x", linestyle="--", label=f"Stream-Framework {endpoint}")
        for ax in axes:
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.set_xticks(concs)
            ax.set_xticklabels(concs)
            ax.set_xlabel("concurrency")
        axes[0].set_ylabel("requests/s (log)")
        axes[1].set_ylabel("p50 ms (log)")
        axes[0].set_title("Feed reads, limit=25: throughput")
        axes[1].set_title("Feed reads, limit=25: median latency")
        axes[1].legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(os.path.join(res, "reads.png"), dpi=110)
        plt.close(fig)

    dl = ours.get("delivery", [])
    if dl:
        fig, ax = plt.subplots(figsize=(6, 4))
        labels = [f"{d['followers']:,} followers" for d in dl]
        x = range(len(dl))
        ax.bar([i - 0.2 for i in x], [d["p50_ms"] for d in dl], 0.4, label="p50")
        ax.bar([i + 0.2 for i in x], [d["p99_ms"] for d in dl], 0.4, label="p99")
        ax.set_xticks(list(x))
        ax.set_xticklabels(labels)
        ax.set_yscale("log")
        ax.set_ylabel("ms from POST answered to last follower's feed (log)")
        ax.set_title("Delivery latency")
        ax.legend()
        fig.tight_layout()
        fig.savefig(os.path.join(res, "delivery.png"), dpi=110)
        plt.close(fig)

    lam = ours.get("lambda", [])
    if lam:
        fig, axes = plt.subplots(1, 2, figsize=(11, 4.5))
        fns = list(dict.fromkeys(r["function"] for r in lam))
        modes = list(dict.fromkeys(r["mode"] for r in lam))
        for k, mode in enumerate(modes):
            rs = [next(r for r in lam if r["function"] == f and r["mode"] == mode) for f in fns]
            xs = [i + (k - 0.5) * 0.4 for i in range(len(fns))]
            axes[0].bar(xs, [r["init_ms"]["median"] for r in rs], 0.4, label=mode,
                        yerr=[[r["init_ms"]["median"] - r["init_ms"]["min"] for r in rs], [r["init_ms"]["max"] - r["init_ms"]["median"] for r in rs]], capsize=3)
            axes[1].bar(xs, [r["peak_rss_mib"]["median"] for r in rs], 0.4, label=mode)
        axes[0].axhline(TARGET_INIT_MS, color="red", linestyle=":", label="target (embedded) 30 ms")
        for ax in axes:
            ax.set_xticks(range(len(fns)))
            ax.set_xticklabels(fns)
        axes[0].set_ylabel("initialisation ms")
        axes[1].set_ylabel("peak RSS MiB")
        axes[0].set_title("Process start → ready for the first event")
        axes[1].set_title("Peak RSS after 11 events")
        axes[0].legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(os.path.join(res, "lambda.png"), dpi=110)
        plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
