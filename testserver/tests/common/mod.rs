//! Shared helpers for the integration tests: starting a server, a kube-rs
//! client for it, the EncryptedSecret test type, and polling with deadlines.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kmsecrets_testserver::TestServer;
use kube::CustomResource;
use kube::api::{Api, PostParams};
use serde::{Deserialize, Serialize};

pub mod load;

pub const CRD_YAML: &str = include_str!("../fixtures/encryptedsecret-crd.yaml");

/// How long a test waits for something the server does asynchronously.
pub const DEADLINE: Duration = Duration::from_secs(15);

#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[kube(
    group = "kmsecrets.dev",
    version = "v1alpha1",
    kind = "EncryptedSecret",
    namespaced,
    status = "EncryptedSecretStatus",
    shortname = "esec",
    schema = "disabled"
)]
#[serde(rename_all = "camelCase")]
pub struct EncryptedSecretSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub encryption_context: BTreeMap<String, String>,
    #[serde(default)]
    pub data_keys: Vec<DataKey>,
    #[serde(default)]
    pub encrypted_data: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deletion_policy: Option<String>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct DataKey {
    pub provider: String,
    pub key_id: String,
    pub ciphertext: String,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct EncryptedSecretStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    #[serde(rename = "type")]
    pub type_: String,
    pub status: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

pub fn esec(name: &str, data: &[(&str, &str)]) -> EncryptedSecret {
    let mut e = EncryptedSecret::new(
        name,
        EncryptedSecretSpec {
            scope: Some("strict".into()),
            data_keys: vec![DataKey {
                provider: "aws-kms".into(),
                key_id: "alias/test".into(),
                ciphertext: "Y2lwaGVy".into(),
            }],
            encrypted_data: data
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ..Default::default()
        },
    );
    e.metadata.namespace = Some("default".into());
    e
}

pub async fn start() -> TestServer {
    TestServer::start("127.0.0.1:0")
        .await
        .expect("test server starts on a free port")
}

pub async fn client(server: &TestServer) -> kube::Client {
    let kc =
        kube::config::Kubeconfig::from_yaml(&server.kubeconfig_yaml()).expect("kubeconfig parses");
    let cfg = kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
        .await
        .expect("kubeconfig loads");
    kube::Client::try_from(cfg).expect("client builds")
}

/// Registers the EncryptedSecret CRD from the fixture and waits until it is
/// Established.
pub async fn install_crd(client: &kube::Client) {
    let crd: CustomResourceDefinition = serde_saphyr::from_str(CRD_YAML).expect("fixture parses");
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    api.create(&PostParams::default(), &crd)
        .await
        .expect("CRD created");
    eventually("CRD Established", || async {
        let crd = api.get("encryptedsecrets.kmsecrets.dev").await.ok()?;
        let established = crd
            .status?
            .conditions?
            .iter()
            .any(|c| c.type_ == "Established" && c.status == "True");
        established.then_some(())
    })
    .await;
}

/// Polls `f` until it yields `Some`, failing the test after [`DEADLINE`]
/// (the suites' one helper, `kmsecrets_envtest::eventually`).
pub async fn eventually<T>(what: &str, f: impl AsyncFnMut() -> Option<T>) -> T {
    kmsecrets_envtest::eventually(DEADLINE, what, f).await
}

/// The HTTP status code of a kube API error.
pub fn code(err: &kube::Error) -> u16 {
    match err {
        kube::Error::Api(s) => s.code,
        other => panic!("expected an API error, got {other:?}"),
    }
}
