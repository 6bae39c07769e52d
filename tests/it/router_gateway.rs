//! The Gateway API driver against a fake API server on 127.0.0.1 that keeps one HTTPRoute, applies the driver's JSON Patches and validates every result against the published HTTPRoute CRD (no real API server can run here).
//!
//! The fake keeps more routes beside it where a test asks for them, and lists them as a LIST
//! of the namespace's HTTPRoutes answers. It checks what a real API server would refuse and
//! what canaryd promises to send: the bearer token, `?fieldManager=canaryd`, the JSON Patch
//! content type; it applies `test`, `replace` and `add` as RFC 6902 says, validates the patched
//! `spec` against the CRD's `v1` `openAPIV3Schema` (structural schema only: the CRD's CEL
//! `x-kubernetes-validations` are not evaluated) and answers an invalid result or a failed
//! `test` with 422, a missing route with 404, a wrong token with 401, each as a Kubernetes
//! `Status`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Json;
use axum::extract::{Path as UrlPath, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use canaryd::core::model::{Traffic, Weight};
use canaryd::edge::router::RouterError;
use canaryd::edge::router::gateway::GatewayRouter;
use serde_json::{Value, json};
use tokio_util::sync::DropGuard;

use crate::support::net::{self, Silent};
use crate::support::observe::{
    assert_unknown, blue_green, observe_all_checked, services, weights_of,
};

const NAMESPACE: &str = "shop";
const ROUTE: &str = "checkout";
const TOKEN: &str = "eyJhbGciOiJSUzI1NiJ9.canaryd-test-token";
const ROUTES: &str = "/apis/gateway.networking.k8s.io/v1/namespaces/{ns}/httproutes";
const ROUTE_PATH: &str = "/apis/gateway.networking.k8s.io/v1/namespaces/{ns}/httproutes/{name}";

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/gateway-api")
        .join(name)
}

/// The `spec` schema of HTTPRoute `v1`, from the published CRD.
fn spec_schema() -> jsonschema::Validator {
    let text =
        std::fs::read_to_string(fixture("gateway.networking.k8s.io_httproutes.yaml")).unwrap();
    let crd: Value = serde_saphyr::from_str(&text).unwrap();
    let v1 = crd["spec"]["versions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == "v1")
        .unwrap();
    jsonschema::validator_for(&v1["schema"]["openAPIV3Schema"]["properties"]["spec"]).unwrap()
}

/// The schema's complaints about `spec`, empty when valid.
fn complaints(schema: &jsonschema::Validator, spec: &Value) -> Vec<String> {
    schema
        .iter_errors(spec)
        .map(|e| format!("{}: {e}", e.instance_path()))
        .collect()
}

/// An HTTPRoute as an API server returns it: metadata with managedFields, status from a
/// gateway controller; blue 100, green 0.
fn realistic_route() -> Value {
    let parent = json!({"group": "gateway.networking.k8s.io", "kind": "Gateway",
                        "name": "edge", "namespace": "infra", "sectionName": "https"});
    json!({
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "HTTPRoute",
        "metadata": {
            "name": ROUTE,
            "namespace": NAMESPACE,
            "uid": "3f0b9c52-8d1e-4a57-9a64-0c2f5e7d1b90",
            "resourceVersion": "48213",
            "generation": 4,
            "creationTimestamp": "2026-11-02T09:14:07Z",
            "labels": {"app.kubernetes.io/part-of": "shop"},
            "managedFields": [{
                "manager": "argocd-controller",
                "operation": "Apply",
                "apiVersion": "gateway.networking.k8s.io/v1",
                "time": "2026-11-20T16:40:51Z",
                "fieldsType": "FieldsV1",
                "fieldsV1": {"f:metadata": {"f:labels": {"f:app.kubernetes.io/part-of": {}}},
                             "f:spec": {"f:hostnames": {}, "f:parentRefs": {}, "f:rules": {}}}
            }]
        },
        "spec": {
            "parentRefs": [parent],
            "hostnames": ["shop.example.com"],
            "rules": [{
                "matches": [{"path": {"type": "PathPrefix", "value": "/checkout"}}],
                "backendRefs": [
                    {"group": "", "kind": "Service", "name": "blue", "port": 8080, "weight": 100},
                    {"group": "", "kind": "Service", "name": "green", "port": 8080, "weight": 0}
                ]
            }]
        },
        "status": {"parents": [{
            "parentRef": parent,
            "controllerName": "example.net/gateway-controller",
            "conditions": [
                {"type": "Accepted", "status": "True", "reason": "Accepted", "message": "",
                 "observedGeneration": 4, "lastTransitionTime": "2026-11-20T16:40:52Z"},
                {"type": "ResolvedRefs", "status": "True", "reason": "ResolvedRefs", "message": "",
                 "observedGeneration": 4, "lastTransitionTime": "2026-11-20T16:40:52Z"}
            ]
        }]}
    })
}

/// The fake API server's state.
struct Fake {
    /// The first is the route the tests drive; more where a test asks for them.
    routes: Vec<Value>,
    token: String,
    schema: jsonschema::Validator,
    /// Patches applied (refused ones not counted).
    patches: usize,
    /// Requests for one route (`GET`, answered or refused), and lists of routes answered.
    gets: usize,
    lists: usize,
    /// Swap the route's two backendRefs right after the next GET (a concurrent edit).
    reorder_after_get: bool,
}

type Shared = Arc<Mutex<Fake>>;

fn status(code: StatusCode, reason: &str, message: String) -> Response {
    let body = json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                      "message": message, "reason": reason, "code": code.as_u16()});
    (code, Json(body)).into_response()
}

