#!/usr/bin/env python3
"""Workload 4: Stream-Framework 1.4.0 (PyPI `stream-framework`), the peer, doing workloads 1 and 3
on the same local Cassandra, deployed as its documentation describes: fan-out of one activity to N
followers through its `Manager`, whose Celery tasks (100 followers each, pickled) go through a Redis
broker (scripts/redis.sh) to 4 Celery worker processes (prefork pool, as many as our 4 fan-out
consumers) that this script starts and stops; and reads of 25 activities from its flat
`CassandraFeed` and its `CassandraAggregatedFeed`, at concurrency 1, 16 and 64 (threads).

Run by scripts/bench.sh in its virtual environment, with scripts/redis.sh's Redis running:
    python bench/peer/stream_framework_bench.py --size full --out bench/results/peer.json

Before anything runs, probes (each in a child process) record why the package does not run as
shipped on Python 3.11 against Cassandra 5.0 with today's Celery; peer_app.py then works around
each, in this process and the workers only, without changing any installed file.
"""

import argparse
import datetime
from importlib.metadata import version
import json
import os
import platform
import subprocess
import sys
import threading
import time
import signal

HERE = os.path.dirname(os.path.abspath(__file__))
HOSTS = ["127.0.0.1"]
WORKER_PROCESSES = 4
# A fan-out with no task finishing for this long has failed (a worker died, a task was lost).
STALL_SECONDS = 120
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
    ok, err = probe("import stream_framework.feeds.redis")
    out["redis_client"] = {
        "what": "import stream_framework.feeds.redis (which the Manager's module imports whatever "
        f"the feeds) with redis-py {version('redis')}, as kombu {version('kombu')}'s Redis transport "
        "(Celery's broker client) requires (it refuses redis-py < 6.1)",
        "ok": ok,
        "error": err,
    }
    return out


