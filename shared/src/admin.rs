//! The operator's tools behind `feeds-server admin`: counts of what the store and the queue hold,
//! the repair of follow edges whose two rows a process left apart, and the rebuild of one user's
//! feeds from their sources. Each runs beside the live service: it reads the authoritative rows
//! again right before a write, and writes only what the service itself would write, so a request
//! or a fan-out job racing it still ends as it would have alone. Progress goes to a callback
//! (standard error in the binary); what changed is answered.

use std::collections::{BTreeSet, HashMap, HashSet};

use futures::stream::{self, StreamExt, TryStreamExt};

use crate::aggregate::{self, GroupPosition, Grouping};
use crate::fanout::FanoutSettings;
use crate::model::Activity;
use crate::notify;
use crate::queue::{FanoutJob, Queue, QueueAdmin, QueueDepths, QueueError};
use crate::store::{
    Census, Counted, DayRange, EdgeCheck, EdgeSide, GroupRef, IdRange, Store, StoreError,
    TimelineEntry,
};

#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("store: {0}")]
    Store(#[from] StoreError),
    #[error("queue: {0}")]
    Queue(#[from] QueueError),
}

pub type Result<T> = std::result::Result<T, AdminError>;

/// Where progress lines go.
pub type Progress<'a> = &'a (dyn Fn(&str) + Sync);

/// Rows a scan reads per page.
pub const SCAN_PAGE: usize = 1000;

/// Store reads in flight at once.
const CONCURRENCY: usize = 16;

/// Edge checks (two single-row reads each) in flight at once: a scan of every edge is most of
/// what `reconcile-follows` costs.
const CHECK_CONCURRENCY: usize = 64;

/// A progress line every this many pages of a scan.
const PROGRESS_EVERY: u64 = 10;

// ---------------------------------------------------------------------------------------------
// stats

/// What `admin stats` reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Stats {
    pub queue: QueueDepths,
    /// Users with a follower, a followee or an activity, as last counted.
    pub users: u64,
    /// Follow edges (the `following` side).
    pub edges: u64,
    /// Rows of the `followers` side: equal to `edges` unless some need `reconcile-follows`.
    pub follower_rows: u64,
    pub activities: u64,
}

/// Counts everything [`Stats`] holds; a store that must scan reports its pages to `progress`.
pub async fn stats(
    store: &dyn Store,
    queue: &dyn QueueAdmin,
    progress: Progress<'_>,
) -> Result<Stats> {
    let queue = queue.depths().await?;
    Ok(Stats {
        queue,
        users: census(store, Census::Users, "users", progress).await?,
        edges: census(store, Census::Edges, "edges", progress).await?,
        follower_rows: census(store, Census::FollowerRows, "followers rows", progress).await?,
        activities: census(store, Census::Activities, "activities", progress).await?,
    })
}

