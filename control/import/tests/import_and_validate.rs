//! Import of real-shaped App Mesh definitions in all three formats, and spec validation with
//! precise errors. No server, no Envoy: part of the fast tier.

use maille_import::{import_paths, import_str, Format, Params};
use maille_model::{check_all, Resource, Resources};
use std::path::PathBuf;

fn example(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../deploy/examples/colorteller")
        .join(name)
}

fn load(name: &str, params: &[(&str, &str)]) -> (Resources, Vec<String>) {
    let params: Params = params
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let i = import_paths(&[example(name)], &params).unwrap_or_else(|e| panic!("{name}: {e:?}"));
    (maille_model::resources(i.resources), i.warnings)
}

/// The resources without what only the Kubernetes import records (the object a virtual node
/// came from).
fn without_kubernetes(m: &Resources) -> Resources {
    maille_model::resources(m.values().map(|r| match r.as_ref().clone() {
        Resource::VirtualNode(mut n) => {
            n.kubernetes = None;
            Resource::VirtualNode(n)
        }
        other => other,
    }))
}

#[test]
fn the_four_formats_of_colorteller_give_the_same_mesh() {
    let (api, api_w) = load("appmesh-api.json", &[]);
    let (cfn, cfn_w) = load("appmesh-cloudformation.yaml", &[]);
    let (tf, tf_w) = load("appmesh-terraform.tf", &[]);
    let (k8s, k8s_w) = load("appmesh-kubernetes.yaml", &[]);
    assert_eq!(api.len(), 11, "mesh, 5 nodes, router, 2 routes, 2 services");
    assert_eq!(api, cfn, "CloudFormation import differs from API JSON");
    assert_eq!(api, tf, "Terraform import differs from API JSON");
    assert_eq!(
        api,
        without_kubernetes(&k8s),
        "Kubernetes import differs from API JSON"
    );
    assert!(k8s_w.is_empty(), "{k8s_w:?}");
    // The pods of each node are kept beside it.
    let white = k8s
        .values()
        .find_map(|r| match r.as_ref() {
            Resource::VirtualNode(n) if n.virtual_node_name == "colorteller-white" => {
                n.kubernetes.clone()
            }
            _ => None,
        })
        .expect("colorteller-white from Kubernetes");
    assert_eq!(
        (white.namespace.as_str(), white.name.as_str()),
        ("colorapp", "colorteller-white")
    );
    assert_eq!(
        white.pod_selector,
        Some(serde_json::json!({"matchLabels": {"app": "colorteller", "version": "white"}}))
    );
    check_all(&api).expect("the example is valid");
    assert!(api_w.is_empty(), "{api_w:?}");
    // What is not imported is said.
    assert!(
        cfn_w
            .iter()
            .any(|w| w.contains("PrivateDnsNamespace") && w.contains("skipped")),
        "{cfn_w:?}"
    );
    assert!(
        cfn_w
            .iter()
            .any(|w| w.contains("Resources.Mesh.Properties.Tags")),
        "{cfn_w:?}"
    );
    assert!(
        tf_w.iter()
            .any(|w| w.contains("aws_service_discovery_private_dns_namespace.colors")),
        "{tf_w:?}"
    );
    // Names resolved through !GetAtt / references.
    let route = api
        .values()
        .find_map(|r| match r.as_ref() {
            Resource::Route(rt) if rt.route_name == "colorteller-route" => Some(rt),
            _ => None,
        })
        .unwrap();
    let targets: Vec<(&str, u32)> = route
        .spec
        .http_route
        .as_ref()
        .unwrap()
        .action
        .weighted_targets
        .iter()
        .map(|t| (t.virtual_node.as_str(), t.weight))
        .collect();
    assert_eq!(
        targets,
        vec![
            ("colorteller-white", 8),
            ("colorteller-black", 1),
            ("colorteller-red", 1)
        ]
    );
}

fn hostnames(m: &Resources) -> Vec<String> {
    m.values()
        .filter_map(|r| match r.as_ref() {
            Resource::VirtualNode(n) => n
                .spec
                .service_discovery
                .as_ref()?
                .dns
                .as_ref()
                .map(|d| d.hostname.clone()),
            _ => None,
        })
        .collect()
}

#[test]
fn parameters_and_variables_from_the_command_line_are_used() {
    let (cfn, _) = load(
        "appmesh-cloudformation.yaml",
        &[
            ("ServicesDomain", "prod.internal"),
            ("AppPort", "8080"),
            ("MeshName", "colors-prod"),
        ],
    );
    let (tf, _) = load(
        "appmesh-terraform.tf",
        &[("services_domain", "prod.internal"), ("app_port", "8080")],
    );
    for (what, m) in [("cfn", &cfn), ("tf", &tf)] {
        let hosts = hostnames(m);
        assert_eq!(hosts.len(), 5, "{what}");
        assert!(
            hosts.iter().all(|h| h.ends_with(".prod.internal")),
            "{what}: {hosts:?}"
        );
        let ports: Vec<u32> = m
            .values()
            .filter_map(|r| match r.as_ref() {
                Resource::VirtualNode(n) => Some(n.spec.listeners[0].port_mapping.port),
                _ => None,
            })
            .collect();
        assert!(ports.iter().all(|p| *p == 8080), "{what}: {ports:?}");
        assert!(
            m.keys().any(|k| k.name == "colorteller.prod.internal"),
            "{what}"
        );
    }
    assert!(cfn.keys().all(|k| k.mesh == "colors-prod"));
    // A parameter the template does not have is refused, not ignored.
    let e = import_paths(
        &[example("appmesh-cloudformation.yaml")],
        &[("Domain".to_string(), "x".to_string())].into(),
    )
    .unwrap_err();
    assert!(
        e[0].to_string().contains(
            "-p Domain: no file of this call takes such a parameter or variable (they take: AppPort, MeshName, ServicesDomain)"
        ),
        "{e:?}"
    );
    // One call over both files: each -p is taken by the file that has it.
    let both = import_paths(
        &[
            example("appmesh-cloudformation.yaml"),
            example("appmesh-terraform.tf"),
        ],
        &[
            ("ServicesDomain".to_string(), "prod.internal".to_string()),
            ("services_domain".to_string(), "prod.internal".to_string()),
        ]
        .into(),
    )
    .unwrap_or_else(|e| panic!("{e:?}"));
    assert_eq!(both.resources.len(), 22);
}

