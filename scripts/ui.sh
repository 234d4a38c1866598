# What the test and demo scripts share: the desktop app's system packages, and building the
# web UI (installing its npm packages from package-lock.json when missing). Sourced, not run.

# WebKitGTK to build and run the app, its WebDriver, a virtual display, and Node.js for the UI.
# (npm comes with some Node.js packages and separately with Debian's: see check_node.)
app_packages=(libwebkit2gtk-4.1-dev webkit2gtk-driver xvfb nodejs)

# Vite 8 needs Node.js 20.19 or newer.
check_node() {
    if ! command -v npm >/dev/null; then
        install_missing npm
    fi
    local version
    version="$(node --version 2>/dev/null || echo none)"
    if ! node -e 'const [a, b] = process.versions.node.split(".").map(Number); process.exit(a > 20 || (a === 20 && b >= 19) ? 0 : 1)' 2>/dev/null; then
        echo "Node.js $version is too old for the UI build: install Node.js 20.19 or newer" >&2
        exit 1
    fi
}

# Builds ui/dist, which the app embeds; `npm ci` first when the packages are missing or older
# than the lock file.
build_ui() {
    check_node
    local ui="$repo/ui"
    if [ ! -d "$ui/node_modules" ] || [ "$ui/package-lock.json" -nt "$ui/node_modules" ]; then
        (cd "$ui" && npm ci --no-audit --no-fund --loglevel=error)
        touch "$ui/node_modules"
    fi
    (cd "$ui" && npm run --silent build)
}

# tauri-driver, the WebDriver front for the app, built once into a folder outside the clone.
ensure_tauri_driver() {
    local root="$HOME/.cache/countersign-tools"
    if [ ! -x "$root/bin/tauri-driver" ]; then
        echo "Installing tauri-driver 2.1.0 into $root"
        cargo install tauri-driver --version 2.1.0 --locked --root "$root" --quiet
    fi
    export TAURI_DRIVER="$root/bin/tauri-driver"
}