async fn census(
    store: &dyn Store,
    what: Census,
    name: &str,
    progress: Progress<'_>,
) -> Result<u64> {
    let (mut total, mut pages, mut from) = (0, 0u64, None::<String>);
    loop {
        let (n, next) = store.census(what, from.as_deref(), SCAN_PAGE).await?;
        total += n;
        pages += 1;
        match next {
            Some(next) => {
                if pages % PROGRESS_EVERY == 0 {
                    progress(&format!("counting {name}: {total} after {pages} pages"));
                }
                from = Some(next);
            }
            None => {
                progress(&format!("counted {name}: {total}"));
                return Ok(total);
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// reconcile-follows

/// An edge whose `followers` row was out of step, as `(follower, followee)`.
pub type Edge = (String, String);

/// What `admin reconcile-follows` found (and, unless it was a dry run, repaired).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Reconciled {
    /// Rows scanned, both sides together.
    pub scanned: u64,
    /// Edges whose `followers` row was missing (or carried another time): written.
    pub added: Vec<Edge>,
    /// `followers` rows of edges that do not exist: deleted.
    pub removed: Vec<Edge>,
}

/// Walks the `following` side (the edges), then the `followers` side (where a row without its
/// edge is found), and brings each `followers` row in line with its edge through
/// [`Store::check_edge`]: safe while the service runs, since that reads the edge again right
/// before writing, and writes as `follow` and `unfollow` do. For each repaired edge it recounts
/// both users and enqueues what the interrupted follow or unfollow would have (its backfill or
/// purge, and the recounts). `dry_run` reads only.
pub async fn reconcile_follows(
    store: &dyn Store,
    queue: &dyn Queue,
    dry_run: bool,
    progress: Progress<'_>,
) -> Result<Reconciled> {
    let mut out = Reconciled::default();
    let mut seen: HashSet<Edge> = HashSet::new();
    for side in [EdgeSide::Following, EdgeSide::Followers] {
        let (mut from, mut pages) = (None::<String>, 0u64);
        loop {
            let page = store.scan_edges(side, from.as_deref(), SCAN_PAGE).await?;
            pages += 1;
            out.scanned += page.items.len() as u64;
            let checks: Vec<(Edge, EdgeCheck)> = stream::iter(page.items)
                .map(|(follower, followee)| async move {
                    let check = store.check_edge(&follower, &followee, !dry_run).await?;
                    Ok::<_, StoreError>(((follower, followee), check))
                })
                .buffered(CHECK_CONCURRENCY)
                .try_collect()
                .await?;
            for (edge, check) in checks {
                if check == EdgeCheck::InStep || !seen.insert(edge.clone()) {
                    continue;
                }
                let follow = check == EdgeCheck::FollowerRowMissing;
                progress(&format!(
                    "{} followers row of {} -> {}",
                    match (follow, dry_run) {
                        (true, true) => "missing",
                        (true, false) => "added the missing",
                        (false, true) => "stray",
                        (false, false) => "removed the stray",
                    },
                    edge.0,
                    edge.1
                ));
                if !dry_run {
                    repaired(store, queue, &edge, follow).await?;
                }
                match follow {
                    true => out.added.push(edge),
                    false => out.removed.push(edge),
                }
            }
            let changes = out.added.len() + out.removed.len();
            if page.next.is_none() || pages % PROGRESS_EVERY == 0 {
                progress(&format!(
                    "{} side: {} pages, {} rows scanned so far, {changes} edges out of step",
                    side.name(),
                    pages,
                    out.scanned
                ));
            }
            match page.next {
                Some(next) => from = Some(next),
                None => break,
            }
        }
    }
    Ok(out)
}

/// After an edge's `followers` row was repaired: both counts made exact now, and the jobs of the
/// follow or unfollow that stopped half way.
async fn repaired(store: &dyn Store, queue: &dyn Queue, edge: &Edge, follow: bool) -> Result<()> {
    let (follower, followee) = (edge.0.as_str(), edge.1.as_str());
    let now = aggregate::now_us();
    store.recount(followee, Counted::Followers, now).await?;
    store.recount(follower, Counted::Following, now).await?;
    queue
        .send(&FanoutJob::edge_changed(follower, followee, follow))
        .await?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// rebuild-feed

/// What a rebuild changed in one timeline (a flat feed, or a notification feed's rows).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct TimelineChanges {
    /// Rows it should hold and held, unchanged.
    pub kept: usize,
    pub added: usize,
    pub removed: usize,
    /// Rows whose activity changed since they were written.
    pub rewritten: usize,
}

/// What `admin rebuild-feed` did.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Rebuilt {
    pub flat: TimelineChanges,
    /// Groups of the aggregated feed, recomputed from the rebuilt timeline.
    pub aggregated_groups: usize,
    /// Pulled authors followed: their followee rows added and removed.
    pub pulled_added: usize,
    pub pulled_removed: usize,
    /// `None` when skipped.
    pub notifications: Option<TimelineChanges>,
    pub notification_groups: usize,
}

/// What to rebuild.
#[derive(Debug, Clone, Copy)]
pub struct RebuildOptions {
    /// Also the notification feed: a scan of every stored activity.
    pub notifications: bool,
    /// Compute what would change, and change nothing.
    pub dry_run: bool,
}

/// Rebuilds `user`'s feeds from their sources, as the fan-out would have written them:
///
/// - the flat feed (the timeline) holds the newest `max_length` activities of the users `user`
///   follows, from their own feeds, but the pulled ones (merged when read); rows of anything else
///   (users not followed, deleted activities, the oldest) go, rows of an updated activity are
///   rewritten; the pulled authors followed get their followee rows, the others lose theirs;
/// - the aggregated feed (the configured grouping) is recomputed from that timeline;
/// - the notification feed holds the newest `max_length` stored activities whose `to` names
///   `user` (found by a scan of every activity), its groups recomputed. Which groups were seen or
///   read is stored nowhere else, so it cannot be rebuilt: groups that keep activities keep their
///   marks, a group that comes back whole is unseen and unread (as when it was delivered), and a
///   group with nothing left loses its marks.
///
/// Running it again changes nothing. Safe beside the service: rows of a user followed during the
/// rebuild are left to that follow's backfill, and a user unfollowed during it gets a purge.
pub async fn rebuild_feed(
    store: &dyn Store,
    queue: &dyn Queue,
    settings: &FanoutSettings,
    user: &str,
    options: RebuildOptions,
    progress: Progress<'_>,
) -> Result<Rebuilt> {
    let mut out = Rebuilt::default();
    let max = settings.max_length;
    // The timeline first, then its sources: a row written after this read is not removed.
    let current = whole_timeline(store, user).await?;
    let followed = all_following(store, user).await?;
    progress(&format!(
        "{user}: {} rows in the flat feed, follows {} users",
        current.len(),
        followed.len()
    ));
    let pulled_rows: HashSet<String> = store
        .pulled_followees(user)
        .await?
        .into_iter()
        .map(|p| p.followee)
        .collect();
    let mut sources: Vec<Source> = stream::iter(followed.iter())
        .map(|f| source(store, f, max))
        .buffered(CONCURRENCY)
        .try_collect()
        .await?;
    for s in &mut sources {
        s.followee_row = pulled_rows.contains(&s.author);
    }
    let mut wanted: Vec<Activity> = sources.iter().flat_map(|s| s.copied.clone()).collect();
    newest(&mut wanted, max);
    let followed: HashSet<&str> = followed.iter().map(String::as_str).collect();
    let diff = Diff::new(&current, wanted);
    // A row of someone not followed when the edges were read, who is followed now, is left to
    // that follow's backfill.
    let mut remove = Vec::new();
    for a in &diff.remove {
        if followed.contains(a.actor.as_str()) || !store.is_following(user, &a.actor).await? {
            remove.push(a.clone());
        }
    }
    out.flat = diff.changes(remove.len());
    out.pulled_added = sources
        .iter()
        .filter(|s| s.pulled && !s.followee_row)
        .count();
    let stray_pulled: Vec<String> = pulled_rows
        .into_iter()
        .filter(|f| !followed.contains(f.as_str()))
        .collect();
    out.pulled_removed = stray_pulled.len();
    if options.dry_run {
        out.aggregated_groups = settings
            .grouping
            .groups_of(diff.result.iter().map(|a| (user, a)))
            .len();
    } else {
        let grouping = settings.grouping;
        let owner = user;
        apply(store, grouping, owner, &remove, &diff.add, &diff.rewrite).await?;
        for s in sources.iter().filter(|s| s.pulled && !s.followee_row) {
            store
                .put_pulled_followee(user, &s.author, s.floor.as_deref())
                .await?;
        }
        for f in &stray_pulled {
            if !store.is_following(user, f).await? {
                store.delete_pulled_followee(user, f).await?;
            }
        }
        // What the edges did meanwhile, as the fan-out's backfill and purge check it.
        let mut jobs = Vec::new();
        let added_actors: BTreeSet<&str> = diff.add.iter().map(|a| a.actor.as_str()).collect();
        for actor in added_actors {
            if !store.is_following(user, actor).await? {
                jobs.push(FanoutJob::Purge {
                    follower: user.to_owned(),
                    followee: actor.to_owned(),
                    before: None,
                });
            }
        }
        let removed_actors: BTreeSet<&str> = remove
            .iter()
            .map(|a| a.actor.as_str())
            .chain(stray_pulled.iter().map(String::as_str))
            .filter(|a| !followed.contains(a))
            .collect();
        for actor in removed_actors {
            if store.is_following(user, actor).await? {
                jobs.push(FanoutJob::Backfill {
                    follower: user.to_owned(),
                    followee: actor.to_owned(),
                });
            }
        }
        queue.send(&jobs).await?;
        settle(store, grouping, owner, &diff.add, &diff.rewrite).await?;
        regroup(store, grouping, owner, &current, &diff.result).await?;
        out.aggregated_groups = walk_groups(store, grouping, owner, max).await?;
    }
    progress(&format!(
        "{user}: flat feed {:?}, {} aggregated groups",
        out.flat, out.aggregated_groups
    ));
    if options.notifications {
        let (changes, groups) =
            rebuild_notifications(store, settings, user, options.dry_run, progress).await?;
        out.notifications = Some(changes);
        out.notification_groups = groups;
    }
    Ok(out)
}

/// One followed user: what of its own feed a follower's timeline holds, and whether it is a
/// pulled author (and the follower has its followee row).
struct Source {
    author: String,
    copied: Vec<Activity>,
    pulled: bool,
    followee_row: bool,
    /// The oldest pulled activity the follower sees, as a backfill of `max` would set it.
    floor: Option<String>,
}

async fn source(store: &dyn Store, author: &str, max: usize) -> Result<Source> {
    let recent = store.user_feed(author, IdRange::default(), max).await?;
    let pulled = store.is_pulled_author(author).await?;
    let mut source = Source {
        author: author.to_owned(),
        copied: Vec::new(),
        pulled,
        followee_row: false,
        floor: (recent.len() == max)
            .then(|| recent.last().map(|a| a.id.clone()))
            .flatten(),
    };
    let pulled_ids: HashSet<String> = match (pulled, recent.last()) {
        (true, Some(oldest)) => {
            let range = IdRange {
                before: None,
                not_before: Some(&oldest.id),
            };
            let ids = store.pulled(author, range, max).await?;
            ids.into_iter().map(|a| a.id).collect()
        }
        _ => HashSet::new(),
    };
    source.copied = recent
        .into_iter()
        .filter(|a| !pulled_ids.contains(&a.id))
        .collect();
    Ok(source)
}

/// The notification feed's part of [`rebuild_feed`]: its rows as for the flat feed, then its
/// marks; answers the changes and how many groups it holds.
async fn rebuild_notifications(
    store: &dyn Store,
    settings: &FanoutSettings,
    user: &str,
    dry_run: bool,
    progress: Progress<'_>,
) -> Result<(TimelineChanges, usize)> {
    let owner = notify::feed_owner(user);
    let max = settings.max_length;
    let current = whole_timeline(store, &owner).await?;
    // No table lists what names a user: every activity is read.
    let (mut wanted, mut from, mut pages, mut scanned) = (Vec::new(), None::<String>, 0u64, 0u64);
    loop {
        let page = store.scan_activities(from.as_deref(), SCAN_PAGE).await?;
        pages += 1;
        scanned += page.items.len() as u64;
        wanted.extend(
            page.items
                .into_iter()
                .filter(|a| notify::recipients(a).iter().any(|r| r == user)),
        );
        match page.next {
            Some(next) => {
                if pages % PROGRESS_EVERY == 0 {
                    progress(&format!(
                        "{user}: {scanned} activities scanned for its notifications"
                    ));
                }
                from = Some(next);
            }
            None => break,
        }
    }
    progress(&format!(
        "{user}: {scanned} activities scanned, {} name it",
        wanted.len()
    ));
    newest(&mut wanted, max);
    let diff = Diff::new(&current, wanted);
    let changes = diff.changes(diff.remove.len());
    let grouping = notify::GROUPING;
    if dry_run {
        let groups = grouping.groups_of(diff.result.iter().map(|a| (owner.as_str(), a)));
        return Ok((changes, groups.len()));
    }
    // A group that comes back whole is unseen and unread, as its delivery made it; marked before
    // its rows are written, as a delivery does.
    let kept_groups: HashSet<String> = diff.kept_rows().map(notify::group_of).collect();
    let back: BTreeSet<String> = diff
        .add
        .iter()
        .map(notify::group_of)
        .filter(|g| !kept_groups.contains(g))
        .collect();
    let back: Vec<String> = back.into_iter().collect();
    store
        .add_notification_marks(&owner, &back, aggregate::now_us())
        .await?;
    apply(
        store,
        grouping,
        &owner,
        &diff.remove,
        &diff.add,
        &diff.rewrite,
    )
    .await?;
    settle(store, grouping, &owner, &diff.add, &diff.rewrite).await?;
    regroup(store, grouping, &owner, &current, &diff.result).await?;
    // Marks of groups with nothing left go: below the oldest day kept, and on every day marked.
    let marks = store.notification_marks(&owner).await?;
    let mut days: BTreeSet<i32> = marks
        .unseen
        .iter()
        .chain(&marks.unread)
        .filter_map(|k| notify::day_of_group(k))
        .collect();
    let oldest = diff.result.last().and_then(|a| aggregate::day_of_id(&a.id));
    if let Some(oldest) = oldest {
        notify::prune(store, &owner, oldest, true).await?;
        days.retain(|d| *d > oldest);
    }
    for day in days {
        notify::prune(store, &owner, day, false).await?;
    }
    let groups = walk_groups(store, grouping, &owner, usize::MAX).await?;
    Ok((changes, groups))
}

/// A timeline as it is, against what it should hold.
struct Diff<'a> {
    current: &'a [Activity],
    /// What it should hold, newest first.
    result: Vec<Activity>,
    remove: Vec<Activity>,
    add: Vec<Activity>,
    rewrite: Vec<Activity>,
}

impl<'a> Diff<'a> {
    fn new(current: &'a [Activity], wanted: Vec<Activity>) -> Self {
        let by_id: HashMap<&str, &Activity> = wanted.iter().map(|a| (a.id.as_str(), a)).collect();
        let held: HashSet<&str> = current.iter().map(|a| a.id.as_str()).collect();
        let remove = current
            .iter()
            .filter(|a| !by_id.contains_key(a.id.as_str()))
            .cloned()
            .collect();
        let rewrite = current
            .iter()
            .filter_map(|a| by_id.get(a.id.as_str()).filter(|w| **w != a))
            .map(|w| (*w).clone())
            .collect();
        let add = wanted
            .iter()
            .filter(|a| !held.contains(a.id.as_str()))
            .cloned()
            .collect();
        Diff {
            current,
            result: wanted,
            remove,
            add,
            rewrite,
        }
    }

    /// Rows held that stay.
    fn kept_rows(&self) -> impl Iterator<Item = &Activity> {
        let gone: HashSet<&str> = self.remove.iter().map(|a| a.id.as_str()).collect();
        self.current
            .iter()
            .filter(move |a| !gone.contains(a.id.as_str()))
    }

    /// The changes, `removed` of the rows to remove being removed.
    fn changes(&self, removed: usize) -> TimelineChanges {
        TimelineChanges {
            kept: self.current.len() - removed - self.rewrite.len(),
            added: self.add.len(),
            removed,
            rewritten: self.rewrite.len(),
        }
    }
}

fn entries(owner: &str, activities: &[Activity]) -> Vec<TimelineEntry> {
    activities
        .iter()
        .map(|a| TimelineEntry {
            owner: owner.to_owned(),
            activity: a.clone(),
        })
        .collect()
}

/// Writes the difference, each write with its group marks, as the fan-out writes rows.
async fn apply(
    store: &dyn Store,
    grouping: Grouping,
    owner: &str,
    remove: &[Activity],
    add: &[Activity],
    rewrite: &[Activity],
) -> Result<()> {
    aggregate::remove_rows(store, grouping, &entries(owner, remove)).await?;
    aggregate::insert_rows(store, grouping, &entries(owner, add)).await?;
    aggregate::rewrite_rows(store, grouping, &entries(owner, rewrite)).await?;
    Ok(())
}

/// Reads the activities just written again, as the fan-out's update does: one deleted meanwhile
/// leaves the timeline, one updated meanwhile is rewritten, until they hold still.
async fn settle(
    store: &dyn Store,
    grouping: Grouping,
    owner: &str,
    added: &[Activity],
    rewritten: &[Activity],
) -> Result<()> {
    let mut written: Vec<Activity> = added.iter().chain(rewritten).cloned().collect();
    while !written.is_empty() {
        let now: Vec<Option<Activity>> = stream::iter(written.iter())
            .map(|a| store.get_activity(&a.id))
            .buffered(CONCURRENCY)
            .try_collect()
            .await?;
        let (mut gone, mut changed) = (Vec::new(), Vec::new());
        for (was, now) in written.into_iter().zip(now) {
            match now {
                None => gone.push(was),
                Some(now) if now != was => changed.push(now),
                Some(_) => {}
            }
        }
        // A row rewritten after its activity was deleted may be back: taken away again.
        aggregate::remove_rows(store, grouping, &entries(owner, &gone)).await?;
        aggregate::rewrite_rows(store, grouping, &entries(owner, &changed)).await?;
        written = changed;
    }
    Ok(())
}

/// Marks every group the timeline held or holds, so that the next read recomputes each from the
/// rows, and drops the groups of days older than any row kept.
async fn regroup(
    store: &dyn Store,
    grouping: Grouping,
    owner: &str,
    before: &[Activity],
    after: &[Activity],
) -> Result<()> {
    let feed = grouping.feed();
    let now = aggregate::now_us();
    let oldest = after.last().and_then(|a| aggregate::day_of_id(&a.id));
    store
        .drop_groups(owner, feed, oldest.unwrap_or(i32::MAX), now)
        .await?;
    let stored = store
        .groups(owner, feed, DayRange::default(), usize::MAX)
        .await?;
    let mut groups: Vec<GroupRef> =
        grouping.groups_of(before.iter().chain(after).map(|a| (owner, a)));
    groups.extend(stored.into_iter().map(|g| GroupRef {
        owner: owner.to_owned(),
        feed: feed.to_owned(),
        day: g.day,
        key: g.key,
    }));
    groups.retain(|g| oldest.is_some_and(|day| g.day >= day));
    groups.sort();
    groups.dedup();
    store.mark_groups(&groups, now).await?;
    Ok(())
}

/// Reads the whole grouped feed once, as a reader would, so every marked day is recomputed now;
/// answers how many groups it holds.
async fn walk_groups(
    store: &dyn Store,
    grouping: Grouping,
    owner: &str,
    max: usize,
) -> Result<usize> {
    let (mut count, mut from) = (0, None::<GroupPosition>);
    loop {
        let (groups, next) = aggregate::page(
            store,
            owner,
            grouping,
            from.as_ref(),
            aggregate::GROUP_ROWS,
            max,
            aggregate::scan_time,
        )
        .await?;
        count += groups.len();
        match next {
            Some(next) => from = Some(next),
            None => return Ok(count),
        }
    }
}

/// Keeps the newest `max` of `activities`, newest first, each once.
fn newest(activities: &mut Vec<Activity>, max: usize) {
    activities.sort_by(|a, b| b.id.cmp(&a.id));
    activities.dedup_by(|a, b| a.id == b.id);
    activities.truncate(max);
}

async fn whole_timeline(store: &dyn Store, owner: &str) -> Result<Vec<Activity>> {
    let mut out: Vec<Activity> = Vec::new();
    loop {
        let range = IdRange {
            before: out.last().map(|a| a.id.as_str()),
            not_before: None,
        };
        let page = store.timeline(owner, range, SCAN_PAGE).await?;
        let full = page.len() == SCAN_PAGE;
        out.extend(page);
        if !full {
            return Ok(out);
        }
    }
}

async fn all_following(store: &dyn Store, user: &str) -> Result<Vec<String>> {
    let mut out: Vec<String> = Vec::new();
    loop {
        let page = store
            .following(user, out.last().map(String::as_str), SCAN_PAGE)
            .await?;
        let full = page.len() == SCAN_PAGE;
        out.extend(page.into_iter().map(|r| r.user));
        if !full {
            return Ok(out);
        }
    }
}