/// A template in the shape of the App Mesh walkthroughs' (`EnvironmentName` and other
/// parameters without a Default that no App Mesh resource uses, conditions, an export).
const CFN_CONDITIONS: &str = r#"
Parameters:
  EnvironmentName: { Type: String }
  VpcCIDR: { Type: String }
  Stage: { Type: String, Default: prod }
  MeshSuffix: { Type: String }
Conditions:
  IsProd: !Equals [!Ref Stage, prod]
  WantsCanary: !And [!Condition IsProd, !Not [!Equals [!Ref Stage, dev]]]
  IsDev: !Equals [!Ref Stage, dev]
Mappings:
  Ports: { prod: { app: 8080 }, dev: { app: 9080 } }
Resources:
  Vpc:
    Type: AWS::EC2::VPC
    Properties: { CidrBlock: !Ref VpcCIDR }
  Mesh:
    Type: AWS::AppMesh::Mesh
    Properties:
      MeshName: !If [IsProd, !Sub "colors-${MeshSuffix}", colors-dev]
      Spec:
        EgressFilter: !If [IsDev, { Type: ALLOW_ALL }, !Ref AWS::NoValue]
  Node:
    Type: AWS::AppMesh::VirtualNode
    Properties:
      MeshName: !GetAtt Mesh.MeshName
      VirtualNodeName: front
      Spec:
        Listeners:
          - PortMapping: { Port: !FindInMap [Ports, !Ref Stage, app], Protocol: http }
        ServiceDiscovery:
          DNS: { Hostname: !ImportValue shared-front-hostname }
  DevOnly:
    Type: AWS::AppMesh::VirtualNode
    Condition: IsDev
    Properties:
      MeshName: !GetAtt Mesh.MeshName
      VirtualNodeName: debug
      Spec: {}
  Canary:
    Type: AWS::AppMesh::VirtualNode
    Condition: WantsCanary
    Properties:
      MeshName: !GetAtt Mesh.MeshName
      VirtualNodeName: canary
      Spec: {}
"#;

#[test]
fn cloudformation_conditions_exports_and_only_the_parameters_used() {
    // Every value the App Mesh resources use is missing: all named in one error, and not
    // EnvironmentName or VpcCIDR, which only other resources use.
    let e = import_str(
        "t.yaml",
        CFN_CONDITIONS,
        Format::CloudFormation,
        &Params::new(),
    )
    .unwrap_err();
    assert_eq!(
        e.message,
        "no value for ImportValue:shared-front-hostname, MeshSuffix, which the App Mesh resources use: give -p ImportValue:shared-front-hostname=VALUE -p MeshSuffix=VALUE",
        "{e}"
    );
    let p: Params = [
        ("MeshSuffix".to_string(), "prod".to_string()),
        (
            "ImportValue:shared-front-hostname".to_string(),
            "front.prod.internal".to_string(),
        ),
    ]
    .into();
    let i = import_str("t.yaml", CFN_CONDITIONS, Format::CloudFormation, &p)
        .unwrap_or_else(|e| panic!("{e}"));
    let m = maille_model::resources(i.resources);
    let mut names: Vec<String> = m.keys().map(|k| format!("{}/{}", k.mesh, k.name)).collect();
    names.sort();
    assert_eq!(
        names,
        [
            "colors-prod/canary",
            "colors-prod/colors-prod",
            "colors-prod/front"
        ]
    );
    let mesh = m
        .values()
        .find_map(|r| match r.as_ref() {
            Resource::Mesh(m) => Some(m.clone()),
            _ => None,
        })
        .unwrap();
    assert_eq!(
        mesh.spec.egress_filter, None,
        "AWS::NoValue removes the property"
    );
    assert!(
        i.warnings
            .iter()
            .any(|w| w.contains("Resources.DevOnly: its condition IsDev is false; not imported")),
        "{:?}",
        i.warnings
    );
    let front = m
        .values()
        .find_map(|r| match r.as_ref() {
            Resource::VirtualNode(n) if n.virtual_node_name == "front" => Some(n.clone()),
            _ => None,
        })
        .unwrap();
    assert_eq!(front.spec.listeners[0].port_mapping.port, 8080, "FindInMap");
    assert_eq!(
        front.spec.service_discovery.unwrap().dns.unwrap().hostname,
        "front.prod.internal"
    );
    // The other branch of every condition.
    let mut dev = p.clone();
    dev.insert("Stage".into(), "dev".into());
    let i = import_str("t.yaml", CFN_CONDITIONS, Format::CloudFormation, &dev).unwrap();
    let m = maille_model::resources(i.resources);
    let mut names: Vec<String> = m.keys().map(|k| format!("{}/{}", k.mesh, k.name)).collect();
    names.sort();
    assert_eq!(
        names,
        [
            "colors-dev/colors-dev",
            "colors-dev/debug",
            "colors-dev/front"
        ]
    );
}

#[test]
fn bad_definitions_name_the_file_and_field() {
    let p = Params::new();
    // API JSON: an unknown field deep inside.
    let e = import_str(
        "bad.json",
        r#"[{"virtualNode": {"meshName": "m", "virtualNodeName": "n", "spec": {"listeners": [{"portMapping": {"port": 80, "protocl": "http"}}]}}}]"#,
        Format::ApiJson,
        &p,
    )
    .unwrap_err();
    assert_eq!(e.file, "bad.json");
    assert!(
        e.path
            .starts_with("[0].virtualNode.spec.listeners[0].portMapping"),
        "{e}"
    );
    assert!(e.message.contains("protocl"), "{e}");

    // CloudFormation: a wrong type, and an unsupported intrinsic.
    let cfn = "Resources:\n  N:\n    Type: AWS::AppMesh::VirtualNode\n    Properties:\n      MeshName: m\n      VirtualNodeName: n\n      Spec:\n        Listeners:\n          - PortMapping: { Port: eighty, Protocol: http }\n";
    let e = import_str("t.yaml", cfn, Format::CloudFormation, &p).unwrap_err();
    assert!(
        e.path.contains("Resources.N.Properties") && e.path.contains("port"),
        "{e}"
    );
    let cfn_if = "Resources:\n  M:\n    Type: AWS::AppMesh::Mesh\n    Properties:\n      MeshName: !If [IsProd, a, b]\n";
    let e = import_str("t.yaml", cfn_if, Format::CloudFormation, &p).unwrap_err();
    assert_eq!(e.path, "Resources.M.Properties.MeshName.Fn::If", "{e}");
    assert_eq!(
        e.message, "no condition named \"IsProd\" in Conditions",
        "{e}"
    );
    let gw = "Resources:\n  G:\n    Type: AWS::AppMesh::VirtualGateway\n    Properties: {}\n";
    let e = import_str("t.yaml", gw, Format::CloudFormation, &p).unwrap_err();
    assert_eq!(e.path, "Resources.G.Properties", "{e}");
    assert!(e.message.contains("missing field `meshName`"), "{e}");

    // Terraform: an undefined variable, and for_each.
    let tf = "resource \"aws_appmesh_mesh\" \"m\" {\n  name = var.nope\n}\n";
    let e = import_str("m.tf", tf, Format::Terraform, &p).unwrap_err();
    assert_eq!(e.path, "resource.aws_appmesh_mesh.m.name", "{e}");
    let tf = "resource \"aws_appmesh_mesh\" \"m\" {\n  for_each = toset([\"a\"])\n  name = each.key\n}\n";
    let e = import_str("m.tf", tf, Format::Terraform, &p).unwrap_err();
    assert!(e.message.contains("for_each is not supported"), "{e}");
}

