//! One behavioural suite every `Store` must pass. It uses fresh user names on each run, so it can
//! run against a shared database.

use chrono::{Duration, Utc};
use feeds::model::{parse_time, Activity, ActivityId, FollowEdge};
use feeds::store::{
    Census, Connection, DayRange, EdgeCheck, EdgeSide, GroupRef, GroupSummary, GroupWrite, IdRange,
    PulledFollowee, Store, StoredGroup, TimelineEntry,
};

use crate::unique;

fn activity(actor: &str, time: &str, foreign_id: Option<&str>) -> Activity {
    let time = parse_time(time).unwrap();
    Activity {
        id: ActivityId::new(time).0,
        actor: actor.to_owned(),
        verb: "post".to_owned(),
        object: "obj_1".to_owned(),
        target: None,
        time,
        foreign_id: foreign_id.map(str::to_owned),
        to: Vec::new(),
        extra: None,
    }
}

/// Runs the whole suite on `store`.
pub async fn run(store: &dyn Store) {
    store.health().await.expect("health");
    follow_edges_are_idempotent_and_listed_in_order(store).await;
    activities_are_idempotent_by_foreign_id(store).await;
    timelines_are_sorted_sliced_and_idempotent(store).await;
    timelines_are_looked_up_counted_and_trimmed(store).await;
    groups_keep_the_latest_mark_and_the_latest_scan(store).await;
    pulled_authors_activities_and_followees_are_kept(store).await;
    updates_compare_and_set_and_rewrite_only_what_they_name(store).await;
    scans_walk_whole_tables_page_by_page(store).await;
    connections_are_recorded_by_user_by_id_and_by_pulled_author(store).await;
}

async fn follow_edges_are_idempotent_and_listed_in_order(store: &dyn Store) {
    let star = unique("star");
    let fans: Vec<String> = (0..5).map(|i| format!("{}_{i}", unique("fan"))).collect();
    let t0 = Utc::now() - Duration::hours(1);
    for fan in &fans {
        let edge = FollowEdge {
            follower: fan.clone(),
            following: star.clone(),
            created_at: t0,
        };
        let (stored, created) = store.follow(&edge).await.unwrap();
        assert!(created, "a new edge is created");
        assert_eq!(stored.created_at.timestamp_micros(), t0.timestamp_micros());
    }
    let again = FollowEdge {
        follower: fans[0].clone(),
        following: star.clone(),
        created_at: Utc::now(),
    };
    let (stored, created) = store.follow(&again).await.unwrap();
    assert!(!created, "an existing edge is not created twice");
    assert_eq!(
        stored.created_at.timestamp_micros(),
        t0.timestamp_micros(),
        "it keeps its original time"
    );
    assert!(store.is_following(&fans[0], &star).await.unwrap());
    assert!(!store.is_following(&star, &fans[0]).await.unwrap());

    let mut sorted = fans.clone();
    sorted.sort();
    let first = store.followers(&star, None, 3).await.unwrap();
    let names: Vec<_> = first.iter().map(|r| r.user.clone()).collect();
    assert_eq!(names, sorted[..3]);
    let rest = store.followers(&star, Some(&names[2]), 10).await.unwrap();
    let rest: Vec<_> = rest.iter().map(|r| r.user.clone()).collect();
    assert_eq!(rest, sorted[3..]);
    let following = store.following(&fans[1], None, 10).await.unwrap();
    assert_eq!(following.len(), 1);
    assert_eq!(following[0].user, star);

    store.unfollow(&fans[0], &star).await.unwrap();
    store.unfollow(&fans[0], &star).await.unwrap();
    assert!(!store.is_following(&fans[0], &star).await.unwrap());
    assert_eq!(store.followers(&star, None, 10).await.unwrap().len(), 4);
    assert!(store
        .following(&fans[0], None, 10)
        .await
        .unwrap()
        .is_empty());

    // Followed again, even with a request time older than the first edge (a slow request, a
    // client clock behind): a new edge, listed on both sides.
    let (stored, created) = store
        .follow(&FollowEdge {
            follower: fans[0].clone(),
            following: star.clone(),
            created_at: t0 - Duration::hours(1),
        })
        .await
        .unwrap();
    assert!(created, "following again after an unfollow creates an edge");
    assert!(stored.created_at.timestamp_micros() >= (t0 - Duration::hours(1)).timestamp_micros());
    assert!(store.is_following(&fans[0], &star).await.unwrap());
    assert_eq!(store.followers(&star, None, 10).await.unwrap().len(), 5);
    let listed = store.following(&fans[0], None, 10).await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].since, stored.created_at);

    // A following list pages past edges that were unfollowed.
    let fan = unique("reader");
    let stars: Vec<String> = (0..6).map(|i| format!("{}_{i}", unique("star"))).collect();
    for s in &stars {
        let edge = FollowEdge {
            follower: fan.clone(),
            following: s.clone(),
            created_at: t0,
        };
        store.follow(&edge).await.unwrap();
    }
    let mut sorted = stars.clone();
    sorted.sort();
    for s in &sorted[..3] {
        store.unfollow(&fan, s).await.unwrap();
    }
    let page = store.following(&fan, None, 2).await.unwrap();
    let names: Vec<_> = page.iter().map(|r| r.user.clone()).collect();
    assert_eq!(names, sorted[3..5]);
    let rest = store.following(&fan, Some(&names[1]), 2).await.unwrap();
    let rest: Vec<_> = rest.iter().map(|r| r.user.clone()).collect();
    assert_eq!(rest, sorted[5..]);
}

