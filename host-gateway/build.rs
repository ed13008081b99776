//! Builds the Wasm components and embeds them in the host binary, so that
//! `cargo run -p host-gateway` is the whole system.
//!
//! The components are built by a nested cargo into their own target
//! directory (`<target>/components`): the outer build holds the lock of the
//! main one. Set `SWITCHBOARD_PREBUILT_COMPONENTS=<dir>` to embed already
//! built `<name>.wasm` files instead (`-` in a name as `_`, as cargo writes it).

use std::path::{Path, PathBuf};
use std::process::Command;

const COMPONENTS: [&str; 6] = [
    "send",
    "fanout",
    "presence",
    "history",
    "chats",
    "presence-query",
];

fn main() {
    let manifest_dir =
        PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let root = manifest_dir
        .parent()
        .expect("host-gateway lives in the workspace")
        .to_path_buf();
    let out_dir = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    println!("cargo:rerun-if-env-changed=SWITCHBOARD_PREBUILT_COMPONENTS");

    let wasm_dir = match std::env::var_os("SWITCHBOARD_PREBUILT_COMPONENTS") {
        Some(dir) => PathBuf::from(dir),
        None => build_components(&root),
    };

    let mut code = format!(
        "/// The components built with this host, by name.\npub const NAMES: [&str; {}] = {COMPONENTS:?};\n\n",
        COMPONENTS.len()
    );
    code.push_str(
        "/// The component binaries built with this host.\npub fn get(name: &str) -> Option<&'static [u8]> {\n    match name {\n",
    );
    for name in COMPONENTS {
        // Cargo names a library's artefact with `_` where its package has `-`.
        let path = wasm_dir.join(format!("{}.wasm", name.replace('-', "_")));
        assert!(path.exists(), "component {} was not built", path.display());
        println!("cargo:rerun-if-changed={}", path.display());
        code.push_str(&format!(
            "        {name:?} => Some(include_bytes!({:?})),\n",
            path.display().to_string()
        ));
    }
    code.push_str("        _ => None,\n    }\n}\n");
    std::fs::write(out_dir.join("components.rs"), code).expect("writing components.rs");
}

fn build_components(root: &Path) -> PathBuf {
    for dir in ["wit", "components"] {
        println!("cargo:rerun-if-changed={}", root.join(dir).display());
    }
    println!(
        "cargo:rerun-if-changed={}",
        root.join("Cargo.lock").display()
    );
    // Beside the outer build's artefacts: `<target>/components`, where
    // `<target>` is CARGO_TARGET_DIR (relative to the workspace) or `target`.
    println!("cargo:rerun-if-env-changed=CARGO_TARGET_DIR");
    let target_dir = std::env::var_os("CARGO_TARGET_DIR")
        .map_or_else(|| root.join("target"), |dir| root.join(dir))
        .join("components");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(root)
        .args([
            "build",
            "--locked",
            "--profile",
            "component",
            "--target",
            "wasm32-wasip2",
            "--target-dir",
        ])
        .arg(&target_dir);
    // The same command as the spin.toml build commands, so Spin deploys
    // these very files (tests/spin checks the bytes).
    for name in COMPONENTS {
        cmd.args(["-p", name]);
    }
    // The outer build's settings are for the host, not for wasm guests.
    for var in [
        "RUSTFLAGS",
        "CARGO_ENCODED_RUSTFLAGS",
        "CARGO_BUILD_TARGET",
        "CARGO_TARGET_DIR",
    ] {
        cmd.env_remove(var);
    }
    let status = cmd.status().expect("running cargo to build the components");
    assert!(
        status.success(),
        "building the wasm components failed (see the output above)"
    );
    target_dir.join("wasm32-wasip2").join("component")
}