fn set(docs: serde_json::Value) -> Resources {
    let i = import_str("t.json", &docs.to_string(), Format::ApiJson, &Params::new()).unwrap();
    maille_model::resources(i.resources)
}

#[test]
fn validation_errors_give_resource_and_field_path() {
    use serde_json::json;
    let base = || {
        vec![
            json!({"meshName": "m"}),
            json!({"meshName": "m", "virtualNodeName": "a", "spec": {"listeners": [{"portMapping": {"port": 80, "protocol": "http"}}]}}),
            json!({"meshName": "m", "virtualRouterName": "r", "spec": {"listeners": [{"portMapping": {"port": 80, "protocol": "http"}}]}}),
        ]
    };
    let errors = |extra: serde_json::Value| -> Vec<String> {
        let mut docs = base();
        docs.push(extra);
        match check_all(&set(json!(docs))) {
            Ok(()) => Vec::new(),
            Err(e) => e.0.iter().map(ToString::to_string).collect(),
        }
    };
    let e = errors(
        json!({"meshName": "m", "virtualNodeName": "b", "spec": {"listeners": [{"portMapping": {"port": 80, "protocol": "http"},
        "healthCheck": {"protocol": "http", "path": "/", "healthyThreshold": 2, "unhealthyThreshold": 2, "timeoutMillis": 2000, "intervalMillis": 100}}]}}),
    );
    assert_eq!(e, vec!["virtualNode/m/b: spec.listeners[0].healthCheck.intervalMillis: must be 5000..=300000, got 100"]);

    let e = errors(
        json!({"meshName": "m", "virtualRouterName": "r", "routeName": "x", "spec": {"httpRoute": {
        "match": {"prefix": "/"}, "action": {"weightedTargets": [{"virtualNode": "a", "weight": 101}, {"virtualNode": "ghost", "weight": 1}]}}}}),
    );
    assert!(e.contains(&"route/m/r/x: spec.httpRoute.action.weightedTargets[0].weight: must be 0..=100, got 101".to_string()), "{e:?}");
    assert!(e.contains(&"route/m/r/x: spec.httpRoute.action.weightedTargets[1].virtualNode: no virtual node named \"ghost\"".to_string()), "{e:?}");

    // A router may listen on several ports, each once; a route may match on the port alone.
    let e = errors(
        json!({"meshName": "m", "virtualRouterName": "two", "spec": {"listeners": [
            {"portMapping": {"port": 80, "protocol": "http"}}, {"portMapping": {"port": 81, "protocol": "http"}}]}}),
    );
    assert!(e.is_empty(), "{e:?}");
    let e = errors(
        json!({"meshName": "m", "virtualRouterName": "dup", "spec": {"listeners": [
            {"portMapping": {"port": 80, "protocol": "http"}}, {"portMapping": {"port": 80, "protocol": "http"}}]}}),
    );
    assert_eq!(
        e,
        vec!["virtualRouter/m/dup: spec.listeners[1].portMapping.port: port 80 is listed twice"]
    );
    let e = errors(
        json!({"meshName": "m", "virtualRouterName": "r", "routeName": "p", "spec": {"httpRoute": {
        "match": {"port": 80}, "action": {"weightedTargets": [{"virtualNode": "a", "weight": 1}]}}}}),
    );
    assert!(e.is_empty(), "{e:?}");
    let e = errors(
        json!({"meshName": "m", "virtualRouterName": "r", "routeName": "q", "spec": {"httpRoute": {
        "match": {}, "action": {"weightedTargets": [{"virtualNode": "a", "weight": 1}]}}}}),
    );
    assert_eq!(
        e,
        vec!["route/m/r/q: spec.httpRoute.match: one of prefix, path, port is required"]
    );

    let targets: Vec<serde_json::Value> = (0..11)
        .map(|_| json!({"virtualNode": "a", "weight": 1}))
        .collect();
    let e = errors(
        json!({"meshName": "m", "virtualRouterName": "r", "routeName": "x", "spec": {"httpRoute": {
        "match": {"prefix": "/"}, "action": {"weightedTargets": targets}}}}),
    );
    assert!(
        e.iter().any(|l| l
            .ends_with("spec.httpRoute.action.weightedTargets: must hold 1 to 10 targets, got 11")),
        "{e:?}"
    );

    let e = errors(
        json!({"meshName": "m", "virtualRouterName": "r", "routeName": "x", "spec": {"httpRoute": {
        "match": {"path": {"regex": "(unclosed"}}, "action": {"weightedTargets": [{"virtualNode": "a", "weight": 1}]}}}}),
    );
    assert!(
        e.iter().any(|l| l.starts_with(
            "route/m/r/x: spec.httpRoute.match.path.regex: is not a valid regular expression"
        )),
        "{e:?}"
    );

    let e = errors(
        json!({"meshName": "m", "virtualServiceName": "svc.local", "spec": {"provider": {"virtualRouter": {"virtualRouterName": "nope"}}}}),
    );
    assert_eq!(e, vec!["virtualService/m/svc.local: spec.provider.virtualRouter.virtualRouterName: no virtual router named \"nope\""]);

    assert!(errors(json!({"meshName": "m", "virtualServiceName": "svc.local", "spec": {"provider": {"virtualNode": {"virtualNodeName": "a"}}}})).is_empty());

    // App Mesh's ACM and SDS sources are taken (Maille's CA serves them); a certificate
    // with two sources, or none, is refused with the field named.
    let e = errors(
        json!({"meshName": "m", "virtualNodeName": "t", "spec": {"listeners": [{"portMapping": {"port": 80, "protocol": "http"},
        "tls": {"mode": "STRICT", "certificate": {"acm": {"certificateArn": "arn:aws:acm:us-east-1:123456789012:certificate/x"}},
                "validation": {"trust": {"sds": {"secretName": "spiffe://example.org"}}}}}]}}),
    );
    assert!(e.is_empty(), "{e:?}");
    let e = errors(
        json!({"meshName": "m", "virtualNodeName": "t", "spec": {"listeners": [{"portMapping": {"port": 80, "protocol": "http"},
        "tls": {"mode": "STRICT", "certificate": {"acm": {"certificateArn": "arn:x"}, "sds": {"secretName": "s"}}}}]}}),
    );
    assert_eq!(
        e,
        vec!["virtualNode/m/t: spec.listeners[0].tls.certificate: exactly one of file, sds, acm is required"]
    );
    let e = errors(
        json!({"meshName": "m", "virtualNodeName": "t", "spec": {"listeners": [{"portMapping": {"port": 80, "protocol": "http"},
        "tls": {"mode": "LAX", "certificate": {"file": {"certificateChain": "/c.pem", "privateKey": "/k.pem"}}}}]}}),
    );
    assert_eq!(e, vec!["virtualNode/m/t: spec.listeners[0].tls.mode: must be STRICT, PERMISSIVE or DISABLED, got \"LAX\""]);

    // Access logs: App Mesh's formats are taken, anything else is refused by its field.
    let logged = |format: serde_json::Value| {
        errors(json!({"meshName": "m", "virtualNodeName": "l", "spec": {
            "listeners": [{"portMapping": {"port": 80, "protocol": "http"}}],
            "logging": {"accessLog": {"file": {"path": "/dev/stdout", "format": format}}}}}))
    };
    assert!(logged(json!({"text": "%START_TIME% %RESPONSE_CODE%"})).is_empty());
    assert!(logged(json!({"json": [{"key": "code", "value": "%RESPONSE_CODE%"}]})).is_empty());
    assert_eq!(
        logged(json!({"text": "a", "json": [{"key": "k", "value": "v"}]})),
        vec!["virtualNode/m/l: spec.logging.accessLog.file.format: exactly one of `text` or `json` is required"]
    );
    assert_eq!(
        logged(json!({"json": [{"key": "k"}]})),
        vec!["virtualNode/m/l: spec.logging.accessLog.file.format.json[0].value: a string of 1 to 100 characters is required"]
    );
    assert_eq!(
        logged(json!({"yaml": "x"})),
        vec![
            "virtualNode/m/l: spec.logging.accessLog.file.format.yaml: unknown field: the format is `text` or `json`",
            "virtualNode/m/l: spec.logging.accessLog.file.format: exactly one of `text` or `json` is required",
        ]
    );
}

