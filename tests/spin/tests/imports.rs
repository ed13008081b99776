//! Every component the manifest names links on Spin 3.5: each import is
//! either served by Spin (an interface of the `spin:up/platform@3.5.0`
//! world) or filled by a declared dependency, and each routed component
//! exports the handler of Spin's HTTP trigger world.
//!
//! "Served by Spin" is decided as wasmtime's linker (Spin's and ours)
//! decides it: same interface name, a semver-compatible version (same major,
//! or same minor below 1.0; pre-releases only exactly), and every imported
//! function present. So an import of `wasi:io/streams@0.2.6` is served by a
//! host whose WIT says `@0.2.0` if it uses only functions 0.2.0 has.

use std::collections::{BTreeMap, BTreeSet};

use anyhow::{Context, bail};
use semver::Version;
use switchboard_spin_tests::{SPIN_VERSION, built_manifest, component_bytes, compose, data_dir};
use wit_parser::decoding::{DecodedWasm, decode};
use wit_parser::{Resolve, WorldId, WorldItem, WorldKey};

/// One interface a world imports or exports.
#[derive(Debug, Clone)]
struct Iface {
    /// `namespace:package/interface`
    name: String,
    version: Option<Version>,
    functions: BTreeSet<String>,
}

impl std::fmt::Display for Iface {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.version {
            Some(v) => write!(f, "{}@{v}", self.name),
            None => write!(f, "{}", self.name),
        }
    }
}

fn interfaces<'a>(
    resolve: &Resolve,
    items: impl Iterator<Item = (&'a WorldKey, &'a WorldItem)>,
) -> anyhow::Result<Vec<Iface>> {
    let mut out = Vec::new();
    for (key, item) in items {
        match item {
            WorldItem::Interface { id, .. } => {
                let iface = &resolve.interfaces[*id];
                let (Some(name), Some(package)) = (&iface.name, iface.package) else {
                    bail!("unnamed interface {key:?}");
                };
                let package = &resolve.packages[package].name;
                out.push(Iface {
                    name: format!("{}:{}/{name}", package.namespace, package.name),
                    version: package.version.clone(),
                    functions: iface.functions.keys().cloned().collect(),
                });
            }
            WorldItem::Function(f) => bail!("a bare function import or export: {}", f.name),
            // Types used at the world's top level carry no behaviour to link.
            WorldItem::Type { .. } => {}
        }
    }
    Ok(out)
}

/// The imports and exports of a component's world.
struct Shape {
    imports: Vec<Iface>,
    exports: Vec<Iface>,
}

fn shape_of_world(resolve: &Resolve, world: WorldId) -> anyhow::Result<Shape> {
    let w = &resolve.worlds[world];
    Ok(Shape {
        imports: interfaces(resolve, w.imports.iter())?,
        exports: interfaces(resolve, w.exports.iter())?,
    })
}

fn shape_of_component(bytes: &[u8]) -> anyhow::Result<Shape> {
    match decode(bytes).context("decoding the component")? {
        DecodedWasm::Component(resolve, world) => shape_of_world(&resolve, world),
        DecodedWasm::WitPackage(..) => bail!("a WIT package, not a component"),
    }
}

/// A world of Spin's vendored WIT, e.g. `spin:up/platform@3.5.0`.
fn spin_world(id: &str) -> anyhow::Result<Shape> {
    let mut resolve = Resolve::default();
    let dir = data_dir().join(format!("spin-v{SPIN_VERSION}")).join("wit");
    let (package, _) = resolve
        .push_dir(&dir)
        .with_context(|| format!("parsing {}", dir.display()))?;
    let world = resolve.select_world(&[package], Some(id))?;
    shape_of_world(&resolve, world)
}

fn spin_platform() -> anyhow::Result<Vec<Iface>> {
    Ok(spin_world(&format!("spin:up/platform@{SPIN_VERSION}"))?.imports)
}

/// The export Spin's HTTP trigger calls for wasi:http 0.2 components.
fn spin_http_handler() -> anyhow::Result<Iface> {
    let world = spin_world("fermyon:spin/http-trigger@2.0.0")?;
    match world.exports.as_slice() {
        [handler] => Ok(handler.clone()),
        other => bail!("the trigger world exports {} interfaces", other.len()),
    }
}

/// Whether a host interface at `host` serves an import at `import`.
fn semver_compatible(host: &Option<Version>, import: &Option<Version>) -> bool {
    match (host, import) {
        (None, None) => true,
        (Some(h), Some(i)) if !h.pre.is_empty() || !i.pre.is_empty() => h == i,
        (Some(h), Some(i)) if h.major == 0 && i.major == 0 => h.minor == i.minor,
        (Some(h), Some(i)) => h.major == i.major,
        _ => false,
    }
}

/// Whether `provider` (a host or dependency interface) satisfies `wanted`.
fn satisfies(provider: &Iface, wanted: &Iface) -> bool {
    provider.name == wanted.name
        && semver_compatible(&provider.version, &wanted.version)
        && wanted.functions.is_subset(&provider.functions)
}

fn served_by<'a>(wanted: &Iface, provided: &'a [Iface]) -> Option<&'a Iface> {
    provided.iter().find(|p| satisfies(p, wanted))
}

