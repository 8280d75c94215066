//! Link flags for the `wasmlet` executable alone (dependencies build as they would).
fn main() {
    let gnu_linux = std::env::var("CARGO_CFG_TARGET_OS").as_deref() == Ok("linux")
        && std::env::var("CARGO_CFG_TARGET_ENV").as_deref() == Ok("gnu");
    if !gnu_linux {
        return;
    }
    // Relative relocations packed (DT_RELR, glibc 2.36 and later): the ~44,000 of this
    // position-independent executable take a few KiB instead of the 1 MiB table the
    // loader read, and kept resident, at every start.
    println!("cargo:rustc-link-arg-bins=-Wl,-z,pack-relative-relocs");
    // Release builds lay out together the functions the agent runs from start to idle
    // (listed by scripts/startup-order.sh; names not found are skipped). lld's option.
    let order = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("startup.order");
    if std::env::var("PROFILE").as_deref() == Ok("release") && order.is_file() {
        println!("cargo:rustc-link-arg-bins=-Wl,--symbol-ordering-file={}", order.display());
        println!("cargo:rustc-link-arg-bins=-Wl,--no-warn-symbol-ordering");
    }
    // scripts/startup-order.sh asks for the linker's map, to name what runs at start
    if let Ok(map) = std::env::var("WASMLET_LINK_MAP") {
        println!("cargo:rustc-link-arg-bins=-Wl,-Map={map}");
    }
    println!("cargo:rerun-if-env-changed=WASMLET_LINK_MAP");
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=startup.order");
}
