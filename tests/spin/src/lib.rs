//! What the Spin deployment tests share: `spin.toml` read strictly, the
//! vendored Spin data, and the component files the manifest's own build
//! commands produce.
//!
//! The Spin CLI cannot run here, so these tests do what it would do with
//! the manifest, one step at a time: parse it (`tests/manifest.rs`), check
//! each component's imports and exports against the worlds Spin serves
//! (`tests/imports.rs`), and compose and run a component with its adapter
//! dependency against a real gateway (`tests/composed.rs`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use anyhow::{Context, bail, ensure};
use serde::Deserialize;

/// The oldest Spin the manifest supports: `{ component = "..." }` dependencies came in 3.5.
pub const SPIN_VERSION: &str = "3.5.0";

/// `spin.toml`, limited to what Switchboard's manifest may say: any other
/// key, even one Spin knows, fails the parse, so a change to the manifest
/// is a change to these types and is reviewed with the tests.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub spin_manifest_version: u32,
    pub application: Application,
    #[serde(default)]
    pub variables: BTreeMap<String, Variable>,
    pub trigger: Triggers,
    pub component: BTreeMap<String, Component>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Application {
    pub name: String,
    pub version: String,
    pub description: String,
}

/// An application variable: either required or defaulted.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Variable {
    #[serde(default)]
    pub required: bool,
    pub default: Option<String>,
    #[serde(default)]
    pub secret: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Triggers {
    pub http: Vec<HttpTrigger>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpTrigger {
    pub route: String,
    pub component: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Component {
    pub description: String,
    /// A path relative to the manifest.
    pub source: String,
    #[serde(default)]
    pub allowed_outbound_hosts: Vec<String>,
    #[serde(default)]
    pub dependencies_inherit_configuration: bool,
    #[serde(default)]
    pub variables: BTreeMap<String, String>,
    #[serde(default)]
    pub dependencies: BTreeMap<String, Dependency>,
    pub build: Build,
}

/// A dependency on another component of the application (Spin 3.5).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Dependency {
    pub component: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Build {
    pub command: String,
    pub watch: Vec<String>,
}

/// The workspace root, where `spin.toml` is.
pub fn repo_root() -> PathBuf {
    switchboard_e2e::workspace_root()
}

/// This crate's vendored data (see `data/README.md`).
pub fn data_dir() -> PathBuf {
    repo_root().join("tests/spin/data")
}

/// The text of `spin.toml`.
pub fn manifest_text() -> anyhow::Result<String> {
    let path = repo_root().join("spin.toml");
    std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))
}

/// Parses manifest text strictly.
pub fn parse_manifest(text: &str) -> anyhow::Result<Manifest> {
    toml::from_str(text).context("spin.toml does not parse strictly")
}

/// `spin.toml`, parsed strictly.
pub fn manifest() -> anyhow::Result<Manifest> {
    parse_manifest(&manifest_text()?)
}

impl Manifest {
    /// The ids of the components that HTTP triggers route to, each once.
    pub fn routed_components(&self) -> Vec<&str> {
        let mut ids: Vec<&str> = self
            .trigger
            .http
            .iter()
            .map(|t| t.component.as_str())
            .collect();
        ids.sort_unstable();
        ids.dedup();
        ids
    }

    pub fn component(&self, id: &str) -> anyhow::Result<&Component> {
        self.component
            .get(id)
            .with_context(|| format!("spin.toml has no component {id}"))
    }
}

/// Runs every component's `build.command` from the workspace root, as
/// `spin build` does, once per test process; then returns the manifest with
/// every `source` checked to exist.
///
/// The commands write to `target/components` inside the checkout. When
/// cargo's target directory is kept elsewhere (CI keeps it across fresh
/// clones), that is first linked to the build script's directory (see
/// `link_spin_target`); the commands themselves run exactly as written.
pub fn built_manifest() -> &'static Manifest {
    static BUILT: OnceLock<Result<Manifest, String>> = OnceLock::new();
    match BUILT.get_or_init(|| build_all().map_err(|e| format!("{e:#}"))) {
        Ok(manifest) => manifest,
        Err(e) => panic!("building the Spin components failed: {e}"),
    }
}