async fn activities_are_idempotent_by_foreign_id(store: &dyn Store) {
    let actor = unique("actor");
    let mut first = activity(&actor, "2026-11-29T10:00:00.123456Z", Some("post:1"));
    first.target = Some("usr_73".into());
    first.extra = Some(
        serde_json::json!({"text": "héllo", "n": [1, 2]})
            .as_object()
            .unwrap()
            .clone(),
    );
    let (stored, created) = store.put_activity(&first).await.unwrap();
    assert!(created);
    assert_eq!(stored, first);
    assert_eq!(
        store.get_activity(&first.id).await.unwrap().as_ref(),
        Some(&first),
        "all fields round-trip"
    );

    let retry = activity(&actor, "2026-11-29T11:00:00Z", Some("post:1"));
    let (stored, created) = store.put_activity(&retry).await.unwrap();
    assert!(!created, "the same foreign_id stores nothing new");
    assert_eq!(stored, first, "and answers the activity first stored");
    assert_eq!(store.get_activity(&retry.id).await.unwrap(), None);

    let other = activity(&actor, "2026-11-29T12:00:00Z", None);
    let third = activity(&actor, "2026-11-29T09:00:00Z", Some("post:2"));
    assert!(store.put_activity(&other).await.unwrap().1);
    assert!(store.put_activity(&third).await.unwrap().1);
    let feed = store
        .user_feed(&actor, IdRange::default(), 10)
        .await
        .unwrap();
    let ids: Vec<_> = feed.iter().map(|a| a.id.as_str()).collect();
    assert_eq!(
        ids,
        [other.id.as_str(), first.id.as_str(), third.id.as_str()],
        "newest first"
    );
    let older = store
        .user_feed(
            &actor,
            IdRange {
                before: Some(&first.id),
                not_before: None,
            },
            10,
        )
        .await
        .unwrap();
    assert_eq!(older, vec![third.clone()]);

    store.delete_activity(&first).await.unwrap();
    assert_eq!(store.get_activity(&first.id).await.unwrap(), None);
    assert_eq!(
        store
            .user_feed(&actor, IdRange::default(), 10)
            .await
            .unwrap()
            .len(),
        2
    );
    let reused = activity(&actor, "2026-11-29T13:00:00Z", Some("post:1"));
    assert!(
        store.put_activity(&reused).await.unwrap().1,
        "a deleted activity's foreign_id may be used again"
    );
}

