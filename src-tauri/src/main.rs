//! `countersign-app`: the desktop window. Its store is in `COUNTERSIGN_DATA_DIR` (or the
//! CLI's data folder).

/// WebKit's switch for drawing pages without its compositor: without a GPU (a virtual display,
/// a remote desktop, a VM) the compositor draws through software OpenGL, each frame of the
/// queue took about 70 ms and the web process used about 440 MB with 10,000 requests; drawn
/// without it, 16 ms and about 260 MB (see the README). The table and forms need no GPU.
const NO_COMPOSITING: &str = "WEBKIT_DISABLE_COMPOSITING_MODE";

/// glvnd's list of EGL drivers to load, read once per process when EGL is first used.
const EGL_DRIVERS: &str = "__EGL_VENDOR_LIBRARY_FILENAMES";

/// Keeps OpenGL out of this process (WebKit's UI side) when pages are drawn without the
/// compositor: nothing is drawn through it then, yet GTK's X11 visuals (GLX) and WebKit's UI
/// (EGL) each load Mesa's software OpenGL and the LLVM it links, 51 MB resident and their
/// loading at every start. GTK is told so by `GDK_GL=disable`; WebKit's processes inherit it,
/// and with it their libraries and memory are as without it. EGL is left without a driver
/// here alone: WebKit's web process cannot start without one, so the variable naming no
/// driver is set only while glvnd reads its list, at the start of `main`, and removed before
/// the app starts any thread or process. Whoever set either keeps their choice.
///
/// Limitation: the environment is changed while one thread besides this one exists: the
/// scavenger that JavaScriptCore's allocator starts from libwebkit2gtk's constructors, before
/// `main`. It sleeps then, and reads no variable that is changed here.
fn without_opengl_here() {
    if std::env::var_os("GDK_GL").is_none() {
        std::env::set_var("GDK_GL", "disable");
    }
    if std::env::var_os(EGL_DRIVERS).is_some()
        || std::env::var_os("__EGL_VENDOR_LIBRARY_DIRS").is_some()
    {
        return;
    }
    std::env::set_var(EGL_DRIVERS, "/nonexistent/countersign-no-egl-driver.json");
    read_egl_driver_list();
    std::env::remove_var(EGL_DRIVERS);
}

/// Makes glvnd's libEGL read its driver list now (it reads it once, at its first use).
#[expect(unsafe_code, reason = "an FFI edge: loading libEGL and calling eglQueryString")]
fn read_egl_driver_list() {
    type QueryString = unsafe extern "C" fn(*mut std::ffi::c_void, i32) -> *const std::ffi::c_char;
    const EGL_EXTENSIONS: i32 = 0x3055;
    // SAFETY: libEGL.so.1 (glvnd's dispatcher on Debian, Mesa's own EGL where there is no
    // glvnd) is already loaded, as WebKit links it, and its initialisers have run. eglQueryString is declared in EGL 1.5 as
    // `const char *eglQueryString(EGLDisplay, EGLint)`; with EGL_NO_DISPLAY (null) and
    // EGL_EXTENSIONS it returns a static string (or null), which is not kept.
    unsafe {
        let Ok(egl) = libloading::Library::new("libEGL.so.1") else { return };
        if let Ok(query) = egl.get::<QueryString>(b"eglQueryString\0") {
            query(std::ptr::null_mut(), EGL_EXTENSIONS);
        }
        // Not closed: the list glvnd read lives in the library.
        std::mem::forget(egl);
    }
}

fn main() -> std::process::ExitCode {
    // Before the app starts any thread (see the limitation of `without_opengl_here`), and
    // inherited by WebKit's processes. Whoever has set it (`0` lets WebKit composite on the
    // GPU), or has asked WebKit to always composite, keeps their choice.
    if std::env::var_os(NO_COMPOSITING).is_none()
        && std::env::var_os("WEBKIT_FORCE_COMPOSITING_MODE").is_none()
    {
        std::env::set_var(NO_COMPOSITING, "1");
    }
    // WebKit draws without its compositor for any value but `0`.
    if std::env::var_os(NO_COMPOSITING).is_some_and(|v| v != "0") {
        without_opengl_here();
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