#[test]
fn maille_tags_ask_for_a_sticky_split_in_every_format() {
    use maille_model::Sticky;
    let p = Params::new();
    let api = r#"[{"meshName": "m", "virtualRouterName": "r", "routeName": "x",
        "spec": {"httpRoute": {"match": {"prefix": "/"}, "action": {"weightedTargets": [{"virtualNode": "a", "weight": 1}]}}},
        "tags": [{"key": "team", "value": "colors"}, {"key": "maille:sticky-header", "value": "x-user-id"}]}]"#;
    let cfn = r#"
Resources:
  X:
    Type: AWS::AppMesh::Route
    Properties:
      MeshName: m
      VirtualRouterName: r
      RouteName: x
      Spec:
        HttpRoute:
          Match: { Prefix: / }
          Action: { WeightedTargets: [{ VirtualNode: a, Weight: 1 }] }
      Tags:
        - { Key: "maille:sticky-cookie", Value: !Sub "session" }
"#;
    let tf = r#"
resource "aws_appmesh_route" "x" {
  name = "x"
  mesh_name = "m"
  virtual_router_name = "r"
  spec {
    http_route {
      match { prefix = "/" }
      action {
        weighted_target {
          virtual_node = "a"
          weight = 1
        }
      }
    }
  }
  tags = { "maille:sticky-header" = "x-user-id" }
}
"#;
    let sticky_of = |i: maille_import::Imported| match &i.resources[0] {
        Resource::Route(r) => r.maille.as_ref().and_then(|m| m.sticky.clone()),
        _ => None,
    };
    let i = import_str("r.json", api, Format::ApiJson, &p).unwrap();
    assert!(
        i.warnings
            .iter()
            .any(|w| w.contains("r.json: [0].tags: ignored")),
        "{:?}",
        i.warnings
    );
    let header = Some(Sticky {
        header: Some("x-user-id".into()),
        cookie: None,
    });
    assert_eq!(sticky_of(i), header);
    assert_eq!(
        sticky_of(import_str("r.yaml", cfn, Format::CloudFormation, &p).unwrap()),
        Some(Sticky {
            header: None,
            cookie: Some("session".into())
        })
    );
    assert_eq!(
        sticky_of(import_str("r.tf", tf, Format::Terraform, &p).unwrap()),
        header
    );

    // An unknown Maille tag, or one on a resource that takes none, is refused by name.
    let e = import_str(
        "r.json",
        &api.replace("maille:sticky-header", "maille:stiky"),
        Format::ApiJson,
        &p,
    )
    .unwrap_err();
    assert!(
        e.to_string().contains("\"maille:stiky\": not a Maille tag"),
        "{e}"
    );
    let e = import_str(
        "m.json",
        r#"{"meshName": "m", "spec": {}, "tags": [{"key": "maille:sticky-header", "value": "x"}]}"#,
        Format::ApiJson,
        &p,
    )
    .unwrap_err();
    assert!(
        e.to_string()
            .contains("\"maille:sticky-header\": goes on a route (maille:mtls, maille:authorization on a mesh)"),
        "{e}"
    );

    // A mesh's tags set its mutual TLS, in every format; a bad value is refused by path.
    let m = import_str(
        "m.json",
        r#"{"meshName": "m", "spec": {}, "tags": [{"key": "maille:mtls", "value": "PERMISSIVE"}, {"key": "maille:authorization", "value": "NONE"}]}"#,
        Format::ApiJson,
        &p,
    )
    .unwrap();
    let Resource::Mesh(mesh) = &m.resources[0] else {
        panic!("{:?}", m.resources)
    };
    assert_eq!(mesh.mtls(), maille_model::MtlsMode::Permissive);
    assert!(!mesh.authorizes_backends());
    let cfn_mesh = "Resources:\n  M:\n    Type: AWS::AppMesh::Mesh\n    Properties:\n      MeshName: m\n      Tags:\n        - {Key: maille:mtls, Value: DISABLED}\n";
    let m = import_str("m.yaml", cfn_mesh, Format::CloudFormation, &p).unwrap();
    let Resource::Mesh(mesh) = &m.resources[0] else {
        panic!("{:?}", m.resources)
    };
    assert_eq!(mesh.mtls(), maille_model::MtlsMode::Disabled);
    let bad = import_str(
        "m.yaml",
        &cfn_mesh.replace("DISABLED", "OFF"),
        Format::CloudFormation,
        &p,
    )
    .unwrap();
    let e = check_all(&maille_model::resources(bad.resources)).unwrap_err();
    assert!(
        e.to_string()
            .contains("maille.mtls: must be STRICT, PERMISSIVE or DISABLED, got \"OFF\""),
        "{e}"
    );

    // The value is checked like every field.
    let bad = import_str(
        "r.json",
        &api.replace("x-user-id", "x user"),
        Format::ApiJson,
        &p,
    )
    .unwrap();
    let e = check_all(&maille_model::resources(bad.resources)).unwrap_err();
    assert!(
        e.to_string()
            .contains("maille.sticky.header: must be a header name"),
        "{e}"
    );
}

