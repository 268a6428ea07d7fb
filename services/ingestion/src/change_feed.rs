//! "Values changed for (region, period)" events. After each commit the writer publishes one
//! `Change` per affected region (the region reported for and every region above it) and
//! period on a broadcast channel. On PostgreSQL the writer also `pg_notify`s inside its
//! transaction, and a listener task forwards other processes' notifications (its own, marked
//! with this process's origin, are skipped: they were published locally). Publishing changes
//! the changed pairs of [`CurrentRows`] first, before the writer answers: another process's
//! commit drops them, this process's own is applied to them.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use backon::{BackoffBuilder, ExponentialBuilder};
use tokio::sync::broadcast;

use citycredit::aggregates::Change;
use citycredit::org::OrgView;

use crate::current_rows::CurrentRows;

/// Buffered events per subscriber before a slow one starts missing them.
const CAPACITY: usize = 4096;

/// PostgreSQL NOTIFY payloads must stay under 8,000 bytes.
const MAX_PAYLOAD: usize = 7_000;

/// The base changes of one commit: (region reported for, period) -> highest id.
pub type BaseChanges = BTreeMap<(String, String), u64>;

/// The in-process feed.
#[derive(Clone)]
pub struct ChangeFeed {
    tx: broadcast::Sender<Change>,
    org: OrgView,
    /// The current values kept for aggregation, dropped here as changes are published.
    rows: Arc<CurrentRows>,
    /// Marks this process's notifications.
    pub origin: String,
}

impl ChangeFeed {
    pub fn new(org: OrgView, rows: Arc<CurrentRows>) -> Self {
        let (tx, _) = broadcast::channel(CAPACITY);
        ChangeFeed {
            tx,
            org,
            rows,
            origin: format!("{:016x}", rand::random::<u64>()),
        }
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Change> {
        self.tx.subscribe()
    }

    /// The current values kept for aggregation.
    pub fn rows(&self) -> &Arc<CurrentRows> {
        &self.rows
    }

    /// "Anything may have changed" (a commit whose outcome is unknown, notifications lost
    /// while the listener reconnected): drops every kept value and tells every subscriber.
    pub fn publish_everything(&self) {
        self.rows.drop_all();
        let _ = self.tx.send(Change::everything());
    }

    /// Publishes another process's commit: drops the pairs it changed, then announces its
    /// changes ([`ChangeFeed::announce`]).
    pub fn publish(&self, base: &BaseChanges, commit_micros: i64) {
        self.rows
            .drop_pairs(base.keys().map(|(r, p)| (r.as_str(), p.as_str())));
        self.announce(base, commit_micros);
    }

    /// Publishes this process's commit: applies the versions it closed (their submission ids)
    /// and opened to the pairs it changed ([`CurrentRows::apply_commit`]), then announces its
    /// changes.
    pub fn publish_own(
        &self,
        base: &BaseChanges,
        commit_micros: i64,
        closed: &[i64],
        opened: &[crate::store::VersionRow],
    ) {
        self.rows.apply_commit(
            base.keys().map(|(r, p)| (r.as_str(), p.as_str())),
            closed,
            opened,
        );
        self.announce(base, commit_micros);
    }

    /// Announces a commit's changes, expanded to every ancestor region, one event per
    /// (region, period).
    fn announce(&self, base: &BaseChanges, commit_micros: i64) {
        let org = self.org.borrow().clone();
        let mut expanded: BTreeMap<(String, String), u64> = BTreeMap::new();
        for ((region, period), last) in base {
            for r in org.ancestry(region) {
                let e = expanded.entry((r, period.clone())).or_insert(0);
                *e = (*e).max(*last);
            }
        }
        for ((region, period), last_submission_id) in expanded {
            // No subscribers is fine.
            let _ = self.tx.send(Change {
                region,
                period,
                last_submission_id,
                commit_micros,
            });
        }
    }
}

/// NOTIFY payloads for a commit: "origin micros" then one "region period id" line per change.
pub fn payloads(origin: &str, base: &BaseChanges, commit_micros: i64) -> Vec<String> {
    let mut out = Vec::new();
    let header = format!("{origin} {commit_micros}\n");
    let mut cur = header.clone();
    for ((region, period), id) in base {
        let line = format!("{region} {period} {id}\n");
        if cur.len() + line.len() > MAX_PAYLOAD {
            out.push(std::mem::replace(&mut cur, header.clone()));
        }
        cur.push_str(&line);
    }
    if cur.len() > header.len() {
        out.push(cur);
    }
    out
}

/// Parses a payload: (origin, commit micros, base changes).
pub fn parse_payload(p: &str) -> Option<(String, i64, BaseChanges)> {
    let mut lines = p.lines();
    let mut head = lines.next()?.split(' ');
    let origin = head.next()?.to_owned();
    let micros = head.next()?.parse().ok()?;
    let mut base = BaseChanges::new();
    for l in lines {
        let mut f = l.split(' ');
        let (r, p, id) = (f.next()?, f.next()?, f.next()?.parse().ok()?);
        base.insert((r.to_owned(), p.to_owned()), id);
    }
    Some((origin, micros, base))
}

/// The longest backoff step before the listener reconnects; jitter adds up to as much again,
/// so a wait never exceeds 1 s.
const LISTEN_RECONNECT_MAX: Duration = Duration::from_millis(500);
/// Reconnecting the listener: exponential backoff with jitter between attempts, 50 ms doubling
/// to [`LISTEN_RECONNECT_MAX`], and never giving up (without it, other processes' commits would
/// go unannounced here).
const LISTEN_RECONNECT: ExponentialBuilder = ExponentialBuilder::new()
    .with_min_delay(Duration::from_millis(50))
    .with_max_delay(LISTEN_RECONNECT_MAX)
    .with_jitter()
    .without_max_times();
/// A connection that stayed up this long was healthy: the next loss starts the backoff over.
const LISTEN_SETTLED: Duration = Duration::from_secs(10);

/// Forwards other processes' notifications on `channel` into `feed`, reconnecting on errors.
pub fn spawn_listener(
    url: String,
    channel: String,
    feed: ChangeFeed,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut backoff = LISTEN_RECONNECT.build();
        let mut connected_before = false;
        loop {
            let started = Instant::now();
            match listen(&url, &channel, &feed, &mut connected_before).await {
                Ok(()) => return,
                Err(e) => {
                    if started.elapsed() >= LISTEN_SETTLED {
                        backoff = LISTEN_RECONNECT.build();
                    }
                    let wait = backoff.next().unwrap_or(LISTEN_RECONNECT_MAX);
                    tracing::warn!(
                        error = %e,
                        retry_in_ms = wait.as_millis(),
                        "change feed listener lost its connection; reconnecting"
                    );
                    tokio::time::sleep(wait).await;
                }
            }
        }
    })
}