/// The answer to give instead when the request does not carry the bearer token.
fn check_token(token: &str, headers: &HeaderMap) -> Result<(), Box<Response>> {
    let expected = format!("Bearer {token}");
    if headers.get("authorization").and_then(|v| v.to_str().ok()) != Some(expected.as_str()) {
        let answer = status(
            StatusCode::UNAUTHORIZED,
            "Unauthorized",
            "Unauthorized".into(),
        );
        return Err(Box::new(answer));
    }
    Ok(())
}

/// The route named in the path, after checking the token; or the answer to give instead.
fn authorised<'a>(
    routes: &'a mut [Value],
    token: &str,
    headers: &HeaderMap,
    ns: &str,
    name: &str,
) -> Result<&'a mut Value, Box<Response>> {
    check_token(token, headers)?;
    routes
        .iter_mut()
        .find(|route| ns == route["metadata"]["namespace"] && name == route["metadata"]["name"])
        .ok_or_else(|| {
            Box::new(status(
                StatusCode::NOT_FOUND,
                "NotFound",
                format!("httproutes.gateway.networking.k8s.io \"{name}\" not found"),
            ))
        })
}

/// A LIST of the HTTPRoutes of a namespace, as an API server answers one without `limit`: all
/// of them.
async fn list_routes(
    State(fake): State<Shared>,
    UrlPath(ns): UrlPath<String>,
    headers: HeaderMap,
) -> Response {
    let mut fake = fake.lock().unwrap();
    if let Err(answer) = check_token(&fake.token, &headers) {
        return *answer;
    }
    fake.lists += 1;
    let items: Vec<&Value> = fake
        .routes
        .iter()
        .filter(|route| ns.as_str() == route["metadata"]["namespace"])
        .collect();
    let list = json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRouteList",
                      "metadata": {"resourceVersion": "48300"}, "items": items});
    Json(list).into_response()
}

async fn get_route(
    State(fake): State<Shared>,
    UrlPath((ns, name)): UrlPath<(String, String)>,
    headers: HeaderMap,
) -> Response {
    let mut guard = fake.lock().unwrap();
    let fake = &mut *guard;
    fake.gets += 1;
    let route = match authorised(&mut fake.routes, &fake.token, &headers, &ns, &name) {
        Ok(route) => route,
        Err(answer) => return *answer,
    };
    let answer = Json(route.clone()).into_response();
    if fake.reorder_after_get {
        fake.reorder_after_get = false;
        route["spec"]["rules"][0]["backendRefs"]
            .as_array_mut()
            .unwrap()
            .reverse();
    }
    answer
}