/// The shape of the App Mesh walkthroughs' Kubernetes manifests (howto-k8s-*): no `awsName`
/// but on the virtual service, the mesh found through the namespace's labels.
const K8S_MESH: &str = r#"
apiVersion: v1
kind: Namespace
metadata:
  name: howto
  labels: { mesh: howto-mesh }
---
apiVersion: appmesh.k8s.aws/v1beta2
kind: Mesh
metadata:
  name: howto-mesh
spec:
  namespaceSelector:
    matchExpressions:
      - { key: mesh, operator: In, values: [howto-mesh] }
---
apiVersion: apps/v1
kind: Deployment
metadata: { name: front, namespace: howto }
spec: { replicas: 1 }
"#;

const K8S_APP: &str = r#"
apiVersion: appmesh.k8s.aws/v1beta2
kind: VirtualNode
metadata: { name: front, namespace: howto }
spec:
  podSelector: { matchLabels: { app: front } }
  listeners: [{ portMapping: { port: 8080, protocol: http } }]
  serviceDiscovery: { dns: { hostname: front.howto.svc.cluster.local } }
  backendGroups: [{ name: colours }]
---
apiVersion: appmesh.k8s.aws/v1beta2
kind: BackendGroup
metadata: { name: colours, namespace: howto }
spec:
  virtualservices: [{ name: color }]
---
apiVersion: appmesh.k8s.aws/v1beta2
kind: VirtualNode
metadata: { name: red, namespace: howto }
spec:
  listeners: [{ portMapping: { port: 8080, protocol: http } }]
  serviceDiscovery: { dns: { hostname: color-red.howto.svc.cluster.local } }
---
apiVersion: appmesh.k8s.aws/v1beta2
kind: VirtualNode
metadata: { name: blue, namespace: howto }
spec:
  listeners: [{ portMapping: { port: 8080, protocol: http } }]
  serviceDiscovery: { dns: { hostname: color-blue.howto.svc.cluster.local } }
---
apiVersion: appmesh.k8s.aws/v1beta2
kind: VirtualService
metadata: { name: color, namespace: howto }
spec:
  awsName: color.howto.svc.cluster.local
  provider: { virtualRouter: { virtualRouterRef: { name: color } } }
---
apiVersion: appmesh.k8s.aws/v1beta2
kind: VirtualService
metadata: { name: front, namespace: howto }
spec:
  provider:
    virtualNode:
      virtualNodeARN: arn:aws:appmesh:us-west-2:123456789012:mesh/howto-mesh/virtualNode/front_howto
---
apiVersion: appmesh.k8s.aws/v1beta2
kind: VirtualRouter
metadata: { name: color, namespace: howto }
spec:
  listeners: [{ portMapping: { port: 8080, protocol: http } }]
  routes:
    - name: color-route
      httpRoute:
        match: { prefix: / }
        action:
          weightedTargets:
            - { virtualNodeRef: { name: red }, weight: 1 }
            - { virtualNodeRef: { name: blue, namespace: howto }, weight: 3 }
---
apiVersion: appmesh.k8s.aws/v1beta2
kind: VirtualGateway
metadata: { name: ingress, namespace: howto }
spec:
  namespaceSelector: { matchLabels: { mesh: howto-mesh } }
  gatewayRouteSelector: { matchLabels: { via: ingress } }
  podSelector: { matchLabels: { app: ingress } }
  listeners: [{ portMapping: { port: 8088, protocol: http } }]
---
apiVersion: appmesh.k8s.aws/v1beta2
kind: GatewayRoute
metadata: { name: color, namespace: howto, labels: { via: ingress } }
spec:
  httpRoute:
    match: { prefix: /color }
    action:
      target: { virtualService: { virtualServiceRef: { name: color } } }
"#;

