//! `countersign-app`: the desktop window. Its store is in `COUNTERSIGN_DATA_DIR` (or the
//! CLI's data folder).

/// WebKit's switch for drawing pages without its compositor: without a GPU (a virtual display,
/// a remote desktop, a VM) the compositor draws through software OpenGL, each frame of the
/// queue took about 70 ms and the web process used about 440 MB with 10,000 requests; drawn
/// without it, 16 ms and about 260 MB (see the README). The table and forms need no GPU.
const NO_COMPOSITING: &str = "WEBKIT_DISABLE_COMPOSITING_MODE";

fn main() -> std::process::ExitCode {
    // Before any thread starts, and inherited by WebKit's processes. Whoever has set it
    // (`0` lets WebKit composite on the GPU), or has asked WebKit to always composite, keeps
    // their choice.
    if std::env::var_os(NO_COMPOSITING).is_none()
        && std::env::var_os("WEBKIT_FORCE_COMPOSITING_MODE").is_none()
    {
        std::env::set_var(NO_COMPOSITING, "1");
    }
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
