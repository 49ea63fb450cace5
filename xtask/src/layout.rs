//! `cargo xtask check-layout`: xtask must build on a machine that has no BPF
//! toolchain yet, because installing that toolchain is xtask's job. So the
//! crates xtask is built from (its normal and build dependencies, all the
//! way down; dev-dependencies don't count) may hold no workspace member and
//! no crate whose build script builds BPF (one that uses aya-build).
//!
//! Run by CI (`.ci/fresh-machine`) and by `cargo xtask test` (the test
//! below), so reintroducing such a dependency fails loudly.

use anyhow::{Context, Result, bail};
use serde_json::Value;
use std::collections::{BTreeSet, HashMap, VecDeque};
use std::process::Command;

/// Build scripts that depend on one of these build BPF objects.
const BPF_BUILDERS: &[&str] = &["aya-build"];

pub fn run(args: &[String]) -> Result<()> {
    let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cmd.args(["metadata", "--format-version", "1", "--locked"]);
    match args {
        [] => {}
        [flag, path] if flag == "--manifest-path" => {
            cmd.args(["--manifest-path", path]);
        }
        _ => bail!("usage: cargo xtask check-layout [--manifest-path Cargo.toml]"),
    }
    let out = cmd.output().context("running cargo metadata")?;
    if !out.status.success() {
        bail!(
            "cargo metadata failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let meta: Value = serde_json::from_slice(&out.stdout).context("parsing cargo metadata")?;
    let problems = check(&meta)?;
    if !problems.is_empty() {
        bail!(
            "xtask must build without the BPF toolchain, but its dependencies include: {}",
            problems.join("; ")
        );
    }
    println!("check-layout: xtask depends on no workspace crate and no BPF build script");
    Ok(())
}

/// Every reason xtask's build closure could not build on a fresh machine.
pub fn check(meta: &Value) -> Result<Vec<String>> {
    let packages: HashMap<&str, &Value> = meta["packages"]
        .as_array()
        .context("metadata has no packages")?
        .iter()
        .filter_map(|p| Some((p["id"].as_str()?, p)))
        .collect();
    let members: BTreeSet<&str> = meta["workspace_members"]
        .as_array()
        .context("metadata has no workspace_members")?
        .iter()
        .filter_map(Value::as_str)
        .collect();
    let nodes: HashMap<&str, &Value> = meta["resolve"]["nodes"]
        .as_array()
        .context("metadata has no resolve graph")?
        .iter()
        .filter_map(|n| Some((n["id"].as_str()?, n)))
        .collect();
    let xtask = members
        .iter()
        .copied()
        .find(|id| packages.get(id).is_some_and(|p| p["name"] == "xtask"))
        .context("no xtask package in the workspace")?;

    let mut problems = Vec::new();
    let mut seen = BTreeSet::from([xtask]);
    let mut queue = VecDeque::from([xtask]);
    while let Some(id) = queue.pop_front() {
        for dep in built_from(nodes.get(id).copied()) {
            if seen.insert(dep) {
                queue.push_back(dep);
            }
        }
    }
    seen.remove(xtask);
    for id in seen {
        let Some(p) = packages.get(id) else { continue };
        let name = p["name"].as_str().unwrap_or(id);
        if members.contains(id) {
            problems.push(format!("{name} is a workspace crate"));
        }
        if let Some(b) = bpf_build_script(p) {
            problems.push(format!(
                "{name} has a build script that builds BPF (uses {b})"
            ));
        }
    }
    Ok(problems)
}

/// The packages `node` is built from: normal and build dependencies.
fn built_from(node: Option<&Value>) -> Vec<&str> {
    let Some(deps) = node.and_then(|n| n["deps"].as_array()) else {
        return Vec::new();
    };
    deps.iter()
        .filter(|d| {
            d["dep_kinds"].as_array().is_some_and(|kinds| {
                kinds
                    .iter()
                    .any(|k| k["kind"].is_null() || k["kind"] == "build")
            })
        })
        .filter_map(|d| d["pkg"].as_str())
        .collect()
}

/// The BPF builder a package's build script depends on, if any.
fn bpf_build_script(p: &Value) -> Option<&'static str> {
    let has_build_script = p["targets"].as_array()?.iter().any(|t| {
        t["kind"]
            .as_array()
            .is_some_and(|k| k.iter().any(|k| k == "custom-build"))
    });
    if !has_build_script {
        return None;
    }
    p["dependencies"].as_array()?.iter().find_map(|d| {
        let builder = BPF_BUILDERS.iter().find(|b| d["name"] == **b)?;
        (d["kind"] == "build").then_some(*builder)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pkg(id: &str, build_deps: &[&str], build_script: bool) -> Value {
        let mut targets = vec![json!({"kind": ["lib"]})];
        if build_script {
            targets.push(json!({"kind": ["custom-build"]}));
        }
        let deps: Vec<Value> = build_deps
            .iter()
            .map(|d| json!({"name": d, "kind": "build"}))
            .collect();
        json!({"id": id, "name": id, "targets": targets, "dependencies": deps})
    }

    fn edge(pkg: &str, kind: Option<&str>) -> Value {
        json!({"pkg": pkg, "dep_kinds": [{"kind": kind, "target": null}]})
    }

    fn meta(packages: Vec<Value>, members: &[&str], edges: &[(&str, Value)]) -> Value {
        let mut nodes: HashMap<String, Vec<Value>> = HashMap::new();
        for p in &packages {
            nodes.entry(p["id"].as_str().unwrap().into()).or_default();
        }
        for (from, e) in edges {
            nodes.get_mut(*from).unwrap().push(e.clone());
        }
        let nodes: Vec<Value> = nodes
            .into_iter()
            .map(|(id, deps)| json!({"id": id, "deps": deps}))
            .collect();
        json!({"packages": packages, "workspace_members": members, "resolve": {"nodes": nodes}})
    }

    #[test]
    fn tooling_crates_pass() {
        let m = meta(
            vec![
                pkg("xtask", &[], false),
                pkg("anyhow", &[], true),
                pkg("serde_json", &[], true),
            ],
            &["xtask"],
            &[
                ("xtask", edge("anyhow", None)),
                ("xtask", edge("serde_json", None)),
            ],
        );
        assert_eq!(check(&m).unwrap(), Vec::<String>::new());
    }

    #[test]
    fn a_workspace_crate_is_refused_even_through_another_crate() {
        let m = meta(
            vec![
                pkg("xtask", &[], false),
                pkg("glue", &[], false),
                pkg("netd", &[], false),
            ],
            &["xtask", "netd"],
            &[("xtask", edge("glue", None)), ("glue", edge("netd", None))],
        );
        assert_eq!(check(&m).unwrap(), vec!["netd is a workspace crate"]);
    }

    #[test]
    fn a_bpf_build_script_is_refused() {
        let m = meta(
            vec![
                pkg("xtask", &[], false),
                pkg("probes", &["aya-build"], true),
                pkg("aya-build", &[], false),
            ],
            &["xtask"],
            &[
                ("xtask", edge("probes", Some("build"))),
                ("probes", edge("aya-build", Some("build"))),
            ],
        );
        assert_eq!(
            check(&m).unwrap(),
            vec!["probes has a build script that builds BPF (uses aya-build)"]
        );
    }

    #[test]
    fn dev_dependencies_do_not_count() {
        let m = meta(
            vec![pkg("xtask", &[], false), pkg("netd", &["aya-build"], true)],
            &["xtask", "netd"],
            &[("xtask", edge("netd", Some("dev")))],
        );
        assert_eq!(check(&m).unwrap(), Vec::<String>::new());
    }

    /// The real workspace: the check CI runs, here so `cargo xtask test`
    /// catches a reintroduced dependency too.
    #[test]
    fn this_workspace_keeps_xtask_buildable_on_a_fresh_machine() {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let manifest = concat!(env!("CARGO_MANIFEST_DIR"), "/../Cargo.toml");
        let out = Command::new(cargo)
            .args([
                "metadata",
                "--format-version",
                "1",
                "--manifest-path",
                manifest,
            ])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let meta: Value = serde_json::from_slice(&out.stdout).unwrap();
        let problems = check(&meta).unwrap();
        assert!(problems.is_empty(), "xtask's build closure: {problems:?}");
    }
}