/// RFC 6902 `test`, `replace` and `add` (enough for what the driver sends).
fn json_patch(doc: &mut Value, ops: &[Value]) -> Result<(), String> {
    for op in ops {
        let path = op["path"].as_str().ok_or("op without path")?;
        let value = op.get("value").cloned().ok_or("op without value")?;
        let missing = || format!("doc is missing path: {path}");
        match op["op"].as_str() {
            Some("test") => {
                if doc.pointer(path) != Some(&value) {
                    return Err(format!("testing value {path} failed"));
                }
            }
            Some("replace") => *doc.pointer_mut(path).ok_or_else(missing)? = value,
            Some("add") => {
                let (parent, key) = path.rsplit_once('/').ok_or_else(missing)?;
                doc.pointer_mut(parent)
                    .and_then(Value::as_object_mut)
                    .ok_or_else(missing)?
                    .insert(key.to_string(), value);
            }
            other => return Err(format!("unexpected op {other:?}")),
        }
    }
    Ok(())
}

async fn patch_route(
    State(fake): State<Shared>,
    UrlPath((ns, name)): UrlPath<(String, String)>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
    body: String,
) -> Response {
    let mut guard = fake.lock().unwrap();
    let fake = &mut *guard;
    let route = match authorised(&mut fake.routes, &fake.token, &headers, &ns, &name) {
        Ok(route) => route,
        Err(answer) => return *answer,
    };
    if query.get("fieldManager").map(String::as_str) != Some("canaryd") {
        let message = format!("expected fieldManager=canaryd, got {query:?}");
        return status(StatusCode::BAD_REQUEST, "BadRequest", message);
    }
    let content_type = headers.get("content-type").and_then(|v| v.to_str().ok());
    if content_type != Some("application/json-patch+json") {
        let message = format!("unexpected content type {content_type:?}");
        return status(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "UnsupportedMediaType",
            message,
        );
    }
    let ops: Vec<Value> = match serde_json::from_str(&body) {
        Ok(ops) => ops,
        Err(e) => return status(StatusCode::BAD_REQUEST, "BadRequest", e.to_string()),
    };
    let mut patched = route.clone();
    if let Err(e) = json_patch(&mut patched, &ops) {
        let message =
            format!("the server rejected our request due to an error in our request: {e}");
        return status(StatusCode::UNPROCESSABLE_ENTITY, "Invalid", message);
    }
    let problems = complaints(&fake.schema, &patched["spec"]);
    if !problems.is_empty() {
        let message = format!(
            "HTTPRoute.gateway.networking.k8s.io \"{name}\" is invalid: {}",
            problems.join("; ")
        );
        return status(StatusCode::UNPROCESSABLE_ENTITY, "Invalid", message);
    }
    let meta = &mut patched["metadata"];
    let version: u64 = meta["resourceVersion"].as_str().unwrap().parse().unwrap();
    meta["resourceVersion"] = json!((version + 1).to_string());
    meta["generation"] = json!(meta["generation"].as_u64().unwrap() + 1);
    let fields = meta["managedFields"].as_array_mut().unwrap();
    if !fields.iter().any(|f| f["manager"] == "canaryd") {
        fields.push(json!({"manager": "canaryd", "operation": "Update",
                           "apiVersion": "gateway.networking.k8s.io/v1", "fieldsType": "FieldsV1",
                           "fieldsV1": {"f:spec": {"f:rules": {}}}}));
    }
    *route = patched.clone();
    fake.patches += 1;
    Json(patched).into_response()
}

async fn readyz(State(fake): State<Shared>, headers: HeaderMap) -> Response {
    match check_token(&fake.lock().unwrap().token, &headers) {
        Ok(()) => "ok".into_response(),
        Err(answer) => *answer,
    }
}

/// A fake API server on 127.0.0.1 holding `route`; stopped on drop.
struct ApiServer {
    url: String,
    fake: Shared,
    token_file: tempfile::NamedTempFile,
    _stop: DropGuard,
}

