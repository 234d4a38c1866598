# What the test, demo and benchmark scripts share: installing Debian packages, a private
# keyring, the desktop app's system packages, building the web UI (its npm packages from
# package-lock.json when missing) and tauri-driver. Sourced, not run.

install_missing() {
    local missing=()
    for package in "$@"; do
        if ! dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed"; then
            missing+=("$package")
        fi
    done
    if [ "${#missing[@]}" -eq 0 ]; then
        return
    fi
    echo "Installing: ${missing[*]}"
    local sudo=""
    if [ "$(id -u)" -ne 0 ]; then
        sudo="sudo"
    fi
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
}

# Whether a Secret Service answers on the session bus.
has_keyring() {
    gdbus call --session --dest org.freedesktop.DBus --object-path /org/freedesktop/DBus \
        --method org.freedesktop.DBus.NameHasOwner org.freedesktop.secrets 2>/dev/null | grep -q true
}

# A gnome-keyring of our own on the current session bus, unlocked with a throwaway password,
# its files in a temporary folder; stop it with stop_keyring.
start_keyring() {
    keyring_home="$(mktemp -d)"
    export XDG_DATA_HOME="$keyring_home/data"
    export XDG_RUNTIME_DIR="$keyring_home/run"
    mkdir -p "$XDG_DATA_HOME" "$XDG_RUNTIME_DIR"
    chmod 700 "$XDG_RUNTIME_DIR"
    printf 'throwaway-keyring\n' |
        gnome-keyring-daemon --unlock --components=secrets --foreground >"$keyring_home/daemon.log" 2>&1 &
    keyring_pid=$!
    for _ in $(seq 1 100); do
        if has_keyring; then
            return
        fi
        sleep 0.1
    done
    echo "gnome-keyring did not take org.freedesktop.secrets:" >&2
    cat "$keyring_home/daemon.log" >&2
    exit 1
}

stop_keyring() {
    if [ -n "${keyring_pid:-}" ]; then
        kill "$keyring_pid" 2>/dev/null || true
        wait "$keyring_pid" 2>/dev/null || true
    fi
    [ -n "${keyring_home:-}" ] && rm -rf "$keyring_home"
    return 0
}

# WebKitGTK to build and run the app, libudev for the Ledger's and the security key's USB HID
# transports (libclang for the latter's bindings), its WebDriver, a virtual display, and
# Node.js for the UI.
# (npm comes with some Node.js packages and separately with Debian's: see check_node.)
app_packages=(libwebkit2gtk-4.1-dev libudev-dev libclang-dev webkit2gtk-driver xvfb nodejs)

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
