//! `feeds-server admin ...`: the operator's tools, on the store and the queue the settings name
//! (the same as `serve`). Results go to standard output, progress to standard error.

use clap::Subcommand;
use feeds::admin::{self, RebuildOptions};
use feeds::config::{self, Backends, Defaults};
use feeds::BoxError;

#[derive(Subcommand)]
pub enum Admin {
    /// Move dead-lettered fan-out messages back onto the fan-out queue.
    #[command(long_about = "\
Move dead-lettered fan-out messages back onto the fan-out queue, oldest first.

Embedded queue: the rows of the `fanout_dead_letters` table move back into the queue in one \
transaction. SQS: each message of the dead-letter queue (FEEDS_DLQ_URL) is sent to the fan-out \
queue (FEEDS_QUEUE_URL) with its body and message attributes unchanged, and deleted from the \
dead-letter queue only once the send succeeded: if the command stops in between, the message is \
in both queues and the next run moves it again; the fan-out runs a message twice without harm.

Prints one line per message: its id in the dead-letter queue and its kind. Fix what made the \
messages fail first, or they come back to the dead-letter queue.")]
    RedriveDlq {
        /// List the messages (id and kind) and move nothing. On SQS, listing receives them, so
        /// their receive counts rise; they are visible again at once.
        #[arg(long)]
        dry_run: bool,
        /// Move (or list) at most this many messages.
        #[arg(long, default_value_t = 1000)]
        max: usize,
    },
    /// Rebuild a user's flat, aggregated and notification feeds from their sources.
    #[command(long_about = "\
Rebuild a user's flat, aggregated and notification feeds from their sources, as the fan-out \
would have written them. Running it again changes nothing; it may run while the service does.

Flat feed: the newest FEEDS_FEED_MAX_LENGTH activities of the users it follows, taken from their \
own feeds; a pulled author's activities are not copied (the feed merges them when read), and its \
pulled-followee row is added if missing. Rows of anything else (users not followed, deleted \
activities, older ones) are removed; rows of an updated activity are rewritten.

Aggregated feed (the FEEDS_AGGREGATE_BY grouping): every group recomputed from the rebuilt flat \
feed.

Notification feed: the newest FEEDS_FEED_MAX_LENGTH stored activities whose `to` names the user, \
found by reading every stored activity (a scan of the whole `activities` table: long on a large \
store; --skip-notifications leaves the feed alone). What cannot be rebuilt, because it is stored \
nowhere else: which groups the user has seen or read. Groups that keep activities keep their \
state; a group that comes back whole is unseen and unread, as when it was delivered; a group with \
nothing left loses it. Do not run it on an erased user: the store keeps no record of an erasure, \
and other users' activities that name the user in `to` are kept, so its notifications would come \
back.")]
    RebuildFeed {
        /// The user whose feeds to rebuild.
        user: String,
        /// Report what would change, and change nothing.
        #[arg(long)]
        dry_run: bool,
        /// Leave the notification feed alone (no scan of every activity).
        #[arg(long)]
        skip_notifications: bool,
    },
    /// Repair `followers` rows left out of step with their `following` rows (the edges).
    #[command(long_about = "\
Repair `followers` rows left out of step with the edges, which the `following` side holds.

On Cassandra a follow writes the edge (`following`, a lightweight transaction) and then its copy \
in `followers`, which the fan-out reads; an unfollow changes the edge, then deletes the copy. A \
process that died between the two writes, and whose client never retried, leaves a copy missing \
(the follower gets no new activities) or a stray one (the ex-follower still gets them). This \
command walks both tables whole, page by page, with progress on standard error, and for each \
edge out of step writes or deletes the copy as follow and unfollow do, with the same write times, \
after reading the edge again: so it is safe while the service runs, and a follow or unfollow \
arriving meanwhile still wins. For each repaired edge it recounts both users (followers and \
following) and enqueues what the interrupted request would have: the follower's backfill (or \
purge) and the recounts.

SQLite keeps one row per edge: there is nothing to repair, and the command says so after its \
scan. Prints each repaired edge, then the totals.")]
    ReconcileFollows {
        /// Report the edges out of step, and change nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Queue and dead-letter queue depths; counts of users, edges, activities.
    #[command(long_about = "\
Queue and dead-letter queue depths; counts of users (with a follower, a followee or an activity, \
as last counted), follow edges, `followers` rows (as many as the edges, unless \
reconcile-follows has work to do) and activities.

SQLite counts each in one query. Cassandra has no count but a scan: each table is read whole, \
page by page, with progress on standard error. The SQS depths are SQS's approximate numbers; \
the dead-letter depth needs FEEDS_DLQ_URL.")]
    Stats {
        /// One JSON object instead of lines of text.
        #[arg(long)]
        json: bool,
    },
}

pub async fn run(command: Admin) -> Result<(), BoxError> {
    let settings = config::start(Defaults::EMBEDDED)?;
    let backends = Backends::open(&settings).await?;
    let progress = |line: &str| eprintln!("{line}");
    let (store, queue) = (backends.store.as_ref(), backends.queue.as_ref());
    match command {
        Admin::RedriveDlq { dry_run, max } => {
            let letters = match dry_run {
                true => backends.queue_admin.dead_letters(max).await?,
                false => backends.queue_admin.redrive(max).await?,
            };
            for letter in &letters {
                match dry_run {
                    // The body too, cut to a line: what a fix needs to look at.
                    true => {
                        let body: String = letter.body.chars().take(300).collect();
                        println!("{}\t{}\t{body}", letter.id, letter.kind());
                    }
                    false => println!("{}\t{}", letter.id, letter.kind()),
                }
            }
            let verb = if dry_run {
                "dead-lettered"
            } else {
                "moved back"
            };
            println!("{} messages {verb}", letters.len());
        }
        Admin::RebuildFeed {
            user,
            dry_run,
            skip_notifications,
        } => {
            feeds::model::check_user_id("user", &user)?;
            let options = RebuildOptions {
                notifications: !skip_notifications,
                dry_run,
            };
            let fanout = &settings.fanout;
            let rebuilt =
                admin::rebuild_feed(store, queue, fanout, &user, options, &progress).await?;
            let mode = if dry_run {
                " (dry run: nothing changed)"
            } else {
                ""
            };
            println!("rebuilt the feeds of {user}{mode}");
            println!("{}", serde_json::to_string_pretty(&rebuilt)?);
        }
        Admin::ReconcileFollows { dry_run } => {
            let done = admin::reconcile_follows(store, queue, dry_run, &progress).await?;
            let (added, removed) = match dry_run {
                true => ("missing", "stray"),
                false => ("added", "removed"),
            };
            for (follower, followee) in &done.added {
                println!("{added}\t{follower}\t{followee}");
            }
            for (follower, followee) in &done.removed {
                println!("{removed}\t{follower}\t{followee}");
            }
            println!(
                "{} rows scanned; followers rows {added}: {}, {removed}: {}{}",
                done.scanned,
                done.added.len(),
                done.removed.len(),
                if dry_run {
                    " (dry run: nothing changed)"
                } else {
                    ""
                }
            );
        }
        Admin::Stats { json } => {
            let stats = admin::stats(store, backends.queue_admin.as_ref(), &progress).await?;
            if json {
                println!("{}", serde_json::to_string(&stats)?);
            } else {
                let dead = stats
                    .queue
                    .dead
                    .map_or("unknown (set FEEDS_DLQ_URL)".to_owned(), |n| n.to_string());
                println!("queue waiting:    {}", stats.queue.waiting);
                println!("queue in flight:  {}", stats.queue.in_flight);
                println!("dead-lettered:    {dead}");
                println!("users:            {}", stats.users);
                println!("edges:            {}", stats.edges);
                println!("followers rows:   {}", stats.follower_rows);
                println!("activities:       {}", stats.activities);
            }
        }
    }
    Ok(())
}
