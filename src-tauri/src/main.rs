//! `countersign-app`: the desktop window. Its store is in `COUNTERSIGN_DATA_DIR` (or the
//! CLI's data folder).

fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();
    if std::env::var_os("DISPLAY").is_none() && std::env::var_os("WAYLAND_DISPLAY").is_none() {
        eprintln!(
            "countersign-app: no display. Run it in a desktop session, or under a virtual one: \
             xvfb-run -a countersign-app"
        );
        return std::process::ExitCode::from(3);
    }
    match countersign_app::run() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("countersign-app: {error}");
            std::process::ExitCode::from(3)
        }
    }
}
