//! `lab events`: a node's decoded datapath events, live.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use sightline_collector::control::{StreamItem, Subscription};

/// Prints events until `duration` elapses (or forever), as summary lines or
/// JSON lines. A subscriber that falls behind is told how many it lost.
pub fn stream(socket: &Path, json: bool, duration: Option<Duration>) -> anyhow::Result<()> {
    let mut sub = Subscription::open(socket).context("subscribing to the collector")?;
    let deadline = duration.map(|d| Instant::now() + d);
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
        match sub.next_timeout(wait)? {
            Some(StreamItem::Record(r)) => {
                if json {
                    println!("{}", serde_json::to_string(&r)?);
                } else {
                    println!("{}", r.summary());
                }
            }
            Some(StreamItem::Lost { lost }) => {
                if json {
                    println!("{{\"lost\":{lost}}}");
                } else {
                    println!("-- {lost} events lost: this reader fell behind --");
                }
            }
            None => {}
        }
    }
}