#[test]
fn kubernetes_manifests_get_the_controllers_names_and_references_across_files() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("mesh.yaml"), K8S_MESH).unwrap();
    std::fs::write(dir.path().join("app.yaml"), K8S_APP).unwrap();
    let i = import_paths(&[dir.path().to_path_buf()], &Params::new())
        .unwrap_or_else(|e| panic!("{e:?}"));
    let m = maille_model::resources(i.resources);
    let mut names: Vec<String> = m.keys().map(|k| k.to_string()).collect();
    names.sort();
    let all = names.join(" ");
    for want in [
        "howto-mesh",
        "front_howto",
        "red_howto",
        "blue_howto",
        "color_howto",
        "color-route",
        "color.howto.svc.cluster.local",
        "front.howto",
        "virtualGateway/howto-mesh/ingress_howto",
        "gatewayRoute/howto-mesh/ingress_howto/color_howto",
    ] {
        assert!(all.contains(want), "{want} missing from {names:?}");
    }
    assert_eq!(m.len(), 10, "{names:?}");
    assert!(m.keys().all(|k| k.mesh == "howto-mesh"), "{names:?}");
    check_all(&m).expect("valid");
    let route = m
        .values()
        .find_map(|r| match r.as_ref() {
            Resource::Route(rt) => Some(rt.clone()),
            _ => None,
        })
        .unwrap();
    assert_eq!(route.virtual_router_name, "color_howto");
    let targets: Vec<(String, u32)> = route
        .spec
        .http_route
        .unwrap()
        .action
        .weighted_targets
        .iter()
        .map(|t| (t.virtual_node.clone(), t.weight))
        .collect();
    assert_eq!(
        targets,
        vec![("red_howto".into(), 1), ("blue_howto".into(), 3)]
    );
    // The backend group became the front node's backend.
    let front = m
        .values()
        .find_map(|r| match r.as_ref() {
            Resource::VirtualNode(n) if n.virtual_node_name == "front_howto" => Some(n.clone()),
            _ => None,
        })
        .unwrap();
    let backends: Vec<&str> = front
        .spec
        .backends
        .iter()
        .map(|b| b.virtual_service.virtual_service_name.as_str())
        .collect();
    assert_eq!(backends, ["color.howto.svc.cluster.local"]);
    // What is not imported is said, by object.
    let w = i.warnings.join("\n");
    assert!(
        w.contains("apps/v1 Deployment \"front\": not an App Mesh resource; skipped"),
        "{w}"
    );
    assert!(
        w.contains("VirtualGateway howto/ingress.spec.podSelector: ignored"),
        "{w}"
    );
    let gr = m
        .values()
        .find_map(|r| match r.as_ref() {
            Resource::GatewayRoute(g) => Some(g.clone()),
            _ => None,
        })
        .unwrap();
    assert_eq!(
        gr.spec
            .http_route
            .unwrap()
            .action
            .target
            .virtual_service
            .virtual_service_name,
        "color.howto.svc.cluster.local"
    );

    // A gateway route no gateway selects is refused, by name.
    let unlabelled = K8S_APP.replace("labels: { via: ingress }", "labels: { via: elsewhere }");
    std::fs::write(dir.path().join("app.yaml"), unlabelled).unwrap();
    let e = import_paths(&[dir.path().to_path_buf()], &Params::new()).unwrap_err();
    let e = e
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("\n");
    assert!(
        e.contains("GatewayRoute howto/color: no VirtualGateway of mesh \"howto-mesh\" selects it"),
        "{e}"
    );
}

#[test]
fn bad_kubernetes_manifests_are_refused_with_the_object_and_field() {
    let p = Params::new();
    let one = |text: String| {
        import_str(
            "k.yaml",
            &format!("{K8S_MESH}\n---\n{text}"),
            Format::Kubernetes,
            &p,
        )
        .expect_err("refused")
        .to_string()
    };
    let e = one(r#"
apiVersion: appmesh.k8s.aws/v1beta2
kind: VirtualRouter
metadata: { name: color, namespace: howto }
spec:
  listeners: [{ portMapping: { port: 8080, protocol: http } }]
  routes:
    - name: r
      httpRoute:
        match: { prefix: / }
        action:
          weightedTargets: [{ virtualNodeRef: { name: green }, weight: 1 }]
"#
    .into());
    assert!(
        e.contains("VirtualRouter howto/color.spec.routes[0].httpRoute.action.weightedTargets[0].virtualNodeRef: no VirtualNode howto/green in the files given"),
        "{e}"
    );
    let e = one(r#"
apiVersion: appmesh.k8s.aws/v1beta2
kind: VirtualRouter
metadata: { name: color, namespace: howto }
spec:
  listeners: [{ portMapping: { port: 8080, protocol: http } }]
  routes:
    - name: r
      httpRoute:
        match: { prefix: /, colour: red }
        action: { weightedTargets: [] }
"#
    .into());
    assert!(
        e.contains("VirtualRouter howto/color.spec.routes[0].httpRoute.match.colour: unknown field `colour`"),
        "{e}"
    );
    let e = one(
        "apiVersion: appmesh.k8s.aws/v1beta1\nkind: VirtualNode\nmetadata: { name: a, namespace: howto }\n"
            .into(),
    );
    assert!(
        e.contains("apiVersion: appmesh.k8s.aws/v1beta1: only appmesh.k8s.aws/v1beta2 is read"),
        "{e}"
    );
    // A namespace that no mesh selects.
    let e = one(
        "apiVersion: v1\nkind: Namespace\nmetadata: { name: other }\n---\napiVersion: appmesh.k8s.aws/v1beta2\nkind: VirtualNode\nmetadata: { name: a, namespace: other }\nspec: {}\n"
            .into(),
    );
    assert!(
        e.contains("VirtualNode other/a: no Mesh's namespaceSelector matches the labels of Namespace \"other\""),
        "{e}"
    );
    // A plain Kubernetes file is Kubernetes, not a CloudFormation template missing its
    // Resources.
    let i = import_paths(
        &[write_temp(
            "deploy.yaml",
            "apiVersion: apps/v1\nkind: Deployment\nmetadata: { name: x }\n",
        )],
        &p,
    )
    .unwrap();
    assert!(i.resources.is_empty());
    assert!(
        i.warnings
            .iter()
            .any(|w| w.contains("not an App Mesh resource; skipped")),
        "{:?}",
        i.warnings
    );
}

