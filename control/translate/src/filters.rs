//! Maille's filters as Envoy HTTP filters delivered over ECDS.

use crate::names;
use crate::proto::*;
use crate::world::Module;
use envoy_types::pb::envoy::config::core::v3 as core;
use envoy_types::pb::envoy::extensions::dynamic_modules::v3 as dm;
use envoy_types::pb::envoy::extensions::filters::http::dynamic_modules::v3 as dm_filter;
use envoy_types::pb::envoy::extensions::filters::http::wasm::v3 as wasm_filter;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3 as hcm;
use envoy_types::pb::envoy::extensions::wasm::v3 as wasm;
use envoy_types::pb::google::protobuf::StringValue;
use maille_model::Runtime;
use prost::Name;

/// An HTTP filter whose config comes over ECDS; `disabled` filters run only on routes that
/// enable them.
pub(crate) fn ecds_filter(name: &str, disabled: bool, runtime: Runtime) -> hcm::HttpFilter {
    let type_url = match runtime {
        Runtime::Wasm => wasm_filter::Wasm::type_url(),
        Runtime::Native => dm_filter::DynamicModuleFilter::type_url(),
    };
    hcm::HttpFilter {
        name: name.to_owned(),
        disabled,
        config_type: Some(hcm::http_filter::ConfigType::ConfigDiscovery(
            core::ExtensionConfigSource {
                config_source: Some(ads()),
                type_urls: vec![type_url],
                ..Default::default()
            },
        )),
        ..Default::default()
    }
}

/// The ECDS resource `name` of Maille's filter `filter` (`canary`, `breaker`) in `runtime`,
/// from `module` with `config`, and the HTTP filter entry that names it.
pub(crate) fn extension(
    runtime: Runtime,
    name: &str,
    module: &Module,
    filter: &str,
    config: &str,
    disabled: bool,
) -> (core::TypedExtensionConfig, hcm::HttpFilter) {
    let ext = match runtime {
        Runtime::Native => native_extension(name, module, filter, config),
        Runtime::Wasm => wasm_extension(name, module, filter, config),
    };
    (ext, ecds_filter(name, disabled, runtime))
}

/// `module` as Envoy fetches it: from the control server through its cluster, checked by
/// sha256, with retries.
fn remote(module: &Module) -> core::AsyncDataSource {
    core::AsyncDataSource {
        specifier: Some(core::async_data_source::Specifier::Remote(
            core::RemoteDataSource {
                http_uri: Some(core::HttpUri {
                    uri: module.url.clone(),
                    timeout: Some(ms(10_000)),
                    http_upstream_type: Some(core::http_uri::HttpUpstreamType::Cluster(
                        names::CONTROL_CLUSTER.into(),
                    )),
                }),
                sha256: module.sha256.clone(),
                retry_policy: Some(core::RetryPolicy {
                    num_retries: Some(u32v(5)),
                    ..Default::default()
                }),
            },
        )),
    }
}

/// The ECDS resource of a filter as an Envoy dynamic module: the library fetched from the
/// control server through its cluster and checked by sha256 (Envoy keeps it by sha256), the
/// filter `maille_<module>` of it, with `config`. `nack_on_cache_miss`: an Envoy that does not
/// have the library yet refuses the config while it fetches it (the server sends it again),
/// so that no listener ever runs without the filter.
pub(crate) fn native_extension(
    name: &str,
    module: &Module,
    filter: &str,
    config: &str,
) -> core::TypedExtensionConfig {
    let lib = format!("maille_{filter}");
    let f = dm_filter::DynamicModuleFilter {
        dynamic_module_config: Some(dm::DynamicModuleConfig {
            name: lib.clone(),
            module: Some(remote(module)),
            nack_on_cache_miss: true,
            ..Default::default()
        }),
        filter_name: lib,
        filter_config: Some(any(&StringValue {
            value: config.to_owned(),
        })),
        terminal_filter: false,
    };
    core::TypedExtensionConfig {
        name: name.to_owned(),
        typed_config: Some(any(&f)),
    }
}

/// The ECDS resource of a wasm filter: module fetched from the control server, checked by
/// sha256, with `config` as its plugin configuration.
pub(crate) fn wasm_extension(
    name: &str,
    module: &Module,
    vm: &str,
    config: &str,
) -> core::TypedExtensionConfig {
    let vm_config = wasm::VmConfig {
        vm_id: format!(
            "maille_{vm}_{}",
            &module.sha256[..module.sha256.len().min(12)]
        ),
        runtime: "envoy.wasm.runtime.v8".into(),
        code: Some(remote(module)),
        ..Default::default()
    };
    let plugin = wasm::PluginConfig {
        name: name.to_owned(),
        root_id: format!("maille_{vm}"),
        configuration: Some(any(&StringValue {
            value: config.to_owned(),
        })),
        vm: Some(wasm::plugin_config::Vm::VmConfig(vm_config)),
        ..Default::default()
    };
    core::TypedExtensionConfig {
        name: name.to_owned(),
        typed_config: Some(any(&wasm_filter::Wasm {
            config: Some(plugin),
        })),
    }
}