impl ApiServer {
    async fn start(route: Value) -> ApiServer {
        ApiServer::start_with(vec![route]).await
    }

    /// A fake holding `routes`, the first being the one [`ApiServer::route`] returns.
    async fn start_with(routes: Vec<Value>) -> ApiServer {
        let schema = spec_schema();
        for route in &routes {
            let problems = complaints(&schema, &route["spec"]);
            assert!(
                problems.is_empty(),
                "the fake's route {} is invalid: {problems:?}",
                route["metadata"]["name"]
            );
        }
        let fake = Arc::new(Mutex::new(Fake {
            routes,
            token: TOKEN.to_string(),
            schema,
            patches: 0,
            gets: 0,
            lists: 0,
            reorder_after_get: false,
        }));
        let app = axum::Router::new()
            .route(ROUTES, get(list_routes))
            .route(ROUTE_PATH, get(get_route).patch(patch_route))
            .route("/readyz", get(readyz))
            .with_state(fake.clone());
        let (addr, stop) = net::serve(app).await;
        let url = format!("http://{addr}");
        let token_file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(token_file.path(), format!("{TOKEN}\n")).unwrap();
        ApiServer {
            url,
            fake,
            token_file,
            _stop: stop,
        }
    }

    fn router(&self) -> GatewayRouter {
        GatewayRouter::new(
            "k8s",
            &self.url,
            NAMESPACE,
            Some(self.token_file.path().to_str().unwrap()),
        )
        .unwrap()
    }

    fn route(&self) -> Value {
        self.fake.lock().unwrap().routes[0].clone()
    }

    fn patches(&self) -> usize {
        self.fake.lock().unwrap().patches
    }

    /// Requests for one route, and lists of routes answered, so far.
    fn reads(&self) -> (usize, usize) {
        let fake = self.fake.lock().unwrap();
        (fake.gets, fake.lists)
    }
}

fn traffic(pairs: &[(&str, i64)]) -> Traffic {
    Traffic::of(pairs).unwrap()
}

fn weights(pairs: &[(&str, u32)]) -> std::collections::BTreeMap<String, u32> {
    pairs.iter().map(|(n, w)| (n.to_string(), *w)).collect()
}

#[tokio::test]
async fn weights_are_set_and_read_back_and_nothing_else_changes() {
    let api = ApiServer::start(realistic_route()).await;
    let router = api.router();
    router.health().await.unwrap();
    assert_eq!(
        router.observe(ROUTE).await.unwrap().backends,
        weights(&[("blue", 100), ("green", 0)])
    );
    let before = api.route();
    for (blue, green) in [(90, 10), (0, 100), (100, 0)] {
        router
            .apply(ROUTE, &traffic(&[("blue", blue), ("green", green)]))
            .await
            .unwrap();
        let live = router.observe(ROUTE).await.unwrap();
        assert_eq!(
            live.backends,
            weights(&[("blue", blue as u32), ("green", green as u32)])
        );
    }
    assert_eq!(api.patches(), 3);
    let after = api.route();
    // Only the weights, resourceVersion, generation and managedFields moved.
    for pointer in [
        "/spec/parentRefs",
        "/spec/hostnames",
        "/spec/rules/0/matches",
        "/status",
        "/metadata/uid",
        "/metadata/labels",
    ] {
        assert_eq!(after.pointer(pointer), before.pointer(pointer), "{pointer}");
    }
    for (i, name) in ["blue", "green"].iter().enumerate() {
        let r = &after["spec"]["rules"][0]["backendRefs"][i];
        assert_eq!(
            (&r["name"], &r["kind"], &r["port"]),
            (&json!(name), &json!("Service"), &json!(8080))
        );
    }
    assert_eq!(after["metadata"]["resourceVersion"], "48216");
    let managers: Vec<&Value> = after["metadata"]["managedFields"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| &f["manager"])
        .collect();
    assert_eq!(managers, [&json!("argocd-controller"), &json!("canaryd")]);
}