async fn timelines_are_sorted_sliced_and_idempotent(store: &dyn Store) {
    let (owner, other_owner, actor) = (unique("reader"), unique("reader"), unique("actor"));
    let acts: Vec<Activity> = (0..6)
        .map(|i| activity(&actor, &format!("2026-11-2{}T10:00:00Z", i + 1), None))
        .collect();
    let entries: Vec<TimelineEntry> = acts
        .iter()
        .map(|a| TimelineEntry {
            owner: owner.clone(),
            activity: a.clone(),
        })
        .collect();
    store.insert_timeline(&entries).await.unwrap();
    store.insert_timeline(&entries[..2]).await.unwrap();
    store
        .insert_timeline(&[TimelineEntry {
            owner: other_owner.clone(),
            activity: acts[0].clone(),
        }])
        .await
        .unwrap();

    let all = store
        .timeline(&owner, IdRange::default(), 100)
        .await
        .unwrap();
    let expected: Vec<Activity> = acts.iter().rev().cloned().collect();
    assert_eq!(all, expected, "each row once, newest first");
    let page = store
        .timeline(
            &owner,
            IdRange {
                before: Some(&acts[4].id),
                not_before: None,
            },
            2,
        )
        .await
        .unwrap();
    assert_eq!(page, vec![acts[3].clone(), acts[2].clone()]);
    let day = ActivityId::floor(acts[2].time);
    let bounded = store
        .timeline(
            &owner,
            IdRange {
                before: Some(&acts[4].id),
                not_before: Some(&day),
            },
            10,
        )
        .await
        .unwrap();
    assert_eq!(bounded, vec![acts[3].clone(), acts[2].clone()]);

    let rows = vec![
        (owner.clone(), acts[5].id.clone()),
        (owner.clone(), "0000000000000000ffffffffffffffff".to_owned()),
    ];
    store.delete_timeline(&rows).await.unwrap();
    store.delete_timeline(&rows).await.unwrap();
    let left = store
        .timeline(&owner, IdRange::default(), 100)
        .await
        .unwrap();
    assert_eq!(left.len(), 5);
    assert!(left.iter().all(|a| a.id != acts[5].id));
    assert_eq!(
        store
            .timeline(&other_owner, IdRange::default(), 100)
            .await
            .unwrap(),
        vec![acts[0].clone()]
    );
}

async fn timelines_are_looked_up_counted_and_trimmed(store: &dyn Store) {
    let owner = unique("reader");
    let acts: Vec<Activity> = (0..6)
        .map(|i| activity("star", &format!("2026-11-0{}T10:00:00Z", i + 1), None))
        .collect();
    let entries: Vec<TimelineEntry> = acts
        .iter()
        .map(|a| TimelineEntry {
            owner: owner.clone(),
            activity: a.clone(),
        })
        .collect();
    store.insert_timeline(&entries).await.unwrap();
    let newest_first: Vec<&str> = acts.iter().rev().map(|a| a.id.as_str()).collect();
    for (position, id) in newest_first.iter().enumerate() {
        assert_eq!(
            store
                .timeline_id_at(&owner, position)
                .await
                .unwrap()
                .as_deref(),
            Some(*id),
            "the id at position {position}"
        );
    }
    assert_eq!(store.timeline_id_at(&owner, 6).await.unwrap(), None);

    let lookups = vec![
        (owner.clone(), acts[1].id.clone()),
        (owner.clone(), ActivityId::floor(Utc::now())),
        (unique("nobody"), acts[1].id.clone()),
    ];
    let found = store.timeline_entries(&lookups).await.unwrap();
    assert_eq!(found, [entries[1].clone()], "only the rows that exist");

    // Keep the newest 4: everything from the 5th newest down goes, in one delete.
    store.trim_timeline(&owner, newest_first[4]).await.unwrap();
    let left: Vec<String> = store
        .timeline(&owner, IdRange::default(), 10)
        .await
        .unwrap()
        .into_iter()
        .map(|a| a.id)
        .collect();
    assert_eq!(left, newest_first[..4]);
}