/// Listens until an error. Whenever notifications may have been lost (connected again after a
/// loss, here or inside the listener), everything is published as changed.
async fn listen(
    url: &str,
    channel: &str,
    feed: &ChangeFeed,
    connected_before: &mut bool,
) -> Result<(), sqlx::Error> {
    let mut listener = sqlx::postgres::PgListener::connect(url).await?;
    listener.listen(channel).await?;
    // Commits before LISTEN took effect were not heard: nothing kept before can be trusted.
    if std::mem::replace(connected_before, true) {
        feed.publish_everything();
    } else {
        feed.rows().drop_all();
    }
    loop {
        // `None`: the connection was lost. Reconnect here (and drop everything once listening
        // again), not inside the listener, where what is sent meanwhile would be lost unseen.
        let Some(n) = listener.try_recv().await? else {
            return Err(sqlx::Error::Io(std::io::Error::new(
                std::io::ErrorKind::ConnectionAborted,
                "the listener's connection was lost",
            )));
        };
        match parse_payload(n.payload()) {
            Some((origin, _, _)) if origin == feed.origin => {}
            Some((_, micros, base)) => feed.publish(&base, micros),
            None => tracing::warn!(payload = n.payload(), "unreadable change notification"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_listener_reconnects_within_a_second_and_never_gives_up() {
        let waits: Vec<Duration> = LISTEN_RECONNECT.build().take(1000).collect();
        assert_eq!(waits.len(), 1000);
        assert!(waits[0] >= Duration::from_millis(50) && waits[0] < Duration::from_millis(100));
        assert!(waits.iter().all(|w| *w < Duration::from_secs(1)));
        assert!(waits[10..].iter().all(|w| *w >= LISTEN_RECONNECT_MAX));
    }

    #[test]
    fn payloads_round_trip_and_split() {
        let mut base = BaseChanges::new();
        for i in 0..500u64 {
            base.insert((format!("3308{i:02}"), "2026".into()), i);
        }
        let ps = payloads("abc", &base, 42);
        assert!(ps.len() > 1 && ps.iter().all(|p| p.len() <= MAX_PAYLOAD));
        let mut back = BaseChanges::new();
        for p in &ps {
            let (o, m, b) = parse_payload(p).unwrap_or_else(|| panic!("parse {p}"));
            assert_eq!((o.as_str(), m), ("abc", 42));
            back.extend(b);
        }
        assert_eq!(back, base);
    }
}