#[tokio::test]
async fn applying_the_same_traffic_again_sends_nothing() {
    let api = ApiServer::start(realistic_route()).await;
    let router = api.router();
    let t = traffic(&[("blue", 90), ("green", 10)]);
    router.apply(ROUTE, &t).await.unwrap();
    let version = api.route()["metadata"]["resourceVersion"].clone();
    router.apply(ROUTE, &t).await.unwrap();
    assert_eq!(api.patches(), 1);
    assert_eq!(api.route()["metadata"]["resourceVersion"], version);
}

#[tokio::test]
async fn a_hand_made_change_is_seen_and_undone() {
    let api = ApiServer::start(realistic_route()).await;
    let router = api.router();
    router
        .apply(ROUTE, &traffic(&[("blue", 90), ("green", 10)]))
        .await
        .unwrap();
    {
        // kubectl edit: green loses its weight (so 1), blue gets 3.
        let route = &mut api.fake.lock().unwrap().routes[0];
        let refs = &mut route["spec"]["rules"][0]["backendRefs"];
        refs[0]["weight"] = json!(3);
        refs[1].as_object_mut().unwrap().remove("weight");
    }
    let live = router.observe(ROUTE).await.unwrap();
    assert_eq!(live.backends, weights(&[("blue", 3), ("green", 1)]));
    assert_eq!(live.percentages().unwrap()["green"].get(), 25);
    router
        .apply(ROUTE, &traffic(&[("blue", 90), ("green", 10)]))
        .await
        .unwrap();
    assert_eq!(
        router.observe(ROUTE).await.unwrap().backends,
        weights(&[("blue", 90), ("green", 10)])
    );
}

#[tokio::test]
async fn unknown_routes_and_backends_are_unknown_and_change_nothing() {
    let api = ApiServer::start(realistic_route()).await;
    let router = api.router();
    match router.observe("cart").await {
        Err(RouterError::Unknown { what, .. }) => assert!(what.contains("shop/cart"), "{what}"),
        other => panic!("{other:?}"),
    }
    match router.apply("cart", &traffic(&[("blue", 100)])).await {
        Err(RouterError::Unknown { .. }) => {}
        other => panic!("{other:?}"),
    }
    match router
        .apply(ROUTE, &traffic(&[("blue", 90), ("red", 10)]))
        .await
    {
        Err(RouterError::Unknown { what, .. }) => assert!(what.contains("`red`"), "{what}"),
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        router.observe("Not/A name").await,
        Err(RouterError::Unknown { .. })
    ));
    assert_eq!(api.patches(), 0);
}

#[tokio::test]
async fn observe_all_reads_every_route_with_one_list_as_observe_does() {
    let named = |name: &str| {
        let mut route = realistic_route();
        route["metadata"]["name"] = json!(name);
        route
    };
    // A route that redirects only: no rule has backendRefs.
    let mut redirect = named("redirect");
    redirect["spec"]["rules"] = json!([{"filters": [{"type": "RequestRedirect",
        "requestRedirect": {"scheme": "https", "statusCode": 301}}]}]);
    let api = ApiServer::start_with(vec![
        named(ROUTE),
        named("search"),
        named("profile"),
        redirect,
    ])
    .await;
    let router = api.router();
    for (name, green) in [(ROUTE, 10), ("search", 65), ("profile", 100)] {
        router
            .apply(name, &traffic(&[("blue", 100 - green), ("green", green)]))
            .await
            .unwrap();
    }
    let asked = services(&[ROUTE, "search", "profile", "redirect", "cart", "Not/A name"]);
    let (gets, lists) = api.reads();
    let all = observe_all_checked!(router, &asked);
    // One LIST for all; one GET per `observe` (an invalid name is refused before any).
    assert_eq!(api.reads(), (gets + 5, lists + 1));
    assert_eq!(weights_of(&all, ROUTE), &blue_green(90, 10));
    assert_eq!(weights_of(&all, "search"), &blue_green(35, 65));
    assert_eq!(weights_of(&all, "profile"), &blue_green(0, 100));
    assert_unknown(&all, "redirect", "rule with backendRefs");
    assert_unknown(&all, "cart", "httproute `shop/cart`");
    assert_unknown(&all, "Not/A name", "not a valid object name");
}