async fn groups_keep_the_latest_mark_and_the_latest_scan(store: &dyn Store) {
    let owner = unique("reader");
    let feed = "verb_day";
    let group = |day: i32, key: &str| GroupRef {
        owner: owner.clone(),
        feed: feed.to_owned(),
        day,
        key: key.to_owned(),
    };
    let summary = |id: &str, json: &str| GroupSummary {
        newest_id: id.to_owned(),
        json: json.to_owned(),
        actors_newest: format!("[\"{id}\"]"),
    };
    // Marks: a group without a row gets one, stale; a group keeps its latest mark.
    store
        .mark_groups(
            &[group(20, "like"), group(20, "post"), group(21, "post")],
            1_000,
        )
        .await
        .unwrap();
    store
        .mark_groups(&[group(20, "post")], 3_000)
        .await
        .unwrap();
    store
        .mark_groups(&[group(20, "post")], 2_000)
        .await
        .unwrap();
    let rows = all_groups(store, &owner).await;
    let keys: Vec<(i32, &str)> = rows.iter().map(|g| (g.day, g.key.as_str())).collect();
    assert_eq!(
        keys,
        [(21, "post"), (20, "like"), (20, "post")],
        "newest day first"
    );
    assert!(rows.iter().all(StoredGroup::is_stale));
    assert_eq!(rows[2].dirty_us, 3_000, "the latest mark wins");
    assert_eq!(rows[2].summary, None);

    // A scan stored as of 2,500 does not clear the mark of 3,000; one as of 3,500 does.
    let write = |key: &str, s: Option<GroupSummary>| GroupWrite {
        key: key.to_owned(),
        summary: s,
    };
    store
        .put_groups(
            &owner,
            feed,
            20,
            &[write("post", Some(summary("a1", "{\"n\":1}")))],
            2_500,
        )
        .await
        .unwrap();
    let post = all_groups(store, &owner).await.remove(2);
    assert_eq!(post.summary, Some(summary("a1", "{\"n\":1}")));
    assert!(post.is_stale(), "marked after the scan began: still stale");
    store
        .put_groups(
            &owner,
            feed,
            20,
            &[write("post", Some(summary("a2", "{\"n\":2}")))],
            3_500,
        )
        .await
        .unwrap();
    // An earlier scan finishing late does not replace a later one.
    store
        .put_groups(
            &owner,
            feed,
            20,
            &[write("post", Some(summary("a1", "{\"n\":1}")))],
            3_200,
        )
        .await
        .unwrap();
    let post = all_groups(store, &owner).await.remove(2);
    assert_eq!(post.summary, Some(summary("a2", "{\"n\":2}")));
    assert_eq!(post.clean_us, 3_500);
    assert!(!post.is_stale());

    // Emptied: the row stays, without a summary, and an earlier scan cannot bring it back.
    store
        .put_groups(&owner, feed, 20, &[write("post", None)], 4_000)
        .await
        .unwrap();
    store
        .put_groups(
            &owner,
            feed,
            20,
            &[write("post", Some(summary("a1", "{}")))],
            3_900,
        )
        .await
        .unwrap();
    let post = all_groups(store, &owner).await.remove(2);
    assert_eq!((post.is_stale(), post.summary), (false, None));

    // Day ranges, and dropping the days before one: a later mark survives the drop.
    let day20 = DayRange {
        max: Some(20),
        min: Some(20),
    };
    let rows = store.groups(&owner, feed, day20, 100).await.unwrap();
    assert_eq!(rows.len(), 2);
    store
        .mark_groups(&[group(19, "post")], 9_000)
        .await
        .unwrap();
    store.drop_groups(&owner, feed, 21, 5_000).await.unwrap();
    let keys: Vec<(i32, String)> = all_groups(store, &owner)
        .await
        .into_iter()
        .map(|g| (g.day, g.key))
        .collect();
    assert_eq!(keys, [(21, "post".to_owned()), (19, "post".to_owned())]);
    assert_eq!(
        store
            .groups(&owner, "verb_actor_day", DayRange::default(), 100)
            .await
            .unwrap(),
        [],
        "each feed keeps its own groups"
    );
}

