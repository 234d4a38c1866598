//! What the end-to-end test and the app benchmark share: Xvfb, tauri-driver and a WebDriver
//! session with the built app, each stopped by its process id.

#![allow(dead_code, reason = "each user takes part of it")]

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::json;

/// A child process, stopped by its process id when dropped.
pub struct Running(pub Child, pub &'static str);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = Command::new("kill").arg("-TERM").arg(self.0.id().to_string()).status();
        for _ in 0..50 {
            if matches!(self.0.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        eprintln!("{} did not stop on TERM; killing it", self.1);
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

pub fn wait_for(what: &str, mut ready: impl FnMut() -> bool) {
    for _ in 0..200 {
        if ready() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("{what} did not come up");
}

/// Xvfb on the first free display from :91.
pub fn start_xvfb() -> (Running, String) {
    let number = (91..200)
        .find(|n| !Path::new(&format!("/tmp/.X{n}-lock")).exists())
        .expect("a free X display");
    let child = Command::new("Xvfb")
        .arg(format!(":{number}"))
        .args(["-screen", "0", "1280x900x24", "-nolisten", "tcp"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("Xvfb (package xvfb)");
    let running = Running(child, "Xvfb");
    wait_for("Xvfb", || Path::new(&format!("/tmp/.X11-unix/X{number}")).exists());
    (running, format!(":{number}"))
}

pub fn start_driver(
    display: &str,
    data_dir: &Path,
    env: &[(&str, &std::ffi::OsStr)],
) -> (Running, u16) {
    let driver = std::env::var("TAURI_DRIVER").unwrap_or_else(|_| "tauri-driver".to_owned());
    let (port, native) = (free_port(), free_port());
    let child = Command::new(&driver)
        .args(["--port", &port.to_string(), "--native-port", &native.to_string()])
        .args(["--native-driver", "/usr/bin/WebKitWebDriver"])
        .env("DISPLAY", display)
        .env("COUNTERSIGN_DATA_DIR", data_dir)
        .envs(env.iter().copied())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap_or_else(|e| panic!("{driver}: {e} (cargo install tauri-driver --version 2.1.0)"));
    let running = Running(child, "tauri-driver");
    wait_for("tauri-driver", || std::net::TcpStream::connect(("127.0.0.1", port)).is_ok());
    (running, port)
}

/// A session with the app at `app` (an absolute path).
pub async fn session(port: u16, app: &str) -> Client {
    let mut capabilities = serde_json::Map::new();
    capabilities.insert("tauri:options".into(), json!({ "application": app }));
    // tauri-driver takes connections before the native driver behind it is ready: a first
    // attempt can be cut off, so try a few times.
    let mut last = None;
    for _ in 0..20 {
        let connector = hyper_util::client::legacy::connect::HttpConnector::new();
        match ClientBuilder::new(connector)
            .capabilities(capabilities.clone())
            .connect(&format!("http://127.0.0.1:{port}"))
            .await
        {
            Ok(client) => return client,
            Err(error) => last = Some(error),
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    panic!("no WebDriver session with the app: {last:?}");
}

pub async fn find(client: &Client, css: &str) -> fantoccini::elements::Element {
    match client.wait().at_most(Duration::from_secs(20)).for_element(Locator::Css(css)).await {
        Ok(element) => element,
        Err(e) => panic!("{css}: {e}; the window showed: {}", shown(client).await),
    }
}

/// What the window shows, for a failure's message: the heading, the notice and any refusal.
async fn shown(client: &Client) -> String {
    let read = "return ['h1', '#message', '#why-not', '#approve-error', '#key-error']
        .map((css) => document.querySelector(css))
        .filter((e) => e && e.textContent.trim() !== '')
        .map((e) => e.id ? `#${e.id}: ${e.textContent.trim()}` : e.textContent.trim())
        .join(' | ');";
    match client.execute(read, vec![]).await {
        Ok(text) => text.as_str().unwrap_or("").to_owned(),
        Err(e) => format!("(unreadable: {e})"),
    }
}

/// Whether WebDriver says the element found was replaced since (the page redrew it).
fn stale(error: &fantoccini::error::CmdError) -> bool {
    matches!(
        error,
        fantoccini::error::CmdError::Standard(e)
            if e.error == fantoccini::error::ErrorStatus::StaleElementReference
    )
}

/// Finds `css` and acts on it, finding it again if a live update redrew it in between.
async fn on_element<T, F, Fut>(client: &Client, css: &str, act: F) -> T
where
    F: Fn(fantoccini::elements::Element) -> Fut,
    Fut: std::future::Future<Output = Result<T, fantoccini::error::CmdError>>,
{
    for _ in 0..10 {
        match act(find(client, css).await).await {
            Ok(done) => return done,
            Err(e) if stale(&e) => tokio::time::sleep(Duration::from_millis(100)).await,
            Err(e) => panic!("{css}: {e}"),
        }
    }
    panic!("{css}: redrawn ten times in a row");
}

pub async fn text(client: &Client, css: &str) -> String {
    on_element(client, css, |e| async move { e.text().await }).await
}

pub async fn fill(client: &Client, css: &str, value: &str) {
    on_element(client, css, |e| async move {
        e.clear().await?;
        e.send_keys(value).await
    })
    .await
}

pub async fn click(client: &Client, css: &str) {
    on_element(client, css, |e| async move { e.click().await }).await
}

/// The text content of the element `css` now, read in the page; `None` if there is none.
pub async fn text_now(client: &Client, css: &str) -> Option<String> {
    let found = client
        .execute(
            "const e = document.querySelector(arguments[0]); return e ? e.textContent : null;",
            vec![json!(css)],
        )
        .await
        .unwrap();
    found.as_str().map(str::to_owned)
}

/// Waits until the element's text content satisfies `test` (read in the page, so that a row
/// the table has just redrawn is read afresh).
pub async fn until_text(client: &Client, css: &str, test: impl Fn(&str) -> bool) -> String {
    let mut last = String::new();
    for _ in 0..200 {
        if let Some(text) = text_now(client, css).await {
            last = text;
            if test(&last) {
                return last;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!(
        "{css}: the text never matched; last {last:?}; the window showed: {}",
        shown(client).await
    );
}

pub async fn absent(client: &Client, css: &str) -> bool {
    client.find(Locator::Css(css)).await.is_err()
}

/// The process ids under `root`, itself included.
pub fn descendants(root: u32) -> Vec<u32> {
    let mut parents = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else { continue };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { continue };
        // The parent is the second field after the command, which is in parentheses.
        let after = stat.rsplit_once(')').map(|(_, rest)| rest).unwrap_or_default();
        if let Some(ppid) = after.split_whitespace().nth(1).and_then(|p| p.parse::<u32>().ok()) {
            parents.push((pid, ppid));
        }
    }
    let mut out = vec![root];
    let mut i = 0;
    while i < out.len() {
        let parent = out[i];
        out.extend(parents.iter().filter(|(_, p)| *p == parent).map(|(c, _)| *c));
        i += 1;
    }
    out
}

/// The command name of a process.
pub fn command(pid: u32) -> Option<String> {
    Some(std::fs::read_to_string(format!("/proc/{pid}/comm")).ok()?.trim().to_owned())
}