/// A dependency name of the manifest (`ns:pkg`, `ns:pkg/iface`, either
/// `@version`) matches an import as Spin matches them: same package, same
/// interface if named, same version if given.
fn dependency_matches(dependency: &str, import: &Iface) -> bool {
    let (name, version) = match dependency.split_once('@') {
        Some((name, version)) => (name, Version::parse(version).ok()),
        None => (dependency, None),
    };
    let (package, interface) = match name.split_once('/') {
        Some((package, interface)) => (package, Some(interface)),
        None => (name, None),
    };
    let Some((import_package, import_interface)) = import.name.split_once('/') else {
        return false;
    };
    import_package == package
        && interface.is_none_or(|i| i == import_interface)
        && version.is_none_or(|v| import.version.as_ref() == Some(&v))
}

/// The imports of `shape` that Spin does not serve, as text.
fn unserved(shape: &Shape, platform: &[Iface]) -> Vec<String> {
    shape
        .imports
        .iter()
        .filter(|i| served_by(i, platform).is_none())
        .map(ToString::to_string)
        .collect()
}

/// Each routed component's imports are served by Spin 3.5 or by its declared dependency's exports, and the dependency's own imports by Spin.
#[test]
fn imports_are_served_by_spin_or_a_dependency() -> anyhow::Result<()> {
    let manifest = built_manifest();
    let platform = spin_platform()?;
    assert!(
        platform
            .iter()
            .any(|i| i.name == "wasi:http/outgoing-handler"),
        "the vendored Spin platform world looks wrong"
    );
    let mut problems = Vec::new();
    for id in manifest.routed_components() {
        let component = manifest.component(id)?;
        let shape = shape_of_component(&component_bytes(id)?)?;
        let mut dependencies = BTreeMap::new();
        for (name, dependency) in &component.dependencies {
            let dep_shape = shape_of_component(&component_bytes(&dependency.component)?)?;
            for missing in unserved(&dep_shape, &platform) {
                problems.push(format!(
                    "{id}: its dependency {name} imports {missing}, which Spin does not serve"
                ));
            }
            // Spin gives a dependency no permissions unless it inherits them.
            let needs_permissions = dep_shape.imports.iter().any(|i| {
                i.name == "wasi:http/outgoing-handler" || i.name == "fermyon:spin/variables"
            });
            if needs_permissions && !component.dependencies_inherit_configuration {
                problems.push(format!(
                    "{id}: {name} calls out but inherits no configuration"
                ));
            }
            dependencies.insert(name.as_str(), dep_shape);
        }
        for import in &shape.imports {
            let by_dependency = dependencies
                .iter()
                .find(|(name, _)| dependency_matches(name, import));
            match by_dependency {
                Some((name, dep)) => {
                    if served_by(import, &dep.exports).is_none() {
                        problems.push(format!("{id}: dependency {name} does not export {import}"));
                    }
                }
                None if served_by(import, &platform).is_some() => {}
                None => problems.push(format!("{id}: nothing serves {import}")),
            }
        }
        for name in dependencies.keys() {
            if !shape.imports.iter().any(|i| dependency_matches(name, i)) {
                problems.push(format!(
                    "{id}: dependency {name} matches no import (Spin refuses that)"
                ));
            }
        }
    }
    assert!(problems.is_empty(), "{problems:#?}");
    Ok(())
}

/// The checker is not vacuous: without its dependency, history's chat:platform imports are unserved, and a renamed function is caught.
#[test]
fn the_check_can_fail() -> anyhow::Result<()> {
    let platform = spin_platform()?;
    let history = shape_of_component(&component_bytes("history")?)?;
    let missing = unserved(&history, &platform);
    assert!(
        missing
            .iter()
            .any(|m| m.starts_with("chat:platform/message-store@")),
        "{missing:?}"
    );
    let mut renamed = platform
        .iter()
        .find(|i| i.name == "wasi:http/outgoing-handler")
        .cloned()
        .context("outgoing-handler")?;
    assert!(served_by(&renamed, &platform).is_some());
    renamed.functions.insert("handle-v2".into());
    assert!(served_by(&renamed, &platform).is_none());
    renamed.functions.remove("handle-v2");
    renamed.version = Some(Version::new(0, 3, 0));
    assert!(served_by(&renamed, &platform).is_none());
    Ok(())
}

/// Each routed component exports the handler of Spin's `fermyon:spin/http-trigger@2.0.0` world (wasi:http 0.2 incoming-handler).
#[test]
fn exports_match_the_http_trigger_world() -> anyhow::Result<()> {
    let manifest = built_manifest();
    let handler = spin_http_handler()?;
    assert_eq!(handler.name, "wasi:http/incoming-handler");
    for id in manifest.routed_components() {
        let shape = shape_of_component(&component_bytes(id)?)?;
        let exported = shape.exports.iter().find(|e| e.name == handler.name);
        let Some(exported) = exported else {
            panic!("{id} does not export {handler}");
        };
        assert!(
            semver_compatible(&handler.version, &exported.version)
                && exported.functions == handler.functions,
            "{id} exports {exported}, Spin calls {handler}"
        );
    }
    Ok(())
}

/// Composed as Spin composes them, each routed component imports only what Spin 3.5 serves and still exports the handler.
#[test]
fn composed_components_need_only_spin() -> anyhow::Result<()> {
    let manifest = built_manifest();
    let platform = spin_platform()?;
    let handler = spin_http_handler()?;
    for id in manifest.routed_components() {
        let composed = shape_of_component(&compose(id)?)?;
        let missing = unserved(&composed, &platform);
        assert!(
            missing.is_empty(),
            "{id} composed still imports {missing:?}"
        );
        assert!(
            composed.exports.iter().any(|e| satisfies(e, &handler)),
            "{id} composed lost its handler export"
        );
    }
    Ok(())
}