#[tokio::test]
async fn a_route_reordered_between_read_and_write_is_refused_not_misset() {
    let api = ApiServer::start(realistic_route()).await;
    let router = api.router();
    api.fake.lock().unwrap().reorder_after_get = true;
    match router
        .apply(ROUTE, &traffic(&[("blue", 10), ("green", 90)]))
        .await
    {
        Err(e @ RouterError::Rejected { .. }) => {
            assert!(e.to_string().contains("422"), "{e}");
            assert!(!e.is_transient());
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(api.patches(), 0);
    // Read again, the same traffic lands on the right backends.
    router
        .apply(ROUTE, &traffic(&[("blue", 10), ("green", 90)]))
        .await
        .unwrap();
    assert_eq!(
        router.observe(ROUTE).await.unwrap().backends,
        weights(&[("blue", 10), ("green", 90)])
    );
    assert_eq!(
        api.route()["spec"]["rules"][0]["backendRefs"][0]["name"],
        "green"
    );
}

#[tokio::test]
async fn the_crd_bounds_weights_and_an_invalid_result_is_refused() {
    // The CRD allows 0..=1000000; canaryd writes percentages and cannot name more than 100.
    let schema = spec_schema();
    let mut route = realistic_route();
    for (w, ok) in [
        (json!(0), true),
        (json!(1_000_000), true),
        (json!(1_000_001), false),
        (json!(-1), false),
        (json!("10"), false),
    ] {
        route["spec"]["rules"][0]["backendRefs"][0]["weight"] = w.clone();
        assert_eq!(
            complaints(&schema, &route["spec"]).is_empty(),
            ok,
            "weight {w}"
        );
    }
    assert!(Weight::new(101).is_none());
    // A route the API server holds but would not accept again (a hostname it now refuses, set
    // behind its back here): the patched object fails validation, the write is refused.
    let api = ApiServer::start(realistic_route()).await;
    api.fake.lock().unwrap().routes[0]["spec"]["hostnames"] = json!(["Not_A_Host"]);
    match api
        .router()
        .apply(ROUTE, &traffic(&[("blue", 50), ("green", 50)]))
        .await
    {
        Err(RouterError::Rejected { message, .. }) => {
            assert!(message.contains("is invalid"), "{message}")
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(api.patches(), 0);
}

#[tokio::test]
async fn a_wrong_or_missing_token_is_rejected_without_showing_it_and_rotation_is_read() {
    let api = ApiServer::start(realistic_route()).await;
    let wrong = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(wrong.path(), "stale-token-abc123").unwrap();
    let router = GatewayRouter::new(
        "k8s",
        &api.url,
        NAMESPACE,
        Some(wrong.path().to_str().unwrap()),
    )
    .unwrap();
    for result in [
        router.observe(ROUTE).await.map(drop),
        router.health().await,
        router
            .apply(ROUTE, &traffic(&[("blue", 1), ("green", 99)]))
            .await,
    ] {
        match result {
            Err(e @ RouterError::Rejected { .. }) => {
                let text = format!("{e} {e:?}");
                assert!(text.contains("401"), "{text}");
                assert!(
                    !text.contains("stale-token") && !text.contains("abc123"),
                    "{text}"
                );
            }
            other => panic!("{other:?}"),
        }
    }
    assert!(!format!("{router:?}").contains("stale-token"));
    // No token at all.
    let anonymous = GatewayRouter::new("k8s", &api.url, NAMESPACE, None).unwrap();
    assert!(matches!(
        anonymous.observe(ROUTE).await,
        Err(RouterError::Rejected { .. })
    ));
    // The token is rotated in the file: the same driver uses the new one.
    std::fs::write(wrong.path(), format!("{TOKEN}\n")).unwrap();
    router.observe(ROUTE).await.unwrap();
    // A token file that vanished is a setup problem, named by path only.
    let gone = GatewayRouter::new(
        "k8s",
        &api.url,
        NAMESPACE,
        Some("/nonexistent/canaryd/token"),
    )
    .unwrap();
    assert!(matches!(
        gone.observe(ROUTE).await,
        Err(RouterError::Setup { .. })
    ));
    assert_eq!(api.patches(), 0);
}

#[tokio::test]
async fn an_api_server_down_or_silent_is_unreachable_within_the_timeout() {
    let closed = net::free_addr();
    let router = GatewayRouter::new("k8s", &format!("http://{closed}"), NAMESPACE, None).unwrap();
    for result in [
        router.observe(ROUTE).await.map(drop),
        router.health().await,
        router.apply(ROUTE, &traffic(&[("blue", 100)])).await,
    ] {
        match result {
            Err(e @ RouterError::Unreachable { .. }) => assert!(e.is_transient()),
            other => panic!("{other:?}"),
        }
    }
    // Accepts connections, never answers.
    let silent = Silent::start().await;
    let addr = silent.addr;
    let router = GatewayRouter::new("k8s", &format!("http://{addr}"), NAMESPACE, None).unwrap();
    let started = Instant::now();
    match router.observe(ROUTE).await {
        Err(RouterError::Unreachable { message, .. }) => {
            assert!(message.contains("within 2s"), "{message}")
        }
        other => panic!("{other:?}"),
    }
    assert!(started.elapsed() < Duration::from_secs(4));
    drop(silent);
}

#[tokio::test]
async fn published_traffic_splitting_examples_are_read_and_set() {
    let schema = spec_schema();
    let expected = [
        (
            "simple-split.yaml",
            weights(&[("foo-v1", 90), ("foo-v2", 10)]),
        ),
        // Two rules of one backend each: the first is driven, its weight defaults to 1.
        ("traffic-split-1.yaml", weights(&[("foo-v1", 1)])),
        (
            "traffic-split-2.yaml",
            weights(&[("foo-v1", 90), ("foo-v2", 10)]),
        ),
        (
            "traffic-split-3.yaml",
            weights(&[("foo-v1", 0), ("foo-v2", 1)]),
        ),
    ];
    for (file, want) in expected {
        let text = std::fs::read_to_string(fixture(file)).unwrap();
        let mut route: Value = serde_saphyr::from_str(&text).unwrap();
        assert!(complaints(&schema, &route["spec"]).is_empty(), "{file}");
        // What an API server adds to a manifest it stores.
        let name = route["metadata"]["name"].as_str().unwrap().to_string();
        let meta = &mut route["metadata"];
        meta["namespace"] = json!(NAMESPACE);
        meta["resourceVersion"] = json!("1");
        meta["generation"] = json!(1);
        meta["managedFields"] = json!([]);
        let api = ApiServer::start(route).await;
        let router = api.router();
        assert_eq!(
            router.observe(&name).await.unwrap().backends,
            want,
            "{file}"
        );
        let split = traffic(&[("foo-v1", 50), ("foo-v2", 50)]);
        if file == "traffic-split-1.yaml" {
            // foo-v2 is only in the second, header-matched rule: not driven, so unknown.
            assert!(matches!(
                router.apply(&name, &split).await,
                Err(RouterError::Unknown { .. })
            ));
        } else {
            router.apply(&name, &split).await.unwrap();
            assert_eq!(
                router.observe(&name).await.unwrap().backends,
                weights(&[("foo-v1", 50), ("foo-v2", 50)]),
                "{file}"
            );
        }
    }
}

/// Traffic with routes: testers by header (exact), one country by prefix or a regex, and a
/// beta query parameter, to the canary `green`.
fn routed(blue: i64, green: i64) -> Traffic {
    use canaryd::core::model::{Criterion, Field, Match, Pattern, Route};
    let c = |on, name: &str, value| Criterion {
        on,
        name: name.to_string(),
        value,
    };
    let mut t = traffic(&[("blue", blue), ("green", green)]);
    t.canary = Some("green".into());
    t.routes = vec![
        Route {
            name: "testers".into(),
            matches: vec![
                Match {
                    all: vec![c(
                        Field::Header,
                        "X-Canary",
                        Pattern::Exact("always".into()),
                    )],
                },
                Match {
                    all: vec![
                        c(
                            Field::Header,
                            "CF-IPCountry",
                            Pattern::Regex("DE|AT".into()),
                        ),
                        c(Field::Query, "beta", Pattern::Prefix("on.".into())),
                    ],
                },
            ],
            backend: "green".into(),
        },
        Route {
            name: "staff".into(),
            matches: vec![Match {
                all: vec![c(Field::Header, "X-Staff", Pattern::Prefix("yes".into()))],
            }],
            backend: "green".into(),
        },
    ];
    t
}

#[tokio::test]
async fn header_routes_are_rules_of_their_own_valid_for_the_crd_and_read_back_exactly() {
    let api = ApiServer::start(realistic_route()).await;
    let router = api.router();
    let want = routed(100, 0);
    router.apply(ROUTE, &want).await.unwrap();
    assert_eq!(api.patches(), 1);
    let live = router.observe(ROUTE).await.unwrap();
    assert_eq!(live.routes, want.routes, "read back exactly");
    assert_eq!(live.backends, weights(&[("blue", 100), ("green", 0)]));
    let rules = api.route()["spec"]["rules"].clone();
    let names: Vec<&Value> = rules
        .as_array()
        .unwrap()
        .iter()
        .map(|r| &r["name"])
        .collect();
    assert_eq!(
        names,
        [
            &json!("canaryd-testers"),
            &json!("canaryd-staff"),
            &Value::Null
        ],
        "before the weighted rule, which stays driven"
    );
    // Each match keeps the weighted rule's path, so a route takes only its requests.
    let first = &rules[0]["matches"][0];
    assert_eq!(
        first["path"],
        json!({"type": "PathPrefix", "value": "/checkout"})
    );
    assert_eq!(
        first["headers"],
        json!([{"type": "Exact", "name": "X-Canary", "value": "always"}])
    );
    assert_eq!(
        rules[0]["matches"][1]["queryParams"],
        json!([{"type": "RegularExpression", "name": "beta", "value": "^on\\..*"}])
    );
    assert_eq!(
        rules[0]["backendRefs"],
        json!([{"group": "", "kind": "Service", "name": "green", "port": 8080}])
    );
    // The same again sends nothing; weights move without touching the routes.
    router.apply(ROUTE, &want).await.unwrap();
    assert_eq!(api.patches(), 1);
    router.apply(ROUTE, &routed(90, 10)).await.unwrap();
    let live = router.observe(ROUTE).await.unwrap();
    assert_eq!(live.backends, weights(&[("blue", 90), ("green", 10)]));
    assert_eq!(live.routes, want.routes);
    // A route deleted by hand shows as drift.
    api.fake.lock().unwrap().routes[0]["spec"]["rules"]
        .as_array_mut()
        .unwrap()
        .remove(1);
    assert_eq!(router.observe(ROUTE).await.unwrap().routes.len(), 1);
    // Weights alone (an abort): every canaryd rule goes, the route is as it was.
    router
        .apply(ROUTE, &traffic(&[("blue", 100), ("green", 0)]))
        .await
        .unwrap();
    let after = api.route();
    assert_eq!(after["spec"], realistic_route()["spec"]);
    assert!(router.observe(ROUTE).await.unwrap().routes.is_empty());
}

#[tokio::test]
async fn a_cookie_match_or_a_name_that_is_no_rule_name_is_refused_and_changes_nothing() {
    use canaryd::core::model::{Criterion, Field, Pattern};
    let api = ApiServer::start(realistic_route()).await;
    let router = api.router();
    let mut cookie = routed(100, 0);
    cookie.routes[0].matches[0].all = vec![Criterion {
        on: Field::Cookie,
        name: "beta".into(),
        value: Pattern::Exact("1".into()),
    }];
    let err = router.apply(ROUTE, &cookie).await.unwrap_err();
    assert!(err.to_string().contains("has no cookie match"), "{err}");
    let mut bad_name = routed(100, 0);
    bad_name.routes[0].name = "Testers!".into();
    let err = router.apply(ROUTE, &bad_name).await.unwrap_err();
    assert!(err.to_string().contains("must be a DNS label"), "{err}");
    assert_eq!(api.patches(), 0);
}