fn write_temp(name: &str, text: &str) -> PathBuf {
    let dir = tempfile::tempdir().unwrap().keep();
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

#[test]
fn gateways_import_the_same_from_api_json_cloudformation_and_terraform() {
    // `describe-*` output and `create-*` input, mixed.
    let api = r#"[
      {"meshName": "m", "spec": {}},
      {"virtualGateway": {"meshName": "m", "virtualGatewayName": "gw",
       "spec": {"listeners": [{"portMapping": {"port": 8080, "protocol": "http"}}]},
       "metadata": {"version": 1}, "status": {"status": "ACTIVE"}}},
      {"meshName": "m", "virtualGatewayName": "gw", "gatewayRouteName": "r",
       "spec": {"priority": 5, "httpRoute": {
         "match": {"prefix": "/api/", "hostname": {"exact": "shop.example.com"}},
         "action": {"target": {"virtualService": {"virtualServiceName": "api.local"}},
                    "rewrite": {"prefix": {"value": "/"}}}}}}
    ]"#;
    let cfn = r#"
Resources:
  Mesh:
    Type: AWS::AppMesh::Mesh
    Properties: { MeshName: m }
  Gateway:
    Type: AWS::AppMesh::VirtualGateway
    Properties:
      MeshName: !GetAtt Mesh.MeshName
      VirtualGatewayName: gw
      Spec:
        Listeners:
          - PortMapping: { Port: 8080, Protocol: http }
  Route:
    Type: AWS::AppMesh::GatewayRoute
    Properties:
      MeshName: m
      VirtualGatewayName: !GetAtt Gateway.VirtualGatewayName
      GatewayRouteName: r
      Spec:
        Priority: 5
        HttpRoute:
          Match:
            Prefix: /api/
            Hostname: { Exact: shop.example.com }
          Action:
            Target:
              VirtualService: { VirtualServiceName: api.local }
            Rewrite:
              Prefix: { Value: / }
"#;
    let tf = r#"
resource "aws_appmesh_mesh" "m" {
  name = "m"
}
resource "aws_appmesh_virtual_gateway" "gw" {
  name      = "gw"
  mesh_name = aws_appmesh_mesh.m.name
  spec {
    listener {
      port_mapping {
        port     = 8080
        protocol = "http"
      }
    }
  }
}
resource "aws_appmesh_gateway_route" "r" {
  name                 = "r"
  mesh_name            = "m"
  virtual_gateway_name = aws_appmesh_virtual_gateway.gw.name
  spec {
    priority = 5
    http_route {
      match {
        prefix = "/api/"
        hostname {
          exact = "shop.example.com"
        }
      }
      action {
        target {
          virtual_service {
            virtual_service_name = "api.local"
          }
        }
        rewrite {
          prefix {
            value = "/"
          }
        }
      }
    }
  }
}
"#;
    let p = Params::new();
    let sorted = |mut i: maille_import::Imported| {
        i.resources.sort_by_key(|r| r.key());
        i.resources
    };
    let from_api = sorted(import_str("gw.json", api, Format::ApiJson, &p).unwrap());
    assert_eq!(from_api.len(), 3, "{from_api:?}");
    assert!(from_api
        .iter()
        .any(|r| matches!(r, Resource::VirtualGateway(_))));
    let Some(Resource::GatewayRoute(gr)) = from_api
        .iter()
        .find(|r| matches!(r, Resource::GatewayRoute(_)))
    else {
        panic!("no gateway route in {from_api:?}")
    };
    assert_eq!(gr.virtual_gateway_name, "gw");
    let h = gr.spec.http_route.as_ref().unwrap();
    assert_eq!(
        h.matches.hostname.as_ref().unwrap().exact.as_deref(),
        Some("shop.example.com")
    );
    let from_cfn = sorted(import_str("gw.yaml", cfn, Format::CloudFormation, &p).unwrap());
    assert_eq!(from_cfn, from_api);
    let from_tf = sorted(import_str("gw.tf", tf, Format::Terraform, &p).unwrap());
    assert_eq!(from_tf, from_api);
    // They validate: the route's target must exist.
    let all = maille_model::resources(from_api);
    let e = maille_model::check_all(&all).unwrap_err().to_string();
    assert!(
        e.contains("gatewayRoute/m/gw/r: spec.httpRoute.action.target.virtualService.virtualServiceName: no virtual service named \"api.local\""),
        "{e}"
    );
}

#[test]
fn bad_gateway_routes_are_refused_with_their_field_path() {
    let api = r#"{"meshName": "m", "virtualGatewayName": "gw", "gatewayRouteName": "r",
       "spec": {"httpRoute": {
         "match": {"path": {"exact": "/x"}, "hostname": {}},
         "action": {"target": {"virtualService": {"virtualServiceName": "api.local"}},
                    "rewrite": {"prefix": {"defaultPrefix": "SOMETIMES"}}}}}}"#;
    let i = import_str("r.json", api, Format::ApiJson, &Params::new()).unwrap();
    let e = maille_model::check_resource(&i.resources[0])
        .unwrap_err()
        .to_string();
    for want in [
        "gatewayRoute/m/gw/r: spec.httpRoute.match.hostname: exactly one of exact, suffix is required",
        "gatewayRoute/m/gw/r: spec.httpRoute.action.rewrite.prefix: needs match.prefix",
        "gatewayRoute/m/gw/r: spec.httpRoute.action.rewrite.prefix.defaultPrefix: must be ENABLED or DISABLED, got \"SOMETIMES\"",
    ] {
        assert!(e.contains(want), "{want}\nnot in\n{e}");
    }
    let gw = r#"{"meshName": "m", "virtualGatewayName": "gw", "spec": {"listeners": [
        {"portMapping": {"port": 8080, "protocol": "tcp"}}]}}"#;
    let i = import_str("g.json", gw, Format::ApiJson, &Params::new()).unwrap();
    let e = maille_model::check_resource(&i.resources[0])
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("virtualGateway/m/gw: spec.listeners[0].portMapping.protocol: must be one of http, http2, grpc, got \"tcp\""),
        "{e}"
    );
}

#[test]
fn cloudformation_cloud_map_discovery_names_its_registry() {
    let cfn = r#"
Parameters:
  ServicesDomain: { Type: String, Default: demo.local }
Resources:
  Namespace:
    Type: AWS::ServiceDiscovery::PrivateDnsNamespace
    Properties: { Name: !Ref ServicesDomain, Vpc: vpc-1 }
  ColorTellerWhiteRegistry:
    Type: AWS::ServiceDiscovery::Service
    Properties:
      Name: colorteller-white
      NamespaceId: !Ref Namespace
  Mesh:
    Type: AWS::AppMesh::Mesh
    Properties: { MeshName: colors }
  White:
    Type: AWS::AppMesh::VirtualNode
    Properties:
      MeshName: !GetAtt Mesh.MeshName
      VirtualNodeName: colorteller-white
      Spec:
        Listeners: [{ PortMapping: { Port: 9080, Protocol: http } }]
        ServiceDiscovery:
          AWSCloudMap:
            NamespaceName: !Ref ServicesDomain
            ServiceName: !GetAtt ColorTellerWhiteRegistry.Name
            Attributes: [{ Key: ECS_TASK_DEFINITION_FAMILY, Value: white }]
"#;
    let i = import_str("t.yaml", cfn, Format::CloudFormation, &Params::new())
        .unwrap_or_else(|e| panic!("{e}"));
    let m = maille_model::resources(i.resources);
    check_all(&m).expect("Cloud Map discovery validates");
    let cm = m
        .values()
        .find_map(|r| match r.as_ref() {
            Resource::VirtualNode(n) => n.spec.service_discovery.clone()?.aws_cloud_map,
            _ => None,
        })
        .expect("awsCloudMap");
    assert_eq!(
        (cm.namespace_name.as_str(), cm.service_name.as_str()),
        ("demo.local", "colorteller-white")
    );
    assert_eq!(cm.attributes[0].key, "ECS_TASK_DEFINITION_FAMILY");
}