async fn all_groups(store: &dyn Store, owner: &str) -> Vec<StoredGroup> {
    store
        .groups(owner, "verb_day", DayRange::default(), 100)
        .await
        .unwrap()
}

async fn pulled_authors_activities_and_followees_are_kept(store: &dyn Store) {
    let star = unique("star");
    assert!(!store.is_pulled_author(&star).await.unwrap());
    store.mark_pulled_author(&star).await.unwrap();
    store.mark_pulled_author(&star).await.unwrap();
    assert!(
        store.is_pulled_author(&star).await.unwrap(),
        "marked, idempotently"
    );

    let acts: Vec<Activity> = (1..=4)
        .map(|i| activity(&star, &format!("2026-11-0{i}T10:00:00Z"), None))
        .collect();
    for a in &acts {
        store.put_pulled(a).await.unwrap();
    }
    store.put_pulled(&acts[0]).await.unwrap();
    assert_eq!(
        store.get_pulled(&star, &acts[2].id).await.unwrap().as_ref(),
        Some(&acts[2])
    );
    let ids = |list: Vec<Activity>| list.into_iter().map(|a| a.id).collect::<Vec<_>>();
    let range = IdRange {
        before: Some(&acts[3].id),
        not_before: Some(&acts[1].id),
    };
    assert_eq!(
        ids(store.pulled(&star, range, 10).await.unwrap()),
        [acts[2].id.clone(), acts[1].id.clone()],
        "newest first, within the range"
    );
    store.delete_pulled(&star, &acts[2].id).await.unwrap();
    assert_eq!(store.get_pulled(&star, &acts[2].id).await.unwrap(), None);
    assert_eq!(
        store
            .pulled(&star, IdRange::default(), 10)
            .await
            .unwrap()
            .len(),
        3
    );

    let fan = unique("fan");
    assert_eq!(store.pulled_followees(&fan).await.unwrap(), []);
    store
        .put_pulled_followee(&fan, &star, Some(&acts[1].id))
        .await
        .unwrap();
    store
        .put_pulled_followee(&fan, "another", None)
        .await
        .unwrap();
    store.put_pulled_followee(&fan, &star, None).await.unwrap();
    let mut followees = store.pulled_followees(&fan).await.unwrap();
    followees.sort_by(|a, b| a.followee.cmp(&b.followee));
    let mut expected = vec![
        PulledFollowee {
            followee: star.clone(),
            floor: None,
        },
        PulledFollowee {
            followee: "another".into(),
            floor: None,
        },
    ];
    expected.sort_by(|a, b| a.followee.cmp(&b.followee));
    assert_eq!(followees, expected, "the latest floor wins");
    store.delete_pulled_followee(&fan, "another").await.unwrap();
    assert_eq!(store.pulled_followees(&fan).await.unwrap().len(), 1);
}

