//! `spin.toml` read strictly, checked against Spin's published manifest
//! schema, and checked for what Switchboard needs of it: routes matching the
//! REST API, narrow permissions, and build commands that produce the files.

use std::collections::BTreeSet;

use anyhow::Context;
use serde_json::Value;
use switchboard_spin_tests::{
    Manifest, built_manifest, data_dir, manifest, manifest_text, parse_manifest,
};

fn schema_validator() -> anyhow::Result<jsonschema::Validator> {
    let path = data_dir().join("spin-manifest-v2.schema.json");
    let text = std::fs::read_to_string(&path).with_context(|| format!("{}", path.display()))?;
    let schema: Value = serde_json::from_str(&text)?;
    jsonschema::validator_for(&schema).context("compiling Spin's manifest schema")
}

/// The schema's complaints about manifest text (empty when it conforms).
fn schema_errors(text: &str) -> anyhow::Result<Vec<String>> {
    let toml: toml::Value = toml::from_str(text)?;
    let instance = serde_json::to_value(&toml)?;
    Ok(schema_validator()?
        .iter_errors(&instance)
        .map(|e| format!("{} at {}", e, e.instance_path()))
        .collect())
}

/// Text with one line inserted after the line `after`.
fn with_line_after(text: &str, after: &str, line: &str) -> String {
    assert!(text.contains(after), "spin.toml has no line {after}");
    text.replacen(after, &format!("{after}\n{line}"), 1)
}

/// spin.toml parses into the strict types and conforms to Spin's manifest-v2 schema.
#[test]
fn manifest_is_strict_and_conforms_to_the_schema() -> anyhow::Result<()> {
    let text = manifest_text()?;
    let manifest = parse_manifest(&text)?;
    assert_eq!(manifest.spin_manifest_version, 2);
    assert_eq!(manifest.application.name, "switchboard");
    assert!(!manifest.application.version.is_empty());
    assert!(!manifest.application.description.is_empty());
    let errors = schema_errors(&text)?;
    assert!(errors.is_empty(), "schema violations: {errors:#?}");
    Ok(())
}

/// A misspelt key fails both checks; a key Spin knows but we do not use fails the strict parse; a missing source fails both.
#[test]
fn strictness_catches_mistakes() -> anyhow::Result<()> {
    let text = manifest_text()?;

    let misspelt = with_line_after(&text, "[component.history]", "sorce = \"x.wasm\"");
    assert!(parse_manifest(&misspelt).is_err());
    assert!(!schema_errors(&misspelt)?.is_empty());

    let unused = with_line_after(
        &text,
        "[component.history]",
        "key_value_stores = [\"default\"]",
    );
    assert!(schema_errors(&unused)?.is_empty(), "Spin accepts it");
    assert!(
        parse_manifest(&unused).is_err(),
        "but our manifest does not use it"
    );

    let sourceless = text.replacen(
        "source = \"target/components/wasm32-wasip2/component/history.wasm\"",
        "",
        1,
    );
    assert_ne!(sourceless, text);
    assert!(parse_manifest(&sourceless).is_err());
    assert!(!schema_errors(&sourceless)?.is_empty());

    let bad_version = text.replacen("spin_manifest_version = 2", "spin_manifest_version = 3", 1);
    assert!(!schema_errors(&bad_version)?.is_empty());
    Ok(())
}

/// Whether a Spin route (`:name` is one segment, a trailing `/...` anything beneath) matches `path`.
fn route_matches(route: &str, path: &str) -> bool {
    let (route, wildcard) = match route.strip_suffix("/...") {
        Some(prefix) => (prefix, true),
        None => (route, false),
    };
    let pattern: Vec<&str> = route.split('/').collect();
    let segments: Vec<&str> = path.split('/').collect();
    if segments.len() < pattern.len() || (!wildcard && segments.len() != pattern.len()) {
        return false;
    }
    pattern
        .iter()
        .zip(&segments)
        .all(|(p, s)| p.starts_with(':') && !s.is_empty() || p == s)
}

/// The component Spin would run for `path`; routes must not overlap.
fn component_for<'m>(manifest: &'m Manifest, path: &str) -> Option<&'m str> {
    let matching: Vec<&str> = manifest
        .trigger
        .http
        .iter()
        .filter(|t| route_matches(&t.route, path))
        .map(|t| t.component.as_str())
        .collect();
    assert!(
        matching.len() <= 1,
        "{path} matches several routes: {matching:?}"
    );
    matching.first().copied()
}

