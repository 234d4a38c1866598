//! `countersign-demo`: starts the reference queue on 127.0.0.1 with a fresh TLS key, seeds it
//! with a 2-of-3 vault and four requests, prepares an approver's store connected and pinned to
//! it, and opens the desktop app on that store. The queue stops when the app closes.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use countersign_core::secret::SecretString;
use countersign_store::keywrap::Protection;

#[derive(Parser, Debug)]
#[command(
    name = "countersign-demo",
    about = "The Countersign demo: a seeded local queue and the desktop app connected to it"
)]
struct Args {
    /// Where the demo keeps the queue's and the approver's data (a fresh temporary folder if
    /// not given; it must not hold a demo already).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Where the queue listens.
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: std::net::SocketAddr,
    /// Which approver the app signs as.
    #[arg(long, default_value = "alice", value_parser = ["alice", "bob", "carol"])]
    approver: String,
    /// Protect the approver's store with this passphrase instead of the system keyring.
    #[arg(long)]
    passphrase: bool,
    /// The desktop app's binary (by default, `countersign-app` beside this one).
    #[arg(long)]
    app: Option<PathBuf>,
    /// Serve and print the connection, without opening the app (stop with Ctrl-C).
    #[arg(long)]
    no_app: bool,
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    match run(args).await {
        Ok(code) => code,
        Err(error) => {
            eprintln!("countersign-demo: {error}");
            ExitCode::from(3)
        }
    }
}

async fn run(args: Args) -> Result<ExitCode, String> {
    if !args.no_app
        && std::env::var_os("DISPLAY").is_none()
        && std::env::var_os("WAYLAND_DISPLAY").is_none()
    {
        return Err("no display to open the window on. Run the demo in a desktop session, or under a virtual display: xvfb-run -a scripts/demo (and look at it with a VNC viewer or a screenshot), or pass --no-app to serve the queue only".into());
    }
    let root = match args.data_dir {
        Some(dir) => dir,
        None => std::env::temp_dir().join(format!("countersign-demo-{}", std::process::id())),
    };
    let queue_dir = root.join("queue");
    let approver_dir = root.join("approver");
    if approver_dir.exists() || queue_dir.exists() {
        return Err(format!("{} already holds a demo; give another --data-dir", root.display()));
    }
    std::fs::create_dir_all(&queue_dir).map_err(|e| format!("{}: {e}", queue_dir.display()))?;
    std::fs::create_dir_all(&approver_dir)
        .map_err(|e| format!("{}: {e}", approver_dir.display()))?;
    let queue =
        countersign_demo::start_queue(&queue_dir, args.listen).await.map_err(|e| e.to_string())?;
    let index =
        countersign_demo::APPROVER_IDS.iter().position(|a| *a == args.approver).unwrap_or(0);
    const DEMO_PASSPHRASE: &str = "countersign demo passphrase";
    let protection = if args.passphrase {
        Protection::Passphrase(SecretString::new(DEMO_PASSPHRASE.to_owned()))
    } else {
        Protection::Keyring
    };
    let store = countersign_demo::prepare_approver(&approver_dir, &queue, index, protection)
        .await
        .map_err(|e| format!("{e} (without a system keyring, pass --passphrase)"))?;
    store.close().await;
    println!("url: {}", queue.url);
    println!("pin-sha256: {}", queue.pin);
    println!("approver: {} with the store in {}", args.approver, approver_dir.display());
    if args.passphrase {
        println!("passphrase: {DEMO_PASSPHRASE} (a demo store of test keys)");
    }
    // The approvers' API keys, for the CLI (`--api-key-file`), in files only this user can
    // read.
    for (id, key) in countersign_demo::APPROVER_IDS.iter().zip(queue.approver_api_keys.iter()) {
        let file = root.join(format!("api-key-{id}"));
        write_private(&file, &format!("{key}\n"))
            .map_err(|e| format!("{}: {e}", file.display()))?;
    }
    println!("api keys: {}/api-key-alice, -bob, -carol", root.display());
    if args.no_app {
        println!("Serving; stop with Ctrl-C.");
        let _ = tokio::signal::ctrl_c().await;
        queue.running.stop();
        return Ok(ExitCode::SUCCESS);
    }
    let app = match args.app {
        Some(app) => app,
        None => {
            std::env::current_exe().map_err(|e| e.to_string())?.with_file_name("countersign-app")
        }
    };
    let status = tokio::process::Command::new(&app)
        .env("COUNTERSIGN_DATA_DIR", &approver_dir)
        .status()
        .await
        .map_err(|e| format!("{}: {e}", app.display()))?;
    queue.running.stop();
    Ok(if status.success() { ExitCode::SUCCESS } else { ExitCode::from(1) })
}

fn write_private(path: &std::path::Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file =
        std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path)?;
    file.write_all(text.as_bytes())
}