async fn updates_compare_and_set_and_rewrite_only_what_they_name(store: &dyn Store) {
    let actor = unique("usr_upd");
    let mut a = activity(&actor, "2026-11-30T10:00:00Z", None);
    a.target = Some("usr_t".into());
    a.extra = serde_json::json!({"k": 1}).as_object().cloned();
    store.put_activity(&a).await.unwrap();
    assert_eq!(
        store.get_versioned(&a.id).await.unwrap(),
        Some((a.clone(), 0))
    );
    let owner = unique("usr_reader");
    let row = TimelineEntry {
        owner: owner.clone(),
        activity: a.clone(),
    };
    store
        .insert_timeline(std::slice::from_ref(&row))
        .await
        .unwrap();

    // Removing both fields: the copies lose them too.
    let mut b = a.clone();
    (b.target, b.extra) = (None, None);
    assert!(store.update_activity(&b, 0).await.unwrap());
    assert_eq!(
        store.get_versioned(&a.id).await.unwrap(),
        Some((b.clone(), 1))
    );
    let own = store
        .user_feed(&actor, IdRange::default(), 10)
        .await
        .unwrap();
    assert_eq!(own, [b.clone()], "the actor's feed row at once");
    // A stale version is refused and changes nothing.
    let mut c = a.clone();
    c.extra = serde_json::json!({"k": 2}).as_object().cloned();
    assert!(!store.update_activity(&c, 0).await.unwrap());
    assert_eq!(
        store.get_versioned(&a.id).await.unwrap(),
        Some((b.clone(), 1))
    );
    assert!(store.update_activity(&c, 1).await.unwrap());
    assert_eq!(
        store.get_versioned(&a.id).await.unwrap(),
        Some((c.clone(), 2))
    );

    let rewritten = TimelineEntry {
        owner: owner.clone(),
        activity: c.clone(),
    };
    store
        .rewrite_timeline(std::slice::from_ref(&rewritten))
        .await
        .unwrap();
    let rows = [(owner.clone(), a.id.clone())];
    assert_eq!(store.timeline_entries(&rows).await.unwrap(), [rewritten]);

    // A deleted activity takes no update, and none brings it back.
    store.delete_activity(&c).await.unwrap();
    assert!(!store.update_activity(&b, 2).await.unwrap());
    assert_eq!(store.get_versioned(&a.id).await.unwrap(), None);
    assert_eq!(store.get_activity(&a.id).await.unwrap(), None);
    store.rewrite_own_copies(&c, false).await.unwrap();
    store.remove_own_copies(&c).await.unwrap();
    assert_eq!(
        store
            .user_feed(&actor, IdRange::default(), 10)
            .await
            .unwrap(),
        []
    );
}

/// Every page of a whole-table scan, pages of `page` rows.
async fn scan_all<T, F, Fut>(mut next_page: F) -> Vec<T>
where
    F: FnMut(Option<String>) -> Fut,
    Fut: std::future::Future<Output = feeds::store::ScanPage<T>>,
{
    let (mut out, mut from) = (Vec::new(), None);
    loop {
        let page = next_page(from).await;
        out.extend(page.items);
        match page.next {
            Some(next) => from = Some(next),
            None => return out,
        }
    }
}

/// Counts of `what`, summed over pages of 2 rows.
async fn census(store: &dyn Store, what: Census) -> u64 {
    let (mut total, mut from) = (0, None::<String>);
    loop {
        let (n, next) = store.census(what, from.as_deref(), 2).await.unwrap();
        total += n;
        match next {
            Some(next) => from = Some(next),
            None => return total,
        }
    }
}

async fn scans_walk_whole_tables_page_by_page(store: &dyn Store) {
    let star = unique("scanned");
    let fans: Vec<String> = (0..5).map(|i| format!("{star}_fan{i}")).collect();
    for fan in &fans {
        let edge = FollowEdge {
            follower: fan.clone(),
            following: star.clone(),
            created_at: Utc::now(),
        };
        store.follow(&edge).await.unwrap();
    }
    store.unfollow(&fans[4], &star).await.unwrap();
    let actor = unique("scanned_actor");
    let mut posted = Vec::new();
    for i in 0..3 {
        let a = activity(&actor, &format!("2026-11-29T10:00:0{i}Z"), None);
        store.put_activity(&a).await.unwrap();
        posted.push(a);
    }

    for side in [EdgeSide::Following, EdgeSide::Followers] {
        let edges =
            scan_all(
                |from| async move { store.scan_edges(side, from.as_deref(), 2).await.unwrap() },
            )
            .await;
        for fan in &fans[..4] {
            let found = edges.iter().filter(|e| e.0 == *fan && e.1 == star).count();
            assert_eq!(found, 1, "{fan} -> {star} once on the {} side", side.name());
        }
        if side == EdgeSide::Followers {
            assert!(
                !edges.iter().any(|e| e.0 == fans[4]),
                "the unfollowed edge's copy is gone"
            );
            assert_eq!(
                census(store, Census::FollowerRows).await,
                edges.len() as u64
            );
        }
    }
    assert_eq!(
        census(store, Census::Edges).await,
        census(store, Census::FollowerRows).await,
        "both sides agree"
    );
    for fan in &fans {
        let check = store.check_edge(fan, &star, false).await.unwrap();
        assert_eq!(check, EdgeCheck::InStep, "{fan}");
    }

    let activities =
        scan_all(|from| async move { store.scan_activities(from.as_deref(), 2).await.unwrap() })
            .await;
    for a in &posted {
        let found: Vec<_> = activities.iter().filter(|s| s.id == a.id).collect();
        assert_eq!(found, [a], "each activity once, whole");
    }
    assert_eq!(
        census(store, Census::Activities).await,
        activities.len() as u64
    );
    // Counted as the fan-out's recount counts them (Cassandra keeps no count before one).
    let now = Utc::now().timestamp_micros();
    store
        .recount(&actor, feeds::store::Counted::Activities, now)
        .await
        .unwrap();
    assert_eq!(store.user_counts(&actor).await.unwrap().activities, 3);
    assert!(census(store, Census::Users).await >= 1);
}