class Workers:
    """`celery -A peer_app worker --pool prefork --concurrency 4` in a session of its own, started
    here and stopped here (its whole process group), broker and Cassandra on 127.0.0.1 only."""

    def __init__(self, peer_app, log_path, processes):
        self.peer_app, self.log_path, self.processes = peer_app, log_path, processes
        self.proc = None
        self.argv = [
            sys.executable, "-m", "celery", "-A", "peer_app", "worker",
            "--pool", "prefork", "--concurrency", str(processes),
            "--loglevel", "WARNING", "--hostname", f"peer-bench-{os.getpid()}@%h",
        ]

    def __enter__(self):
        r = self.peer_app.bookkeeping()
        r.delete(self.peer_app.READY_MAIN_KEY, self.peer_app.READY_CHILDREN_KEY)
        # Tasks left in the broker by an interrupted run would be run by the new workers.
        purged = self.peer_app.app.control.purge()
        if purged:
            log(f"purged {purged} tasks left in the broker")
        env = dict(
            os.environ,
            PYTHONPATH=os.pathsep.join(filter(None, [HERE, os.environ.get("PYTHONPATH")])),
            FEEDS_BENCH_PEER_BROKER=self.peer_app.BROKER_URL,
            FEEDS_BENCH_PEER_PARENT=str(os.getpid()),
        )
        if os.geteuid() == 0:
            # Celery refuses a pickle-accepting worker under root unless told this.
            env["C_FORCE_ROOT"] = "1"
        self.log_file = open(self.log_path, "w")
        t = time.perf_counter()
        self.proc = subprocess.Popen(
            self.argv,
            env=env,
            cwd=HERE,
            stdin=subprocess.DEVNULL,
            stdout=self.log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log(f"celery worker (pid {self.proc.pid}) starting, log {self.log_path}")
        try:
            self.wait_ready(r)
        except BaseException:
            self.__exit__()  # not called by `with` when __enter__ fails
            raise
        self.startup_s = time.perf_counter() - t
        log(f"celery worker ready after {self.startup_s:.1f} s")
        return self

    def wait_ready(self, r):
        """The main process is consuming and every pool process has its Cassandra session."""
        deadline = time.monotonic() + 120
        while not (
            r.get(self.peer_app.READY_MAIN_KEY)
            and int(r.get(self.peer_app.READY_CHILDREN_KEY) or 0) >= self.processes
        ):
            if self.proc.poll() is not None:
                self.fail(f"celery worker exited ({self.proc.returncode}) during startup")
            if time.monotonic() > deadline:
                self.fail("celery worker not ready after 120 s")
            time.sleep(0.1)

    def fail(self, msg):
        self.log_file.flush()
        with open(self.log_path) as f:
            sys.stderr.write("".join(f.readlines()[-30:]))
        raise SystemExit(msg)

    def __exit__(self, *exc):
        if self.proc is None:
            return
        pgid = self.proc.pid
        if self.proc.poll() is None:
            # Warm shutdown first: the main process stops its pool processes itself.
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                log("celery worker still running 30 s after SIGTERM: killing its process group")
        # Whatever of the group is left (a pool process whose parent was killed) goes too.
        try:
            os.killpg(pgid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait()
        self.log_file.close()
        log(f"celery worker stopped ({self.proc.returncode})")


def wait_fanout(peer_app, activity, n):
    """Pops the workers' reports for this activity until they cover all n followers: the moment
    the last task's batch of writes was acknowledged by Cassandra. Returns that moment."""
    r, key = peer_app.bookkeeping(), peer_app.done_key(activity)
    done, tasks = 0, 0
    while done < n:
        item = r.blpop([key], timeout=STALL_SECONDS)
        now = time.perf_counter()
        if item is None:
            raise SystemExit(f"fan-out stalled: no task done for {STALL_SECONDS} s ({done}/{n} followers)")
        outcome, count = item[1].decode().split(":")
        if outcome != "ok":
            raise SystemExit(f"a fan-out task failed ({count} followers): see the worker log")
        done, tasks = done + int(count), tasks + 1
    r.delete(key)
    return now, tasks


def check_fanout(peer_app, activity, followers, sample=200):
    """Every follower's feed got the activity (all of them up to `sample`, else an even sample
    with the first and the last), and the broker's queue is empty."""
    step = max(1, len(followers) // sample)
    for f in sorted(set(followers[::step]) | {followers[0], followers[-1]}):
        got = peer_app.BenchFeed(f)[:1]
        if not got or got[0].serialization_id != activity.serialization_id:
            raise SystemExit(f"follower {f} lacks the activity")
    left = peer_app.bookkeeping().llen("celery")
    if left:
        raise SystemExit(f"{left} tasks still in the broker's queue after the fan-out")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", choices=["tiny", "full"], default="full")
    ap.add_argument("--out", required=True)
    ap.add_argument("--max-followers", type=int, default=None, help="skip fan-out sizes above this")
    ap.add_argument("--worker-log", default=None, help="the Celery worker's log (default: beside --out)")
    args = ap.parse_args()
    tiny = args.size == "tiny"
    fanout_sizes = [(100, 2)] if tiny else [(1_000, 3), (10_000, 2), (100_000, 2)]
    if args.max_followers is not None and args.max_followers < fanout_sizes[0][0]:
        ap.error(f"--max-followers below the smallest size ({fanout_sizes[0][0]})")
    skipped = [n for n, _ in fanout_sizes if args.max_followers is not None and n > args.max_followers]
    fanout_sizes = [(n, r) for n, r in fanout_sizes if n not in skipped]
    read_runs, read_secs = (2, 0.5) if tiny else (5, 3.0)
    worker_log = args.worker_log or os.path.join(os.path.dirname(os.path.abspath(args.out)), "peer-celery.log")
    # SIGTERM unwinds like Ctrl-C, through the `finally` that stops the workers.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    found = findings()
    for name, f in found.items():
        log(f"as shipped, {name}: {'ok' if f['ok'] else 'FAILS: ' + f['error'].splitlines()[-1]}")

    sys.path.insert(0, HERE)
    import peer_app  # applies the workarounds and connects to Cassandra

    try:
        broker = peer_app.bookkeeping()
        broker.ping()
    except Exception as e:
        raise SystemExit(f"no Redis at {peer_app.BROKER_URL} ({e}): scripts/redis.sh start")

    import cassandra
    import celery
    import kombu
    import redis
    import stream_framework

    result = {
        "meta": {
            "package": f"stream-framework {stream_framework.__version__}",
            "python": platform.python_version(),
            "cassandra_driver": cassandra.__version__,
            "celery": celery.__version__,
            "kombu": kombu.__version__,
            "redis_py": redis.__version__,
            "redis_server": broker.info("server").get("redis_version"),
            "broker": peer_app.BROKER_URL,
            "workers": f"celery -A peer_app worker --pool prefork --concurrency {WORKER_PROCESSES}",
            "worker_processes": WORKER_PROCESSES,
            "fanout_chunk_size": peer_app.BenchManager.fanout_chunk_size,
            "keyspace": peer_app.KEYSPACE,
            "protocol_version": peer_app.PROTOCOL_VERSION,
            "size": args.size,
            "started": datetime.datetime.now(datetime.timezone.utc).isoformat(),
        },
        "findings": found,
    }
    result["meta"]["workarounds"] = [
        f"feed_managers/base.py loaded from its own source with the identifier `async` renamed "
        f"({peer_app.RENAMED_ASYNC} occurrences): `async` is a keyword since Python 3.7",
        "collections.Hashable (and the other ABC aliases) restored from collections.abc: removed "
        "in Python 3.10",
        f"CASSANDRA_DRIVER_KWARGS = {{'protocol_version': {peer_app.PROTOCOL_VERSION}}}: the default, "
        "2, is refused by Cassandra 4.0 and later",
        f"redis-py {redis.__version__} (kombu {kombu.__version__}'s Redis transport refuses redis-py "
        "2.10.6, the last release with redis.client.BasePipeline: `VersionMismatch: Redis transport "
        "requires redis-py versions 6.1.0 or later`), with redis.client.BasePipeline set to "
        "redis.client.Pipeline before the package is imported: the Manager's module imports RedisFeed "
        "even for Cassandra feeds, and RedisFeed's module imports that name (used only by Redis feeds)",
        f"Celery {celery.__version__} with its Redis transport, pickle for the tasks as the package "
        f"documents; the Celery worker ({WORKER_PROCESSES} prefork pool processes) opens a Cassandra "
        "connection in each pool process (the one the package opens at import, in the parent, does "
        "not survive the fork)"
        + ("; C_FORCE_ROOT=1 for the worker, since this run was as root: Celery refuses a "
           "pickle-accepting worker under root otherwise" if os.geteuid() == 0 else ""),
    ]

    from cassandra.concurrent import execute_concurrent_with_args
    from cassandra.cqlengine import connection, management
    from stream_framework.activity import Activity
    from stream_framework.verbs.base import Add, Comment, Love

    session = connection.get_session()
    t = time.perf_counter()
    management.create_keyspace_simple(peer_app.KEYSPACE, 1)
    for feed in (peer_app.BenchFeed, peer_app.BenchUserFeed, peer_app.BenchAggregatedFeed):
        management.sync_table(feed.get_timeline_storage().model)
    management.sync_table(peer_app.Follower)
    result["meta"]["schema_setup_s"] = time.perf_counter() - t
    follower_insert = session.prepare(
        f"INSERT INTO {peer_app.KEYSPACE}.bench_followers (user_id, follower_id) VALUES (?, ?)"
    )

    manager = peer_app.BenchManager()
    object_ids = iter(range(10**6, 10**9))

    def fan_out(actor, followers):
        """add_user_activity → every follower's feed holds the activity: (wall s, enqueue s, tasks)."""
        activity = Activity(actor=actor, verb=Add, object=next(object_ids), time=datetime.datetime.utcnow())
        t0 = time.perf_counter()
        manager.add_user_activity(actor, activity)
        enqueued = time.perf_counter()
        finished, tasks = wait_fanout(peer_app, activity, len(followers))
        check_fanout(peer_app, activity, followers)
        return finished - t0, enqueued - t0, tasks

    fanout = []
    with Workers(peer_app, worker_log, WORKER_PROCESSES) as workers:
        result["meta"]["worker_startup_s"] = workers.startup_s
        for i, (n, reps) in enumerate(fanout_sizes):
            actor = 1_000_000 + n
            followers = list(range(10_000_000, 10_000_000 + n))
            log(f"fan-out: {n} followers of {actor} (set-up)")
            execute_concurrent_with_args(
                session, follower_insert, [(actor, f) for f in followers], concurrency=100
            )
            if i == 0:
                # Each pool process's first tasks import modules and open pools: not measured.
                wall, _, _ = fan_out(actor, followers)
                log(f"fan-out {n}: warm-up, not recorded ({wall:.2f} s)")
            rates, walls, enqueues, task_counts = [], [], [], []
            for rep in range(reps):
                wall, enqueue, tasks = fan_out(actor, followers)
                rates.append(n / wall)
                walls.append(wall)
                enqueues.append(enqueue)
                task_counts.append(tasks)
                log(
                    f"fan-out {n}: rep {rep + 1}/{reps}: {n / wall:.0f} rows/s ({wall:.2f} s, "
                    f"add_user_activity returned after {enqueue:.2f} s, {tasks} tasks)"
                )
            fanout.append(
                {
                    "store": "cassandra",
                    "path": "Manager.add_user_activity → fanout_operation tasks of "
                    f"{peer_app.BenchManager.fanout_chunk_size} followers each through Redis → "
                    f"Celery worker, {WORKER_PROCESSES} prefork processes, one batch interface per task",
                    "followers": n,
                    "reps": reps,
                    "tasks_per_fanout": task_counts[0],
                    "fanout_rows_per_s": summarize(rates),
                    "fanout_wall_s": summarize(walls),
                    "enqueue_s": summarize(enqueues),
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
    BenchFeed, BenchAggregatedFeed = peer_app.BenchFeed, peer_app.BenchAggregatedFeed
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
