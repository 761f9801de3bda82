//! `lab events`: a node's decoded datapath events, live.

use std::io::Write as _;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use sightline_collector::control::{StreamItem, Subscription};

/// Prints events until `duration` elapses (or forever), as summary lines or
/// JSON lines. A subscriber that falls behind is told how many it lost.
pub fn stream(socket: &Path, json: bool, duration: Option<Duration>) -> anyhow::Result<()> {
    let mut sub = Subscription::open(socket).context("subscribing to the collector")?;
    // Past the clock's range is forever.
    let deadline = duration.and_then(|d| Instant::now().checked_add(d));
    let mut out = std::io::stdout();
    loop {
        let wait = match deadline {
            Some(d) => {
                let left = d.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return Ok(());
                }
                left.min(Duration::from_millis(500))
            }
            None => Duration::from_millis(500),
        };
        let line = match sub.next_timeout(wait)? {
            Some(StreamItem::Record(r)) if json => serde_json::to_string(&r)?,
            Some(StreamItem::Record(r)) => r.summary(),
            Some(StreamItem::Lost { lost }) if json => format!("{{\"lost\":{lost}}}"),
            Some(StreamItem::Lost { lost }) => format!("-- {lost} events lost: this reader fell behind --"),
            None => continue,
        };
        // A closed stdout (`| head`) ends the stream quietly.
        if writeln!(out, "{line}").is_err() {
            return Ok(());
        }
    }
}
