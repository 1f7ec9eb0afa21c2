//! The Envoy bootstrap used by tests and the demo. It has the shape of the
//! shipped `envoy/tracegate.yaml` (listener → tracegate → router → LLM
//! upstream; collector cluster over HTTP/2 with a client certificate), with
//! local ports and plain HTTP to the upstream.

use serde_json::{json, Value};
use std::path::{Path, PathBuf};

pub struct Ports {
    pub upstream: u16,
    pub collector: u16,
    /// The identity provider's JWKS endpoint (cluster `idp`); the test
    /// upstream serves one.
    pub idp: u16,
    /// Cluster `tracegate_approvals` (HTTP/1.1): the collector's machine
    /// side (its gRPC port) unless a test points it elsewhere.
    pub approvals: u16,
    /// `tracegate certs` directory: the collector requires client
    /// certificates, and the clusters that reach it present `gateway.pem`
    /// (the approvals cluster only while it points at the collector).
    pub tls: Option<PathBuf>,
    /// An SDS file holding the provider's API key (`generic_secret`): Envoy
    /// injects it after tracegate, as `envoy/tracegate-oidc.yaml` does.
    pub provider_key: Option<PathBuf>,
}

/// An SDS file with one generic secret (Envoy's credential injector reads it).
pub fn generic_secret(name: &str, value: &str) -> String {
    format!(
        "resources:\n- \"@type\": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret\n  name: {name}\n  generic_secret: {{ secret: {{ inline_string: \"{value}\" }} }}\n"
    )
}

/// Envoy's upstream TLS to the collector: verify its certificate (the name
/// `tracegate certs` gives it) against the CA, present the gateway's.
pub fn collector_tls(dir: &Path, alpn_h2: bool) -> Value {
    let file = |name: &str| json!({"filename": dir.join(name).to_string_lossy()});
    let mut common = json!({
        "tls_certificates": [{"certificate_chain": file("gateway.pem"),
                              "private_key": file("gateway.key")}],
        "validation_context": {
            "trusted_ca": file("ca.pem"),
            "match_typed_subject_alt_names": [{"san_type": "DNS",
                "matcher": {"exact": "tracegate-collector"}}]
        }
    });
    if alpn_h2 {
        common["alpn_protocols"] = json!(["h2"]);
    }
    json!({
        "name": "envoy.transport_sockets.tls",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
            "sni": "tracegate-collector",
            "common_tls_context": common
        }
    })
}

fn cluster(name: &str, port: u16) -> Value {
    json!({
        "name": name,
        "type": "STATIC",
        "connect_timeout": "2s",
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [{"lb_endpoints": [{"endpoint": {"address": {
                "socket_address": {"address": "127.0.0.1", "port_value": port}
            }}}]}]
        }
    })
}

/// The `envoy.filters.http.wasm` entry that loads tracegate.
pub fn tracegate_filter(wasm: &Path, plugin_config: &Value) -> Value {
    // Holding headers until the body is inspected needs this Envoy option.
    let hold = plugin_config["inspection"]["hold_headers"] == true;
    json!({
        "name": "tracegate",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm",
            "config": {
                "name": "tracegate",
                "root_id": "tracegate",
                "failure_policy": "FAIL_RELOAD",
                "allow_on_headers_stop_iteration": hold,
                "vm_config": {
                    "vm_id": "tracegate",
                    "runtime": "envoy.wasm.runtime.v8",
                    "code": {"local": {"filename": wasm.to_string_lossy()}}
                },
                "configuration": {
                    "@type": "type.googleapis.com/google.protobuf.StringValue",
                    "value": plugin_config.to_string()
                }
            }
        }
    })
}

/// The type URL of the Wasm HTTP filter's configuration.
pub const WASM_FILTER_TYPE: &str = "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm";

/// The ECDS resource file in a watched directory (`tracegate policy apply
/// --dir DIR` writes it).
pub fn ecds_file(dir: &Path) -> PathBuf {
    dir.join("tracegate.json")
}

/// The `tracegate` HTTP filter with its configuration discovered (ECDS)
/// from `DIR/tracegate.json`, reloaded whenever a file is moved into DIR.
/// No default configuration: until a valid one is read the listener warms
/// (and a filter without configuration would refuse every request), so
/// nothing is ever served without a policy.
pub fn discovered_tracegate_filter(dir: &Path) -> Value {
    json!({
        "name": "tracegate",
        "config_discovery": {
            "config_source": {
                "resource_api_version": "V3",
                "path_config_source": {
                    "path": ecds_file(dir).to_string_lossy(),
                    "watched_directory": {"path": dir.to_string_lossy()}
                }
            },
            "type_urls": [WASM_FILTER_TYPE]
        }
    })
}

