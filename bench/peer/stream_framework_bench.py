#!/usr/bin/env python3
"""Workload 4: Stream-Framework 1.4.0 (PyPI `stream-framework`), the peer, doing workloads 1 and 3
on the same local Cassandra: fan-out of one activity to N followers through its `Manager`
(Celery tasks run eagerly, in-process), and reads of 25 activities from its flat `CassandraFeed`
and its `CassandraAggregatedFeed`, at concurrency 1, 16 and 64 (threads).

Run by scripts/bench.sh in its virtual environment:
    python bench/peer/stream_framework_bench.py --size full --out bench/results/peer.json

Before anything runs, two probes (each in a child process) record why the package does not run
as shipped on Python 3.11 against Cassandra 5.0; the benchmark then works around both, in this
process only, without changing any installed file (see `load_manager` and `configure`).
"""

import argparse
import datetime
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import threading
import time
import types

os.environ.setdefault("CQLENG_ALLOW_SCHEMA_MANAGEMENT", "1")

KEYSPACE = "feeds_bench_peer"
HOSTS = ["127.0.0.1"]
PROTOCOL_VERSION = 4
READER = 42
READ_CONCURRENCIES = (1, 16, 64)


def log(msg):
    print(f"stream-framework-bench: {msg}", file=sys.stderr, flush=True)


def percentile(sorted_values, p):
    if not sorted_values:
        return float("nan")
    if len(sorted_values) == 1:
        return sorted_values[0]
    rank = p / 100.0 * (len(sorted_values) - 1)
    lo, hi = int(rank // 1), int(-(-rank // 1))
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (rank - lo)


def summarize(values):
    v = sorted(values)
    return {
        "n": len(v),
        "median": percentile(v, 50),
        "q1": percentile(v, 25),
        "q3": percentile(v, 75),
        "min": v[0] if v else float("nan"),
        "max": v[-1] if v else float("nan"),
    }


def probe(code):
    """Runs `code` in a child interpreter: (succeeded, the last line it printed to stderr)."""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=180)
    lines = [l for l in r.stderr.strip().splitlines() if l.strip()]
    return r.returncode == 0, "\n".join(lines[-6:])


def findings():
    """What happens with the package as shipped."""
    out = {}
    ok, err = probe("import stream_framework.feed_managers.base")
    out["manager_import"] = {
        "what": "import stream_framework.feed_managers.base (the Manager that runs the fan-out)",
        "ok": ok,
        "error": err,
    }
    ok, err = probe(
        "from stream_framework import settings\n"
        f"settings.STREAM_CASSANDRA_HOSTS = {HOSTS!r}\n"
        "import stream_framework.storage.cassandra.timeline_storage\n"
    )
    out["default_protocol"] = {
        "what": "importing the Cassandra timeline storage with the default settings "
        "(CASSANDRA_DRIVER_KWARGS = {'protocol_version': 2}), which connects at import time",
        "ok": ok,
        "error": err,
    }
    ok, err = probe("from stream_framework.utils import memoized\nmemoized(lambda x: x)(1)")
    out["collections_abc"] = {
        "what": "stream_framework.utils.memoized, which every Cassandra feed's model factory goes "
        "through (it uses collections.Hashable, moved to collections.abc and removed in Python 3.10)",
        "ok": ok,
        "error": err,
    }
    return out


def python_shims():
    """The aliases Python 3.10 removed from `collections` (they live in `collections.abc`)."""
    import collections
    import collections.abc

    for name in ("Hashable", "Iterable", "Mapping", "MutableMapping", "Sequence", "Callable"):
        if not hasattr(collections, name):
            setattr(collections, name, getattr(collections.abc, name))


def configure():
    """Settings through the package's own settings module (what a Django project's settings do)."""
    from stream_framework import settings

    settings.STREAM_CASSANDRA_HOSTS = HOSTS
    settings.STREAM_DEFAULT_KEYSPACE = KEYSPACE
    # Cassandra 4.0 and later speak native protocol v3 to v5; the package's default is v2.
    settings.CASSANDRA_DRIVER_KWARGS = {"protocol_version": PROTOCOL_VERSION}


