//! Runs tauri-build against the workspace's `tauri.conf.json` and declares the app's commands
//! in its manifest, so that `capabilities/main.json` governs them (an undeclared command would
//! be callable from every window).

const COMMANDS: &[&str] = include!("src/command_names.in");

fn main() {
    println!("cargo:rerun-if-changed=src/command_names.in");
    let manifest = tauri_build::AppManifest::new().commands(COMMANDS);
    let attributes =
        tauri_build::Attributes::new().config_path("../tauri.conf.json").app_manifest(manifest);
    if let Err(error) = tauri_build::try_build(attributes) {
        eprintln!("tauri-build: {error:#}");
        std::process::exit(1);
    }
}