/// Every REST path reaches the component host-gateway hands it to (gateway/rest.rs), and other paths none.
#[test]
fn routes_match_the_rest_api() -> anyhow::Result<()> {
    let manifest = manifest()?;
    for (path, expected) in [
        ("/api/v1/chats/dm:alice:bob/messages", Some("history")),
        ("/api/v1/chats/g:1/messages/42/receipts", Some("history")),
        ("/api/v1/chats", Some("chats")),
        ("/api/v1/chats/g:1", Some("chats")),
        ("/api/v1/chats/g:1/members", Some("chats")),
        ("/api/v1/chats/g:1/members/bob", Some("chats")),
        ("/api/v1/users/bob/presence", Some("presence-query")),
        ("/api/v1/users", None),
        ("/api/v1/users/bob", None),
        ("/internal/v1/message-store/get", None),
        ("/chat/connect", None),
    ] {
        assert_eq!(component_for(&manifest, path), expected, "{path}");
    }
    for id in manifest.routed_components() {
        manifest.component(id)?;
    }
    Ok(())
}

/// The `{{ name }}` references in a string.
fn references(text: &str) -> Vec<String> {
    text.split("{{")
        .skip(1)
        .filter_map(|rest| rest.split_once("}}"))
        .map(|(name, _)| name.trim().to_owned())
        .collect()
}

/// Components reach only the store API, get exactly the adapter's three variables, and lend them to the adapter; the store token and the JWT secret are required secrets.
#[test]
fn permissions_are_narrow() -> anyhow::Result<()> {
    let manifest = manifest()?;
    for secret in ["store_api_token", "jwt_secret"] {
        let variable = &manifest.variables[secret];
        assert!(
            variable.required && variable.secret && variable.default.is_none(),
            "{secret}"
        );
    }
    let origin = &manifest.variables["store_api_origin"];
    assert!(origin.required && !origin.secret);

    let adapter_variables: BTreeSet<&str> = [
        spin_adapter::core::URL_VARIABLE,
        spin_adapter::core::TOKEN_VARIABLE,
        spin_adapter::core::CALLER_TOKEN_SECRET_VARIABLE,
    ]
    .into();
    for (id, component) in &manifest.component {
        for text in component
            .variables
            .values()
            .chain(&component.allowed_outbound_hosts)
        {
            for name in references(text) {
                assert!(
                    manifest.variables.contains_key(&name),
                    "{id}: undeclared {name}"
                );
            }
        }
        if component.dependencies.is_empty() {
            // The adapter itself: its own settings would be ignored when composed.
            assert!(component.allowed_outbound_hosts.is_empty(), "{id}");
            assert!(component.variables.is_empty(), "{id}");
            assert!(!manifest.routed_components().contains(&id.as_str()), "{id}");
            continue;
        }
        assert_eq!(
            component.allowed_outbound_hosts,
            ["{{ store_api_origin }}"],
            "{id}"
        );
        assert!(component.dependencies_inherit_configuration, "{id}");
        let names: BTreeSet<&str> = component.variables.keys().map(String::as_str).collect();
        assert_eq!(names, adapter_variables, "{id}");
        assert_eq!(
            component.variables[spin_adapter::core::URL_VARIABLE],
            "{{ store_api_origin }}"
        );
        for (name, dependency) in &component.dependencies {
            assert_eq!(name, "chat:platform@0.1.0", "{id}");
            assert_eq!(dependency.component, "spin-adapter", "{id}");
        }
    }
    Ok(())
}

/// Each component's build command, run as `spin build` runs it, produces its `source`, and that file is a component.
#[test]
fn build_commands_produce_the_sources() -> anyhow::Result<()> {
    let manifest = built_manifest();
    for id in manifest.component.keys() {
        let bytes = switchboard_spin_tests::component_bytes(id)?;
        assert_eq!(
            bytes.get(..8),
            Some(&[0x00, 0x61, 0x73, 0x6d, 0x0d, 0x00, 0x01, 0x00][..]),
            "{id} is not a component"
        );
    }
    Ok(())
}

/// What Spin deploys is byte for byte what host-gateway runs: each routed
/// component's `source`, as its build command made it, equals the component
/// embedded in the host binary.
#[test]
fn spin_deploys_the_files_the_host_embeds() -> anyhow::Result<()> {
    let manifest = built_manifest();
    for id in manifest.routed_components() {
        let deployed = switchboard_spin_tests::component_bytes(id)?;
        let embedded = host_gateway::runtime::ComponentSource::Embedded.load(id)?;
        assert!(
            deployed == embedded,
            "{id}: spin.toml's build gives {} bytes, the host embeds {}",
            deployed.len(),
            embedded.len()
        );
    }
    Ok(())
}
