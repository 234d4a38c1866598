//! The desktop app's benchmark: `scripts/bench-app` (it builds the app in release, then runs
//! `cargo bench -p countersign-bench --bench app` under a D-Bus session with a keyring, the
//! app's path in `COUNTERSIGN_APP`). Not run by the test command.
//!
//! It seeds the demo queue with 10,000 more pending requests, syncs them into an approver's
//! store (keyring-protected, so that opening it asks nothing), stops the queue, and then
//! starts the built app through tauri-driver under Xvfb on that local data. It measures:
//!
//! - cold start: from the app's process start (read from /proc, to the kernel's clock tick)
//!   to the newest rows painted and to every row in the table (the page's marks, in epoch
//!   time through `performance.timeOrigin`); and, as an upper bound, from asking WebDriver for
//!   a session (which launches the app) to WebDriver seeing every row;
//! - first paint of the queue: in the page, from the rows being asked of the backend to the
//!   second animation frame after the newest of them (the first screenful the window asks
//!   for) were laid out (User Timing marks `queue-requested` and `queue-painted`), and until
//!   every row is in the table (`queue-complete`);
//! - scrolling: the table scrolled by three rows every frame for 300 frames, the frame times
//!   as the page saw them;
//! - memory: resident set (RSS) and proportional set (PSS) summed over the app's processes,
//!   WebKit's included, with the 10,000 rows shown.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "a benchmark stops at the first failure"
)]

#[path = "../../../src-tauri/tests/support/mod.rs"]
mod support;

use std::time::{Duration, Instant};

use serde_json::Value;

const REQUESTS: usize = 10_000;
/// Frames of the scrolling run, three rows each: 900 rows, through the middle of the table.
const FRAMES: usize = 300;

/// (command, RSS kB, PSS kB, anonymous kB) of a process.
fn memory(pid: u32) -> Option<(String, u64, u64, u64)> {
    let command = support::command(pid)?;
    let rollup = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).ok()?;
    let field = |name: &str| {
        rollup
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    Some((command, field("Rss:"), field("Pss:"), field("Anonymous:")))
}

/// The files (and anonymous kinds) holding most of a process's resident memory, biggest
/// first: `(name, RSS kB)`, the mappings of one file summed.
fn biggest_mappings(pid: u32, count: usize) -> Vec<(String, u64)> {
    let Ok(smaps) = std::fs::read_to_string(format!("/proc/{pid}/smaps")) else {
        return Vec::new();
    };
    let mut by_name: std::collections::HashMap<String, u64> = std::collections::HashMap::new();
    let mut name = String::new();
    for line in smaps.lines() {
        if let Some(kb) = line.strip_prefix("Rss:") {
            let kb: u64 = kb.trim().trim_end_matches("kB").trim().parse().unwrap_or(0);
            *by_name.entry(name.clone()).or_default() += kb;
        } else if line.split_whitespace().next().is_some_and(|first| first.contains('-')) {
            // A mapping's header: range, permissions, offset, device, inode, then its path.
            let path = line.split_whitespace().nth(5).unwrap_or("[anonymous]");
            name = path.rsplit('/').next().unwrap_or(path).to_owned();
        }
    }
    let mut sorted: Vec<(String, u64)> = by_name.into_iter().collect();
    sorted.sort_by_key(|entry| std::cmp::Reverse(entry.1));
    sorted.truncate(count);
    sorted
}

/// When the process `pid` started, in milliseconds since the Unix epoch, to the kernel's
/// clock tick (10 ms here): boot time as now less the uptime, plus the process's start.
fn started_at_ms(pid: u32) -> f64 {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap();
    let uptime: f64 = std::fs::read_to_string("/proc/uptime")
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // The start time is the 22nd field, the 20th after the command in parentheses.
    let after = stat.rsplit_once(')').unwrap().1;
    let ticks: f64 = after.split_whitespace().nth(19).unwrap().parse().unwrap();
    let per_second: f64 = String::from_utf8(
        std::process::Command::new("getconf").arg("CLK_TCK").output().unwrap().stdout,
    )
    .unwrap()
    .trim()
    .parse()
    .unwrap();
    (now.as_secs_f64() - uptime + ticks / per_second) * 1000.0
}