/// Makes the first listener's tracegate filter take its configuration from
/// ECDS (`discovered_tracegate_filter`).
pub fn use_ecds(bootstrap: &mut Value, dir: &Path) {
    let hcm = &mut bootstrap["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]
        ["typed_config"];
    if let Some(filters) = hcm["http_filters"].as_array_mut() {
        for f in filters.iter_mut().filter(|f| f["name"] == "tracegate") {
            *f = discovered_tracegate_filter(dir);
        }
    }
    if bootstrap.get("node").is_none() {
        // xDS subscriptions, file-based ones too, want a node identity.
        bootstrap["node"] = json!({"id": "tracegate-test", "cluster": "tracegate"});
    }
}

/// A bootstrap with admin and listener on port 0 (Envoy picks free ports;
/// the harness reads them back from the admin API).
pub fn bootstrap(ports: &Ports, wasm: &Path, plugin_config: &Value) -> Value {
    let mut collector = cluster("tracegate_collector", ports.collector);
    collector["typed_extension_protocol_options"] = json!({
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
            "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
            "explicit_http_config": {"http2_protocol_options": {}}
        }
    });
    let mut approvals = cluster("tracegate_approvals", ports.approvals);
    if let Some(dir) = &ports.tls {
        collector["transport_socket"] = collector_tls(dir, true);
        if ports.approvals == ports.collector {
            approvals["transport_socket"] = collector_tls(dir, false);
        }
    }
    let mut http_filters = vec![tracegate_filter(wasm, plugin_config)];
    if let Some(file) = &ports.provider_key {
        // After tracegate removed the caller's token: the provider's key.
        http_filters.push(json!({
            "name": "envoy.filters.http.credential_injector",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.credential_injector.v3.CredentialInjector",
                "overwrite": true,
                "credential": {
                    "name": "provider-api-key",
                    "typed_config": {
                        "@type": "type.googleapis.com/envoy.extensions.http.injected_credentials.generic.v3.Generic",
                        "credential": {"name": "provider-api-key",
                            "sds_config": {"path_config_source": {"path": file.to_string_lossy()}}},
                        "header": "Authorization",
                        "header_value_prefix": "Bearer "
                    }
                }
            }
        }));
    }
    http_filters.push(
        json!({"name": "envoy.filters.http.router", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}),
    );
    let mut b = json!({
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}}},
        "static_resources": {
            "listeners": [{
                "name": "llm_ingress",
                "per_connection_buffer_limit_bytes": 8 << 20,
                "address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}},
                "filter_chains": [{"filters": [{
                    "name": "envoy.filters.network.http_connection_manager",
                    "typed_config": {
                        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                        "stat_prefix": "llm_ingress",
                        "always_set_request_id_in_response": true,
                        "route_config": {"virtual_hosts": [{
                            "name": "llm",
                            "domains": ["*"],
                            "routes": [{"match": {"prefix": "/"},
                                        "route": {"cluster": "llm_upstream", "timeout": "300s"}}]
                        }]},
                        "http_filters": http_filters
                    }
                }]}]
            }],
            "clusters": [
                cluster("llm_upstream", ports.upstream),
                collector,
                cluster("idp", ports.idp),
                approvals
            ]
        }
    });
    if ports.provider_key.is_some() {
        // SDS (the injected key) needs a node identity.
        b["node"] = json!({"id": "tracegate-test", "cluster": "tracegate"});
    }
    b
}

/// The benchmark's bootstrap: the same as `bootstrap`, with a second
/// listener (`passthrough`) identical but for the tracegate filter. With
/// `filter: false`, only the passthrough listener (for Envoy's memory
/// without tracegate).
pub fn bench_bootstrap(ports: &Ports, wasm: &Path, plugin_config: &Value, filter: bool) -> Value {
    let mut b = bootstrap(ports, wasm, plugin_config);
    // As in the shipped configs: the allocator gives freed memory back to
    // the system (V8 frees tens of MB after compiling the module, which
    // tcmalloc would otherwise keep), for both Envoys alike.
    b["memory_allocator_manager"] =
        json!({"bytes_to_release": 64 << 20, "memory_release_interval": "1s"});
    let mut passthrough = b["static_resources"]["listeners"][0].clone();
    passthrough["name"] = json!("passthrough");
    let hcm = &mut passthrough["filter_chains"][0]["filters"][0]["typed_config"];
    hcm["stat_prefix"] = json!("passthrough");
    if let Some(filters) = hcm["http_filters"].as_array_mut() {
        filters.retain(|f| f["name"] != "tracegate");
    }
    if filter {
        b["static_resources"]["listeners"][0]["name"] = json!("tracegate");
        if let Some(listeners) = b["static_resources"]["listeners"].as_array_mut() {
            listeners.push(passthrough);
        }
    } else {
        b["static_resources"]["listeners"] = json!([passthrough]);
    }
    b
}

/// Adds a listener like the first one (the tracegate listener), with another
/// tracegate configuration: for cost breakdowns in the benchmark.
pub fn add_variant(bootstrap: &mut Value, name: &str, wasm: &Path, plugin_config: &Value) {
    let mut listener = bootstrap["static_resources"]["listeners"][0].clone();
    listener["name"] = json!(name);
    let hcm = &mut listener["filter_chains"][0]["filters"][0]["typed_config"];
    hcm["stat_prefix"] = json!(name);
    hcm["http_filters"][0] = tracegate_filter(wasm, plugin_config);
    if let Some(listeners) = bootstrap["static_resources"]["listeners"].as_array_mut() {
        listeners.push(listener);
    }
}