async fn connections_are_recorded_by_user_by_id_and_by_pulled_author(store: &dyn Store) {
    let conn = |user: &str, id: &str| Connection {
        user: user.to_owned(),
        id: id.to_owned(),
    };
    let (ann, bob, nobody) = (unique("ann"), unique("bob"), unique("nobody"));
    let (a1, a2, b1) = (
        conn(&ann, &unique("A1=")),
        conn(&ann, &unique("A2+/")),
        conn(&bob, &unique("B1=")),
    );
    for c in [&a1, &a2, &b1, &a1] {
        store.put_connection(c).await.unwrap();
    }
    let sorted = |mut list: Vec<Connection>| {
        list.sort();
        list
    };
    assert_eq!(
        sorted(
            store
                .connections(&[ann.clone(), nobody.clone(), bob.clone()])
                .await
                .unwrap()
        ),
        sorted(vec![a1.clone(), a2.clone(), b1.clone()]),
        "each recorded once, whatever the order of the users asked"
    );
    assert_eq!(
        store
            .connections(std::slice::from_ref(&nobody))
            .await
            .unwrap(),
        []
    );
    assert_eq!(store.connections(&[]).await.unwrap(), []);
    // More users than one `IN` list takes.
    let many: Vec<String> = (0..150)
        .map(|i| format!("{nobody}_{i}"))
        .chain([bob.clone()])
        .collect();
    assert_eq!(store.connections(&many).await.unwrap(), vec![b1.clone()]);
    assert_eq!(
        store.connection_user(&a2.id).await.unwrap().as_deref(),
        Some(ann.as_str())
    );
    assert_eq!(store.connection_user(&unique("none")).await.unwrap(), None);

    let star = unique("star");
    assert_eq!(store.pulled_connections(&star).await.unwrap(), []);
    store
        .put_pulled_connections(&star, &[a1.clone(), b1.clone()])
        .await
        .unwrap();
    store
        .put_pulled_connections(&star, std::slice::from_ref(&a1))
        .await
        .unwrap();
    assert_eq!(
        sorted(store.pulled_connections(&star).await.unwrap()),
        sorted(vec![a1.clone(), b1.clone()])
    );
    assert_eq!(
        store.pulled_connections(&unique("other")).await.unwrap(),
        []
    );
    store
        .delete_pulled_connections(&star, std::slice::from_ref(&a1))
        .await
        .unwrap();
    assert_eq!(store.pulled_connections(&star).await.unwrap(), vec![b1]);

    store.delete_connection(&a1).await.unwrap();
    store.delete_connection(&a1).await.unwrap();
    assert_eq!(
        store.connections(std::slice::from_ref(&ann)).await.unwrap(),
        vec![a2.clone()]
    );
    assert_eq!(store.connection_user(&a1.id).await.unwrap(), None);
    assert_eq!(
        store.connection_user(&a2.id).await.unwrap().as_deref(),
        Some(ann.as_str())
    );
}
