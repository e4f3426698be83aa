//! Builds the example handlers and the sandbox test fixtures into WebAssembly
//! components, so `cargo run` and `cargo test` need no extra step.
//!
//! They are separate workspaces (`examples/`, `runtime/edgeroom/tests/fixtures/`) built for
//! wasm32-wasip2 into `<target>/wasm-guests`, shared by every profile. Their paths reach
//! the runtime as `EDGEROOM_EXAMPLES_DIR` and `EDGEROOM_FIXTURES_DIR`.

use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    let manifest =
        PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let root = manifest
        .ancestors()
        .nth(2)
        .expect("runtime/edgeroom/ sits in the workspace")
        .to_path_buf();
    let target = target_dir(&root);
    let out = target.join("wasm-guests");

    for dir in [
        "guest-sdk/src",
        "guest-sdk/wit",
        "guest-sdk/Cargo.toml",
        "examples",
        "runtime/edgeroom/tests/fixtures",
    ] {
        println!("cargo:rerun-if-changed={}", root.join(dir).display());
    }
    println!("cargo:rerun-if-changed=build.rs");

    build(&root, &root.join("examples/Cargo.toml"), &out);
    build(&root, &manifest.join("tests/fixtures/Cargo.toml"), &out);

    let wasm = out.join("wasm32-wasip2/release");
    println!("cargo:rustc-env=EDGEROOM_EXAMPLES_DIR={}", wasm.display());
    println!("cargo:rustc-env=EDGEROOM_FIXTURES_DIR={}", wasm.display());
}

/// The workspace target directory: `CARGO_TARGET_DIR`, or the one holding `OUT_DIR`
/// (`<target>/<profile>/build/<pkg>-<hash>/out`).
fn target_dir(root: &Path) -> PathBuf {
    if let Ok(t) = std::env::var("CARGO_TARGET_DIR") {
        let t = PathBuf::from(t);
        return if t.is_absolute() { t } else { root.join(t) };
    }
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    out.ancestors()
        .nth(4)
        .map(Path::to_path_buf)
        .unwrap_or_else(|| root.join("target"))
}

fn build(root: &Path, manifest: &Path, target_dir: &Path) {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(root)
        .args([
            "build",
            "--release",
            "--target",
            "wasm32-wasip2",
            "--manifest-path",
        ])
        .arg(manifest)
        .arg("--target-dir")
        .arg(target_dir);
    // The outer build's settings are not the guests': clippy's wrapper, host RUSTFLAGS,
    // coverage instrumentation and the like must not leak into the wasm build.
    for var in [
        "RUSTC_WRAPPER",
        "RUSTC_WORKSPACE_WRAPPER",
        "RUSTFLAGS",
        "CARGO_ENCODED_RUSTFLAGS",
        "CARGO_BUILD_TARGET",
        "CARGO_TARGET_DIR",
        "CARGO_BUILD_RUSTFLAGS",
        "CARGO_PRIMARY_PACKAGE",
        "CARGO_MAKEFLAGS",
    ] {
        cmd.env_remove(var);
    }
    let status = cmd
        .status()
        .unwrap_or_else(|e| panic!("could not run cargo for {}: {e}", manifest.display()));
    if !status.success() {
        panic!(
            "building the wasm handlers in {} failed (errors above). If the wasm32-wasip2 target is missing, `rustup toolchain install` in the repository installs it",
            manifest.display()
        );
    }
}