#[test]
fn kubernetes_edge_cases_are_read_as_the_controller_would_or_refused_by_name() {
    let p = Params::new();
    // A CloudFormation template that merely mentions the controller's group stays one.
    let cfn = "Parameters:\n  Label: { Type: String, Default: appmesh.k8s.aws/sidecarInjectorWebhook }\nResources:\n  M:\n    Type: AWS::AppMesh::Mesh\n    Properties: { MeshName: m }\n";
    assert_eq!(maille_import::detect("t.yaml", cfn), Format::CloudFormation);
    // The namespace's automatic name label selects it; YAML's own tags are values.
    let by_name = r#"
apiVersion: v1
kind: Namespace
metadata: { name: shop }
---
apiVersion: appmesh.k8s.aws/v1beta2
kind: Mesh
metadata: { name: shop-mesh }
spec:
  namespaceSelector: { matchLabels: { kubernetes.io/metadata.name: shop } }
---
apiVersion: appmesh.k8s.aws/v1beta2
kind: VirtualNode
metadata: { name: cart, namespace: shop }
spec:
  listeners: [{ portMapping: { port: 8080, protocol: !!str http } }]
  serviceDiscovery: { dns: { hostname: !!str cart.shop } }
"#;
    assert_eq!(maille_import::detect("k.yaml", by_name), Format::Kubernetes);
    let i = import_str("k.yaml", by_name, Format::Kubernetes, &p).unwrap_or_else(|e| panic!("{e}"));
    let m = maille_model::resources(i.resources);
    assert!(
        m.keys()
            .any(|k| k.mesh == "shop-mesh" && k.name == "cart_shop"),
        "{:?}",
        m.keys()
    );
    // A label value that is not a string, and an ARN of another service, are refused.
    let e = import_str(
        "k.yaml",
        &by_name.replace("kubernetes.io/metadata.name: shop", "tier: 3"),
        Format::Kubernetes,
        &p,
    )
    .unwrap_err();
    assert!(
        e.message
            .contains("matchLabels.tier: a label value is a string"),
        "{e}"
    );
    let arn = format!(
        "{by_name}---\napiVersion: appmesh.k8s.aws/v1beta2\nkind: VirtualService\nmetadata: {{ name: cart, namespace: shop }}\nspec:\n  provider: {{ virtualNode: {{ virtualNodeARN: \"arn:aws:ecs:us-east-1:1:mesh/shop-mesh/virtualNode/cart_shop\" }} }}\n"
    );
    let e = import_str("k.yaml", &arn, Format::Kubernetes, &p).unwrap_err();
    assert!(
        e.path.ends_with("spec.provider.virtualNode.virtualNodeARN")
            && e.message.contains("expected arn:aws:appmesh:"),
        "{e}"
    );
}

#[test]
fn cloudformation_edge_cases_of_parameters_and_conditions() {
    let p = Params::new();
    // Values missing in two resources, the first also failing because of it: both named.
    let two = r#"
Parameters:
  Stage: { Type: String }
  Domain: { Type: String }
Mappings:
  Ports: { prod: { app: 8080 } }
Resources:
  M:
    Type: AWS::AppMesh::Mesh
    Properties: { MeshName: m }
  A:
    Type: AWS::AppMesh::VirtualNode
    Properties:
      MeshName: m
      VirtualNodeName: a
      Spec:
        Listeners: [{ PortMapping: { Port: !FindInMap [Ports, !Ref Stage, app], Protocol: http } }]
  B:
    Type: AWS::AppMesh::VirtualNode
    Properties:
      MeshName: m
      VirtualNodeName: b
      Spec:
        ServiceDiscovery: { DNS: { Hostname: !Sub "b.${Domain}" } }
"#;
    let e = import_str("t.yaml", two, Format::CloudFormation, &p).unwrap_err();
    assert!(e.message.starts_with("no value for Domain, Stage,"), "{e}");
    // AWS::NoValue is not a value.
    let sub = "Resources:\n  M:\n    Type: AWS::AppMesh::Mesh\n    Properties: { MeshName: !Sub \"m-${AWS::NoValue}\" }\n";
    let e = import_str("t.yaml", sub, Format::CloudFormation, &p).unwrap_err();
    assert!(e.message.contains("AWS::NoValue only removes"), "{e}");
    // A -p ImportValue: no template reads is refused like any other.
    let plain = "Resources:\n  M:\n    Type: AWS::AppMesh::Mesh\n    Properties: { MeshName: m }\n";
    let e = import_str(
        "t.yaml",
        plain,
        Format::CloudFormation,
        &[("ImportValue:nope".to_string(), "x".to_string())].into(),
    )
    .unwrap_err();
    assert!(
        e.message
            .contains("-p ImportValue:nope: no file of this call takes"),
        "{e}"
    );
    // A chain of 40 conditions is fine; a cycle is named.
    let mut chain = String::from("Conditions:\n  C0: !Equals [a, a]\n");
    for i in 1..40 {
        chain.push_str(&format!("  C{i}: !Condition C{}\n", i - 1));
    }
    let chained = format!(
        "{chain}Resources:\n  M:\n    Type: AWS::AppMesh::Mesh\n    Condition: C39\n    Properties: {{ MeshName: m }}\n"
    );
    let i = import_str("t.yaml", &chained, Format::CloudFormation, &p)
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(i.resources.len(), 1);
    let cycle = "Conditions:\n  A: !Condition B\n  B: !Not [!Condition A]\nResources:\n  M:\n    Type: AWS::AppMesh::Mesh\n    Condition: A\n    Properties: { MeshName: m }\n";
    let e = import_str("t.yaml", cycle, Format::CloudFormation, &p).unwrap_err();
    assert!(
        e.message.contains("condition A refers back to itself"),
        "{e}"
    );
}

#[test]
fn terraform_cloud_map_discovery_names_its_namespace_and_service() {
    let tf = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/cloud_map.tf"))
        .unwrap();
    let i = import_str("m.tf", &tf, Format::Terraform, &Params::new()).unwrap();
    let n = i
        .resources
        .iter()
        .find_map(|r| match r {
            Resource::VirtualNode(n) => Some(n),
            _ => None,
        })
        .unwrap();
    let cm = n
        .spec
        .service_discovery
        .as_ref()
        .and_then(|s| s.aws_cloud_map.as_ref())
        .unwrap();
    assert_eq!(
        (cm.namespace_name.as_str(), cm.service_name.as_str()),
        ("demo.local", "colorteller")
    );
    // The Cloud Map resources themselves are said to be skipped.
    assert!(
        i.warnings
            .iter()
            .any(|w| w.contains("aws_service_discovery_service.svc: not an App Mesh resource")),
        "{:?}",
        i.warnings
    );
}