def load_manager():
    """`stream_framework/feed_managers/base.py` uses `async` as a parameter name, a keyword since
    Python 3.7, so the module does not compile. It is loaded here from its own source with that one
    identifier renamed (to `run_async`), nothing else changed."""
    import stream_framework.feed_managers as pkg

    path = os.path.join(os.path.dirname(pkg.__file__), "base.py")
    with open(path) as f:
        source = f.read()
    patched, renamed = re.subn(r"\basync\b", "run_async", source)
    module = types.ModuleType("stream_framework.feed_managers.base")
    module.__file__ = path
    sys.modules[module.__name__] = module
    exec(compile(patched, path, "exec"), module.__dict__)
    return module, renamed


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", choices=["tiny", "full"], default="full")
    ap.add_argument("--out", required=True)
    ap.add_argument(
        "--max-followers",
        type=int,
        default=None,
        help="skip fan-out sizes above this (its rate does not depend on N: chunks run one by one)",
    )
    args = ap.parse_args()
    tiny = args.size == "tiny"
    fanout_sizes = [(100, 2)] if tiny else [(1_000, 3), (10_000, 2), (100_000, 1)]
    skipped = [n for n, _ in fanout_sizes if args.max_followers is not None and n > args.max_followers]
    fanout_sizes = [(n, r) for n, r in fanout_sizes if n not in skipped]
    read_runs, read_secs = (2, 0.5) if tiny else (5, 3.0)

    import cassandra
    import celery
    import stream_framework

    result = {
        "meta": {
            "package": f"stream-framework {stream_framework.__version__}",
            "python": platform.python_version(),
            "cassandra_driver": cassandra.__version__,
            "celery": celery.__version__,
            "keyspace": KEYSPACE,
            "protocol_version": PROTOCOL_VERSION,
            "size": args.size,
            "started": datetime.datetime.now(datetime.timezone.utc).isoformat(),
        },
        "findings": findings(),
    }
    for name, f in result["findings"].items():
        log(f"as shipped, {name}: {'ok' if f['ok'] else 'FAILS: ' + f['error'].splitlines()[-1]}")

    python_shims()
    configure()
    manager_module, renamed = load_manager()
    result["meta"]["workarounds"] = [
        f"feed_managers/base.py loaded from its own source with the identifier `async` renamed "
        f"({renamed} occurrences): `async` is a keyword since Python 3.7",
        "collections.Hashable (and the other ABC aliases) restored from collections.abc: removed "
        "in Python 3.10",
        f"CASSANDRA_DRIVER_KWARGS = {{'protocol_version': {PROTOCOL_VERSION}}}: the default, 2, is "
        "refused by Cassandra 4.0 and later",
        "redis pinned to 2.10.6: the Manager's module imports RedisFeed even for Cassandra feeds, "
        "and RedisFeed imports redis.client.BasePipeline, gone since redis-py 3.0",
        "Celery 5 with task_always_eager: every fan-out task runs in this process, one after another",
    ]

    # Celery tasks run eagerly, in this process (no broker, no workers).
    app = celery.Celery("stream_framework_bench")
    app.conf.task_always_eager = True
    app.conf.task_eager_propagates = True
    # The package passes the manager, the feed class and the operation function to its tasks, which
    # only pickle carries (its documentation's Celery set-up); Celery 5 encodes eager calls too.
    app.conf.task_serializer = "pickle"
    app.conf.accept_content = ["pickle", "json"]
    app.set_default()

    from cassandra.cqlengine import columns, connection, management
    from cassandra.cqlengine.models import Model
    from cassandra.query import SimpleStatement
    from cassandra.concurrent import execute_concurrent_with_args
    from stream_framework.activity import Activity
    from stream_framework.feeds.aggregated_feed.cassandra import CassandraAggregatedFeed
    from stream_framework.feeds.cassandra import CassandraFeed
    from stream_framework.verbs.base import Add, Comment, Love

    # Schema: the package's cqlengine models, one table per feed class, made with sync_table.
    class BenchFeed(CassandraFeed):
        key_format = "flat:%(user_id)s"
        timeline_cf_name = "bench_flat"

    class BenchUserFeed(CassandraFeed):
        key_format = "user:%(user_id)s"
        timeline_cf_name = "bench_user"
        max_length = 10**6

    class BenchAggregatedFeed(CassandraAggregatedFeed):
        key_format = "aggregated:%(user_id)s"
        timeline_cf_name = "bench_aggregated"

    class Follower(Model):
        """The follow graph is the application's, not the package's: kept in Cassandra too."""

        __table_name__ = "bench_followers"
        __keyspace__ = KEYSPACE
        user_id = columns.Integer(partition_key=True)
        follower_id = columns.Integer(primary_key=True)

    session = connection.get_session()
    t = time.perf_counter()
    management.create_keyspace_simple(KEYSPACE, 1)
    for feed in (BenchFeed, BenchUserFeed, BenchAggregatedFeed):
        management.sync_table(feed.get_timeline_storage().model)
    management.sync_table(Follower)
    result["meta"]["schema_setup_s"] = time.perf_counter() - t
    follower_insert = session.prepare(
        f"INSERT INTO {KEYSPACE}.bench_followers (user_id, follower_id) VALUES (?, ?)"
    )

    Manager = manager_module.Manager
    FanoutPriority = manager_module.FanoutPriority

    class BenchManager(Manager):
        feed_classes = dict(normal=BenchFeed)
        user_feed_class = BenchUserFeed

        def get_user_follower_ids(self, user_id):
            statement = SimpleStatement(
                f"SELECT follower_id FROM {KEYSPACE}.bench_followers WHERE user_id = %s",
                fetch_size=5000,
            )
            ids = [row["follower_id"] for row in session.execute(statement, (user_id,))]
            return {FanoutPriority.HIGH: ids}

    # Picklable by reference, as the task arguments must be.
    for cls in (BenchFeed, BenchUserFeed, BenchAggregatedFeed, BenchManager):
        cls.__qualname__ = cls.__name__
        cls.__module__ = __name__
        setattr(sys.modules[__name__], cls.__name__, cls)
    manager = BenchManager()
    object_ids = iter(range(10**6, 10**9))

    fanout = []
    for n, reps in fanout_sizes:
        actor = 1_000_000 + n
        followers = list(range(10_000_000, 10_000_000 + n))
        log(f"fan-out: {n} followers of {actor} (set-up)")
        execute_concurrent_with_args(
            session, follower_insert, [(actor, f) for f in followers], concurrency=100
        )
        rates, walls = [], []
        for rep in range(reps):
            activity = Activity(
                actor=actor,
                verb=Add,
                object=next(object_ids),
                time=datetime.datetime.utcnow(),
            )
            t0 = time.perf_counter()
            manager.add_user_activity(actor, activity)
            wall = time.perf_counter() - t0
            rates.append(n / wall)
            walls.append(wall)
            for f in (followers[0], followers[-1]):
                got = BenchFeed(f)[:1]
                if not got or got[0].serialization_id != activity.serialization_id:
                    raise SystemExit(f"follower {f} lacks the activity")
            log(f"fan-out {n}: rep {rep + 1}/{reps}: {n / wall:.0f} rows/s ({wall:.2f} s)")
        fanout.append(
            {
                "store": "cassandra",
                "path": "Manager.add_user_activity → fanout_operation tasks (Celery, eager) "
                "of 100 followers each, one batch interface per task",
                "followers": n,
                "reps": reps,
                "fanout_rows_per_s": summarize(rates),
                "fanout_wall_s": summarize(walls),
            }
        )
    result["fanout"] = fanout
    result["fanout_skipped"] = skipped

    # Reads: the reader's feeds hold the same 300 activities as ours (30 days, 10 a day, 3 verbs,
    # 10 actors); the aggregated feed groups them by verb and day (RecentVerbAggregator).
    base = datetime.datetime(2026, 10, 31)
    activities = []
    for k in range(300):
        day, j = divmod(k, 10)
        activities.append(
            Activity(
                actor=100 + k % 10,
                verb=[Add, Love, Comment][j % 3],
                object=500_000 + k,
                time=base - datetime.timedelta(days=day) + datetime.timedelta(hours=2 * j),
            )
        )
    flat, aggregated = BenchFeed(READER), BenchAggregatedFeed(READER)
    flat.delete()
    aggregated.delete()
    flat.add_many(activities, trim=False)
    aggregated.add_many(activities, trim=False)
    log(f"reader: {len(flat[:300])} flat activities, {len(aggregated[:300])} aggregated groups")

    def closed_loop(c, secs, op):
        deadline = time.perf_counter() + secs
        lat, errors = [], [0]
        lock = threading.Lock()

        def worker():
            mine, bad = [], 0
            while time.perf_counter() < deadline:
                t = time.perf_counter()
                try:
                    ok = op()
                except Exception:
                    ok = False
                mine.append((time.perf_counter() - t) * 1e3)
                bad += 0 if ok else 1
            with lock:
                lat.extend(mine)
                errors[0] += bad

        start = time.perf_counter()
        threads = [threading.Thread(target=worker) for _ in range(c)]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        elapsed = time.perf_counter() - start
        s = sorted(lat)
        return {
            "rps": len(lat) / elapsed,
            "p50_ms": percentile(s, 50),
            "p99_ms": percentile(s, 99),
            "errors": errors[0],
        }

    reads = []
    ops = {
        "flat": lambda: len(BenchFeed(READER)[:25]) == 25,
        "aggregated": lambda: len(BenchAggregatedFeed(READER)[:25]) == 25,
    }
    for c in READ_CONCURRENCIES:
        for endpoint, op in ops.items():
            closed_loop(c, min(read_secs, 1.0), op)
            runs = [closed_loop(c, read_secs, op) for _ in range(read_runs)]
            r = {
                "store": "cassandra",
                "endpoint": endpoint,
                "concurrency": c,
                "runs": read_runs,
                "seconds_per_run": read_secs,
                "rps": summarize([x["rps"] for x in runs]),
                "p50_ms": summarize([x["p50_ms"] for x in runs]),
                "p99_ms": summarize([x["p99_ms"] for x in runs]),
                "errors": sum(x["errors"] for x in runs),
            }
            log(
                f"reads {endpoint} c={c}: {r['rps']['median']:.0f} req/s, "
                f"p50 {r['p50_ms']['median']:.2f} ms, p99 {r['p99_ms']['median']:.2f} ms, "
                f"{r['errors']} errors"
            )
            reads.append(r)
    result["reads"] = reads
    result["meta"]["finished"] = datetime.datetime.now(datetime.timezone.utc).isoformat()
    with open(args.out, "w") as f:
        json.dump(result, f, indent=2)
    log(f"results in {args.out}")
    os._exit(0)  # the driver's event-loop threads would otherwise keep the process alive a while


if __name__ == "__main__":
    main()
