"""Stream-Framework 1.4.0 as the peer benchmark runs it: the workarounds it needs here, its
settings, the feeds, the manager and the Celery app, shared by the benchmark process (which
publishes the fan-out tasks and reads the feeds) and the Celery workers that run the tasks:

    celery -A peer_app worker --pool prefork --concurrency 4      (PYTHONPATH=bench/peer)

Importing this module applies the workarounds to its own process only (no installed file changes)
and connects to Cassandra, as the package's timeline storage does at import time. The broker is
FEEDS_BENCH_PEER_BROKER (default: scripts/redis.sh's Redis, redis://127.0.0.1:6380/0)."""

import collections
import collections.abc
import os
import re
import sys
import types

os.environ.setdefault("CQLENG_ALLOW_SCHEMA_MANAGEMENT", "1")

KEYSPACE = "feeds_bench_peer"
HOSTS = ["127.0.0.1"]
PROTOCOL_VERSION = 4
BROKER_URL = os.environ.get("FEEDS_BENCH_PEER_BROKER", "redis://127.0.0.1:6380/0")
# Keys of the benchmark's own bookkeeping, beside kombu's in the broker's database.
KEY_PREFIX = "peer-bench:"
READY_MAIN_KEY = KEY_PREFIX + "worker-ready"
READY_CHILDREN_KEY = KEY_PREFIX + "children-ready"


def done_key(activity):
    """The list every worker pushes `ok:<followers>` (or `failed:<followers>`) onto after each
    fan-out task of this activity: the benchmark pops until the counts cover every follower."""
    return f"{KEY_PREFIX}done:{activity.serialization_id}"


def python_shims():
    """The aliases Python 3.10 removed from `collections` (they live in `collections.abc`)."""
    for name in ("Hashable", "Iterable", "Mapping", "MutableMapping", "Sequence", "Callable"):
        if not hasattr(collections, name):
            setattr(collections, name, getattr(collections.abc, name))


def redis_shim():
    """`stream_framework/storage/redis/structures/base.py` imports `redis.client.BasePipeline`
    (gone since redis-py 3.0) for an isinstance check of its Redis feeds, and the Manager's module
    imports RedisFeed even for Cassandra feeds; kombu's Redis transport needs redis-py 6.1 or later.
    So the name is given back, as the class it became, before the package is imported."""
    import redis.client

    if not hasattr(redis.client, "BasePipeline"):
        redis.client.BasePipeline = redis.client.Pipeline


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
    identifier renamed (to `run_async`), nothing else changed, under its own module name (so that
    the tasks' pickled `add_operation` resolves to it in the workers too)."""
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


def exit_with_parent():
    """In a worker started by the benchmark (FEEDS_BENCH_PEER_PARENT: its pid): SIGTERM when the
    benchmark dies, however it dies (Linux PR_SET_PDEATHSIG), so that the worker never outlives it;
    its warm shutdown stops the pool processes."""
    parent = os.environ.get("FEEDS_BENCH_PEER_PARENT")
    if not parent:
        return
    import ctypes
    import signal

    pr_set_pdeathsig = 1
    ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)
    if os.getppid() != int(parent):  # it died before the prctl
        os.kill(os.getpid(), signal.SIGTERM)


exit_with_parent()
python_shims()
redis_shim()
configure()
manager_module, RENAMED_ASYNC = load_manager()

import celery  # noqa: E402
import redis  # noqa: E402
from celery import signals  # noqa: E402
from cassandra.cqlengine import columns, connection  # noqa: E402
from cassandra.cqlengine.models import Model  # noqa: E402
from cassandra.query import SimpleStatement  # noqa: E402
from stream_framework.feeds.aggregated_feed.cassandra import CassandraAggregatedFeed  # noqa: E402
from stream_framework.feeds.cassandra import CassandraFeed  # noqa: E402

app = celery.Celery("peer_app", broker=BROKER_URL)
app.conf.update(
    # The package passes the manager, the feed class and the operation function to its tasks,
    # which only pickle carries (its documentation's Celery set-up).
    task_serializer="pickle",
    accept_content=["pickle", "json"],
    task_ignore_result=True,
    broker_connection_retry_on_startup=True,
)
app.set_default()


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
        rows = connection.get_session().execute(statement, (user_id,))
        return {FanoutPriority.HIGH: [row["follower_id"] for row in rows]}


_bookkeeping = None


def bookkeeping():
    """A Redis client for the benchmark's keys (one per process: made after the workers' fork)."""
    global _bookkeeping
    if _bookkeeping is None:
        _bookkeeping = redis.Redis.from_url(BROKER_URL)
    return _bookkeeping


@signals.worker_process_init.connect
def _child_ready(**_):
    # The Cassandra connection made at import, in the worker's main process, is not usable after
    # the fork: each pool process opens its own.
    from stream_framework.storage.cassandra.connection import setup_connection

    setup_connection()
    bookkeeping().incr(READY_CHILDREN_KEY)


@signals.worker_ready.connect
def _worker_ready(**_):
    bookkeeping().set(READY_MAIN_KEY, os.getpid())


@signals.task_postrun.connect
def _fanout_done(kwargs=None, state=None, **_):
    if not kwargs or "user_ids" not in kwargs:
        return
    activity = kwargs["operation_kwargs"]["activities"][0]
    outcome = "ok" if state == "SUCCESS" else "failed"
    bookkeeping().rpush(done_key(activity), f"{outcome}:{len(kwargs['user_ids'])}")
