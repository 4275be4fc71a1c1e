//! The raw Zenoh children (run by `ip netns exec`), driven over stdin/stdout:
//!   publisher: prints "ready" once a subscriber matches; then per line "SIZE COUNT PACE_NS"
//!              sends, prints "sent".
//!   subscriber: prints "ready"; per line "COUNT" prints "armed", then when COUNT arrived
//!               "done MB_PER_S P50_US P99_US".

use std::io::BufRead;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use zenoh::qos::CongestionControl;
use zenoh::Wait;

use crate::measure::*;

pub(crate) fn zenoh_session(
    mode_listen: Option<&str>,
    connect: Option<&str>,
) -> Result<zenoh::Session> {
    let mut config = zenoh::Config::default();
    let mut set = |key: &str, value: String| {
        config
            .insert_json5(key, &value)
            .map_err(|e| anyhow!("zenoh config {key}: {e}"))
    };
    // As the bridge does with endpoints: peer mode, no multicast scouting.
    set("mode", "\"peer\"".into())?;
    set("scouting/multicast/enabled", "false".into())?;
    if let Some(listen) = mode_listen {
        set("listen/endpoints", format!("[\"{listen}\"]"))?;
    }
    if let Some(connect) = connect {
        set("connect/endpoints", format!("[\"{connect}\"]"))?;
    }
    zenoh::open(config)
        .wait()
        .map_err(|e| anyhow!("open the Zenoh session: {e}"))
}

pub(crate) fn zenoh_pub(listen: &str) -> Result<()> {
    let session = zenoh_session(Some(listen), None)?;
    let publisher = session
        .declare_publisher("bench/raw")
        .congestion_control(CongestionControl::Block)
        .wait()
        .map_err(|e| anyhow!("declare publisher: {e}"))?;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let matching = publisher
            .matching_status()
            .wait()
            .map_err(|e| anyhow!("matching status: {e}"))?
            .matching();
        if matching {
            break;
        }
        if Instant::now() > deadline {
            bail!("no subscriber matched within 30 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    println!("ready");
    for line in std::io::stdin().lock().lines() {
        let line = line.context("read a command")?;
        let fields: Vec<u64> = line
            .split_whitespace()
            .map(str::parse)
            .collect::<Result<_, _>>()
            .with_context(|| format!("command {line:?}"))?;
        let [size, count, pace_ns] = fields[..] else {
            bail!("command {line:?}: want SIZE COUNT PACE_NS");
        };
        let pace = (pace_ns > 0).then(|| Duration::from_nanos(pace_ns));
        send_paced(size as usize, count, pace, |message| {
            publisher
                .put(message.to_vec())
                .wait()
                .map_err(|e| anyhow!("put: {e}"))
        })?;
        println!("sent");
    }
    Ok(())
}

pub(crate) fn zenoh_sub(connect: &str) -> Result<()> {
    let session = zenoh_session(None, Some(connect))?;
    let state: Arc<(Mutex<Tally>, Condvar)> = Arc::default();
    let _subscriber = {
        let state = state.clone();
        session
            .declare_subscriber("bench/raw")
            .callback(move |sample| {
                let payload = sample.payload().to_bytes();
                let mut tally = state.0.lock().unwrap_or_else(|e| e.into_inner());
                tally.add(&payload);
                drop(tally);
                state.1.notify_all();
            })
            .wait()
            .map_err(|e| anyhow!("declare subscriber: {e}"))?
    };
    println!("ready");
    for line in std::io::stdin().lock().lines() {
        let line = line.context("read a command")?;
        let count: u64 = line
            .trim()
            .parse()
            .with_context(|| format!("command {line:?}"))?;
        *state.0.lock().unwrap_or_else(|e| e.into_inner()) = Tally::default();
        println!("armed");
        let deadline = Instant::now() + Duration::from_secs(300);
        let mut tally = state.0.lock().unwrap_or_else(|e| e.into_inner());
        while tally.count < count {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                bail!("{} of {count} messages within 300 s", tally.count);
            }
            tally = state
                .1
                .wait_timeout(tally, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        let outcome = std::mem::take(&mut *tally).outcome();
        drop(tally);
        println!(
            "done {} {} {}",
            outcome.mb_per_s, outcome.p50_us, outcome.p99_us
        );
    }
    Ok(())
}