fn build_all() -> anyhow::Result<Manifest> {
    let root = repo_root();
    let manifest = manifest()?;
    link_spin_target(&root)?;
    for (id, component) in &manifest.component {
        let words: Vec<&str> = component.build.command.split_whitespace().collect();
        let Some((program, args)) = words.split_first() else {
            bail!("component {id} has an empty build command");
        };
        let source = root.join(&component.source);
        // A file left by an earlier run must not pass for this build's output.
        match std::fs::remove_file(&source) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("removing {}", source.display())),
        }
        let mut command = Command::new(program);
        command.args(args).current_dir(&root);
        // A nested cargo must not inherit the variables cargo sets for this
        // test (build scripts would see a changed environment and rerun);
        // the user's cargo settings (offline, registries, ...) stay.
        for (key, _) in std::env::vars_os() {
            let key = key.to_string_lossy().into_owned();
            let set_by_cargo = key.starts_with("CARGO_PKG_")
                || key.starts_with("CARGO_MANIFEST_")
                || key.starts_with("CARGO_BIN_")
                || key.starts_with("CARGO_CRATE_")
                || matches!(
                    key.as_str(),
                    "CARGO_TARGET_DIR" | "CARGO_PRIMARY_PACKAGE" | "RUSTFLAGS"
                );
            if set_by_cargo {
                command.env_remove(&key);
            }
        }
        let status = command
            .status()
            .with_context(|| format!("running the build command of {id}"))?;
        ensure!(
            status.success(),
            "the build command of {id} failed ({status}): {}",
            component.build.command
        );
        ensure!(
            source.is_file(),
            "the build command of {id} did not produce its source {}",
            source.display()
        );
    }
    Ok(manifest)
}

/// With artefacts kept outside the checkout (`CARGO_TARGET_DIR`, as CI
/// does), `target/components` (where spin.toml builds) points at
/// `$CARGO_TARGET_DIR/components` (where host-gateway's build script
/// builds), so `spin build` here reuses that build instead of repeating it.
fn link_spin_target(root: &Path) -> anyhow::Result<()> {
    let link = root.join("target").join("components");
    let Some(target_dir) = std::env::var_os("CARGO_TARGET_DIR").map(|d| root.join(d)) else {
        return Ok(());
    };
    if link.exists() || target_dir == root.join("target") {
        return Ok(());
    }
    let kept = target_dir.join("components");
    std::fs::create_dir_all(&kept).with_context(|| format!("creating {}", kept.display()))?;
    std::fs::create_dir_all(root.join("target"))?;
    #[cfg(unix)]
    std::os::unix::fs::symlink(&kept, &link)
        .with_context(|| format!("linking {} to {}", link.display(), kept.display()))?;
    Ok(())
}

/// The bytes of a component's `source`, after the build.
pub fn component_bytes(id: &str) -> anyhow::Result<Vec<u8>> {
    let manifest = built_manifest();
    let path = repo_root().join(&manifest.component(id)?.source);
    std::fs::read(&path).with_context(|| format!("reading {}", path.display()))
}

/// `component` composed with the dependencies that the manifest names for
/// it, the way Spin composes them: each import the dependency exports is
/// filled by that export, and the rest stay imports of the result.
pub fn compose(id: &str) -> anyhow::Result<Vec<u8>> {
    let manifest = built_manifest();
    let component = manifest.component(id)?;
    let root = repo_root();
    // wasm-compose also looks for `<import>.wasm` files in its directory:
    // an empty one, so only the declared dependencies take part.
    let scratch = std::env::temp_dir().join(format!("switchboard-spin-{}", std::process::id()));
    std::fs::create_dir_all(&scratch)?;
    // wasm-compose names a definition after its file, and component names
    // must be kebab-case: copy each as `<spin component id>.wasm`.
    let definitions = component
        .dependencies
        .values()
        .map(|dep| {
            let source = root.join(&manifest.component(&dep.component)?.source);
            let named = scratch.join(format!("{}.wasm", dep.component));
            std::fs::copy(&source, &named)
                .with_context(|| format!("copying {}", source.display()))?;
            Ok(named)
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let config = wasm_compose::config::Config {
        dir: scratch,
        definitions,
        ..Default::default()
    };
    wasm_compose::composer::ComponentComposer::new(&root.join(&component.source), &config)
        .compose()
        .with_context(|| format!("composing {id} with its dependencies"))
}