/// The release build of the app that scripts/bench-app made.
fn app_binary() -> String {
    std::env::var("COUNTERSIGN_APP")
        .expect("COUNTERSIGN_APP: the app to measure (run this through scripts/bench-app)")
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        println!(
            "the app benchmark runs with `cargo bench` (see scripts/bench-app), not as a test"
        );
        return;
    }
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    runtime.block_on(run());
}

async fn run() {
    let queue_dir = tempfile::tempdir().unwrap();
    let data = tempfile::tempdir().unwrap();
    let queue = countersign_demo::start_queue(queue_dir.path(), "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let seeding = Instant::now();
    let vaults = countersign_demo::load(&queue, REQUESTS).await.unwrap();
    eprintln!("seeded {REQUESTS} requests in {:.1} s", seeding.elapsed().as_secs_f64());
    let store = countersign_demo::prepare_approver(
        data.path(),
        &queue,
        0,
        countersign_store::keywrap::Protection::Keyring,
    )
    .await
    .expect("a keyring: run this through scripts/bench-app");
    for record in &vaults {
        store.add_vault(record).await.unwrap();
    }
    let connection = countersign_approver::actions::stored_connection(&store).await.unwrap();
    let mut fetched = 0;
    loop {
        let report = countersign_sync::sync::sync(&store, &connection).await.unwrap();
        fetched += report.fetched;
        assert!(report.marked.is_empty(), "{:?}", report.marked.first());
        if !report.more {
            break;
        }
    }
    store.close().await;
    queue.running.stop();
    let total = REQUESTS + countersign_demo::transactions().len();
    assert_eq!(fetched, total);
    eprintln!("synced {fetched} requests; the queue is stopped, the app reads local data");

    let (xvfb, display) = support::start_xvfb();
    let (driver, port) = support::start_driver(&display, data.path(), &[]);
    let started = Instant::now();
    let client = support::session(port, &app_binary()).await;
    let want = format!("{total} of {total}");
    // All rows: the filter shows those awaiting approval, every one of them here.
    support::until_text(&client, "#row-count", |t| t.starts_with(&want)).await;
    let mut marks = Value::Null;
    for _ in 0..100 {
        marks = client
            .execute(
                "const m = performance.getEntriesByName('queue-painted'); \
                 const r = performance.getEntriesByName('queue-requested'); \
                 const g = performance.getEntriesByName('queue-received'); \
                 const c = performance.getEntriesByName('queue-complete'); \
                 return m.length && c.length ? { painted: m[0].startTime, requested: r[0].startTime, \
                   received: g[0].startTime, complete: c[0].startTime, origin: performance.timeOrigin, \
                   loaded: performance.getEntriesByType('navigation')[0]?.domContentLoadedEventEnd ?? 0 } : null;",
                vec![],
            )
            .await
            .unwrap();
        if !marks.is_null() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let cold = started.elapsed();
    let painted = marks["painted"].as_f64().unwrap();
    let requested = marks["requested"].as_f64().unwrap();
    let received = marks["received"].as_f64().unwrap();
    let complete = marks["complete"].as_f64().unwrap();
    // From the app's process start (WebDriver's own start left out) to the page's marks.
    let app = support::descendants(driver.0.id())
        .into_iter()
        .find(|pid| support::command(*pid).as_deref() == Some("countersign-app"))
        .expect("the app's process");
    let launched = started_at_ms(app);
    let origin = marks["origin"].as_f64().unwrap();
    let (launch_to_painted, launch_to_complete) =
        (origin + painted - launched, origin + complete - launched);
    eprintln!(
        "from the app's start: the page began at {:.0} ms, its script had run at {:.0} ms, the rows were asked for at {:.0} ms",
        origin - launched,
        origin + marks["loaded"].as_f64().unwrap_or(0.0) - launched,
        origin + requested - launched
    );
    eprintln!(
        "cold start {} ms; first paint {:.0} ms, of which {:.0} ms until the newest rows arrived; every row in {:.0} ms",
        cold.as_millis(),
        painted - requested,
        received - requested,
        complete - requested
    );
    client
        .update_timeouts(fantoccini::wd::TimeoutConfiguration::new(
            Some(Duration::from_secs(300)),
            None,
            None,
        ))
        .await
        .unwrap();

    let script = "const done = arguments[0]; const view = document.getElementById('queue-table'); \
             const times = []; let last = performance.now(); let frames = 0; \
             function step(now) { times.push(now - last); last = now; view.scrollTop += 108; \
               if (++frames < FRAMES) requestAnimationFrame(step); else done(times); } \
             requestAnimationFrame(step);"
        .replace("FRAMES", &FRAMES.to_string());
    let scroll = client.execute_async(&script, vec![]).await.unwrap();
    let mut frames: Vec<f64> =
        scroll.as_array().unwrap().iter().skip(1).filter_map(Value::as_f64).collect();
    frames.sort_by(f64::total_cmp);
    let p = |q: f64| frames[((frames.len() - 1) as f64 * q).round() as usize];
    let over_50 = frames.iter().filter(|f| **f > 50.0).count();
    let rendered = client
        .execute("return document.querySelectorAll('#queue-table .row').length;", vec![])
        .await
        .unwrap();

    let mut rss = 0;
    let mut pss = 0;
    let mut parts = Vec::new();
    for pid in support::descendants(driver.0.id()) {
        if let Some((command, r, p, anonymous)) = memory(pid) {
            if command.starts_with("tauri-driver") || command.starts_with("WebKitWebDriver") {
                continue; // the test harness, not the app
            }
            rss += r;
            pss += p;
            parts.push(format!("{command} {} MB ({} MB anonymous)", r / 1024, anonymous / 1024));
            let biggest: Vec<String> = biggest_mappings(pid, 10)
                .into_iter()
                .map(|(name, kb)| format!("{name} {:.1}", kb as f64 / 1024.0))
                .collect();
            eprintln!("{command}, resident MB by file: {}", biggest.join(", "));
        }
    }
    client.close().await.unwrap();
    drop(driver);
    drop(xvfb);

    println!("\n| measurement ({total} pending requests, local data, release build, Xvfb) | figure | goal |");
    println!("|---|---:|---|");
    println!(
        "| cold start, the app's process started → the newest rows painted | {launch_to_painted:.0} ms | ≤ 1000 ms |"
    );
    println!(
        "| cold start, the app's process started → every row in the table | {launch_to_complete:.0} ms | ≤ 1000 ms |"
    );
    println!(
        "| cold start, WebDriver asked for a session → every row seen by WebDriver (its start and polling included) | {} ms | |",
        cold.as_millis()
    );
    println!(
        "| first paint of the queue (the newest rows), rows asked → painted | {:.0} ms | ≤ 200 ms |",
        painted - requested
    );
    println!(
        "| every row listed, rows asked → all {total} in the table | {:.0} ms | |",
        complete - requested
    );
    println!("| scrolling, frame time median / p99 / max | {:.1} / {:.1} / {:.1} ms ({over_50} frames over 50 ms of {}) | no visible stall |", p(0.5), p(0.99), p(1.0), frames.len());
    println!("| rows in the DOM while {total} are listed | {rendered} | |");
    println!(
        "| memory of the app's processes, RSS (PSS) | {} MB ({} MB): {} | ≤ 200 MB |",
        rss / 1024,
        pss / 1024,
        parts.join(", ")
    );
}
