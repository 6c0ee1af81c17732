//! Fan-out queue messages: any body is either reported unparsable (exactly when it is not a
//! `FanoutJob`) or run as a job, against a small world in an in-memory SQLite store; nothing panics,
//! and a job survives the queue's encoding unchanged.

#![no_main]

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use feeds::fanout::{Fanout, FanoutError, FanoutSettings};
use feeds::queue::FanoutJob;
use feeds::model::{Activity, ActivityId, FollowEdge};
use feeds::queue::embedded::EmbeddedQueue;
use feeds::store::sqlite::{SqliteDb, SqliteStore};
use feeds::store::Store;
use libfuzzer_sys::fuzz_target;
use tokio::runtime::Runtime;

struct World {
    runtime: Runtime,
    fanout: Fanout,
}

/// Users `a`..`d`, each following the others, each with two activities, delivered.
fn world() -> &'static World {
    static WORLD: OnceLock<World> = OnceLock::new();
    WORLD.get_or_init(|| {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime");
        let fanout = runtime.block_on(async {
            let db = SqliteDb::open(":memory:").expect("SQLite in memory");
            let store = Arc::new(SqliteStore::new(db.clone()));
            let queue = EmbeddedQueue::new(db, Duration::from_secs(30), 5)
                .await
                .expect("the embedded queue");
            let settings = FanoutSettings {
                chunk_size: 2,
                backfill_limit: 3,
                ..Default::default()
            };
            let fanout = Fanout::new(store.clone(), Arc::new(queue), settings);
            let users = ["a", "b", "c", "d"];
            for follower in users {
                for following in users.iter().filter(|u| **u != follower) {
                    let edge = FollowEdge {
                        follower: follower.into(),
                        following: (*following).into(),
                        created_at: chrono::Utc::now(),
                    };
                    store.follow(&edge).await.unwrap();
                }
            }
            for (i, actor) in users.iter().cycle().take(8).enumerate() {
                let time = chrono::DateTime::from_timestamp(1_795_946_400 + i as i64, 0).unwrap();
                let activity = Activity {
                    id: ActivityId::new(time).0,
                    actor: (*actor).into(),
                    verb: "post".into(),
                    object: format!("o{i}"),
                    target: None,
                    time,
                    foreign_id: None,
                    to: Vec::new(),
                    extra: None,
                };
                store.put_activity(&activity).await.unwrap();
                let job = FanoutJob::Deliver {
                    activity_id: activity.id,
                    actor: (*actor).into(),
                    after: None,
                };
                fanout.run(&job).await.unwrap();
            }
            fanout
        });
        World { runtime, fanout }
    })
}

fuzz_target!(|data: &[u8]| {
    // SQS message bodies are text.
    let Ok(body) = std::str::from_utf8(data) else {
        return;
    };
    let parsed = serde_json::from_str::<FanoutJob>(body);
    if let Ok(job) = &parsed {
        let carried = job.encode();
        assert_eq!(&serde_json::from_str::<FanoutJob>(&carried).unwrap(), job);
    }
    let world = world();
    let result = world.runtime.block_on(world.fanout.run_message(body));
    match (&parsed, &result) {
        (Err(_), Err(FanoutError::Unparsable(_))) => {}
        (Err(e), other) => panic!("a body that is no job ({e}) ran: {other:?}"),
        (Ok(_), Err(FanoutError::Unparsable(e))) => panic!("a job was refused as unparsable: {e}"),
        // Jobs of any content run against the store: ids from the queue are not validated, and
        // must not need to be.
        (Ok(job), Err(e)) => panic!("job {job:?} failed: {e}"),
        (Ok(_), Ok(())) => {}
    }
});
