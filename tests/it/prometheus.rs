//! The Prometheus provider against a real `prometheus` (2.42) on 127.0.0.1: every answer shape, errors, credentials, and the built-in queries measured through real HAProxy and Traefik exporters with real failing backends.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::IntoResponse as _;
use canaryd::backend::{LoadConfig, LoadReport, load};
use canaryd::prometheus::{Prometheus, PrometheusConfig, ProviderError};
use canaryd::promql::{Vars, builtin, render};
use canaryd::secret::SecretRef;
use chrono::{DateTime, Utc};
use tokio_util::sync::{CancellationToken, DropGuard};

use crate::support::backends::{Backends, Server};
use crate::support::net::{self, Silent, free_port};
use crate::support::rig::haproxy::Haproxy;
use crate::support::rig::prometheus::{PromOptions, PromServer};
use crate::support::rig::traefik::Traefik;

/// A `#[tokio::test]`'s way to call the blocking harness.
fn blocking<T>(f: impl FnOnce() -> T) -> T {
    tokio::task::block_in_place(f)
}

// ---------------------------------------------------------------------------------------------
// The client against real Prometheus
// ---------------------------------------------------------------------------------------------

fn at_ms(ms: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(ms).unwrap()
}

fn shape_error(r: Result<Option<f64>, ProviderError>, want: &str) {
    match r {
        Err(e @ ProviderError::Shape { .. }) => {
            assert!(e.to_string().contains(want), "{e}");
            assert!(!e.is_transient());
        }
        other => panic!("expected a shape error with {want:?}, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_prometheus_answers_of_every_shape() {
    let server = blocking(|| PromServer::start(&[])).unwrap();
    let p = server.client();
    let now = Utc::now();
    let one = |q: &'static str| {
        let p = &p;
        async move { p.instant(q, now).await }
    };
    assert_eq!(one("scalar(vector(0.25))").await.unwrap(), Some(0.25));
    assert_eq!(one("1.5").await.unwrap(), Some(1.5));
    assert_eq!(one("vector(0.5)").await.unwrap(), Some(0.5));
    assert_eq!(one("vector(1) > 2").await.unwrap(), None, "empty vector");
    assert_eq!(one("vector(0/0)").await.unwrap(), None, "NaN sample");
    assert_eq!(one("0/0").await.unwrap(), None, "NaN scalar");
    assert_eq!(one("vector(1/0)").await.unwrap(), Some(f64::INFINITY));
    assert_eq!(one("vector(-1/0)").await.unwrap(), Some(f64::NEG_INFINITY));
    shape_error(
        one(r#"label_replace(vector(1), "code", "500", "", "") or vector(2)"#).await,
        r#"returned 2 series ({code="500"}, {}), but a metric needs one number: aggregate them"#,
    );
    shape_error(one("vector(1)[5m:1m]").await, "returned a range vector");
    shape_error(one(r#""hello""#).await, "returned a string");

    // The evaluation time is sent to the millisecond.
    let t = at_ms(1_700_000_000_123);
    assert_eq!(
        p.instant("time()", t).await.unwrap(),
        Some(1_700_000_000.123)
    );

    // A long query fits (POST with a form body).
    let long = format!("vector(7) # {}", "x".repeat(20_000));
    assert_eq!(p.instant(&long, now).await.unwrap(), Some(7.0));

    // Prometheus' own words for a query it refuses.
    let e = one("sum(rate(x[5m])").await.unwrap_err();
    println!("parse error: {e}");
    assert!(
        matches!(e, ProviderError::BadQuery { status: 400, .. }),
        "{e:?}"
    );
    assert!(e.to_string().contains("parse error"), "{e}");
    assert!(e.to_string().contains("unclosed left parenthesis"), "{e}");
    assert!(!e.is_transient());
    let e = one(r#"vector(1) + on() (label_replace(vector(1), "b", "y", "", "") or label_replace(vector(2), "b", "z", "", ""))"#)
        .await
        .unwrap_err();
    println!("execution error: {e}");
    assert!(
        matches!(e, ProviderError::BadQuery { status: 422, .. }),
        "{e:?}"
    );

    // Range queries: the one series' values, NaN kept; none; several refused.
    let (start, end) = (at_ms(1_700_000_000_000), at_ms(1_700_000_010_000));
    let values = p
        .range("vector(1)", start, end, Duration::from_secs(1))
        .await
        .unwrap();
    assert_eq!(values, vec![1.0; 11]);
    let values = p
        .range("vector(0/0)", start, end, Duration::from_secs(5))
        .await
        .unwrap();
    assert!(
        values.len() == 3 && values.iter().all(|v| v.is_nan()),
        "{values:?}"
    );
    let values = p
        .range("vector(1) > 2", start, end, Duration::from_secs(1))
        .await
        .unwrap();
    assert!(values.is_empty());
    let e = p
        .range(
            r#"label_replace(vector(1), "a", "x", "", "") or vector(2)"#,
            start,
            end,
            Duration::from_secs(1),
        )
        .await
        .unwrap_err();
    assert!(e.to_string().contains("returned 2 series"), "{e}");
    let e = p
        .range(r#""s""#, start, end, Duration::from_secs(1))
        .await
        .unwrap_err();
    assert!(matches!(e, ProviderError::BadQuery { .. }), "{e:?}");

    // Every interval render() writes is a duration Prometheus takes.
    for interval in [
        Duration::from_millis(1500),
        Duration::from_secs(90),
        Duration::from_millis(93_784_005),
        Duration::from_micros(400),
        Duration::from_secs(30),
    ] {
        let vars = Vars {
            canary: "c",
            stable: "s",
            service: "svc",
            target: "c",
            interval,
        };
        let q = render("absent_over_time(nothing[{{ interval }}])", &vars).unwrap();
        assert_eq!(p.instant(&q, now).await.unwrap(), Some(1.0), "{q}");
    }
}

/// The label `name` of the one series `query` returns, read with a plain client.
async fn label_of(url: &str, query: &str, name: &str) -> Option<String> {
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    let answer: serde_json::Value = client
        .post(format!("{url}/api/v1/query"))
        .form(&[("query", query)])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(answer["status"], "success", "{query}: {answer}");
    answer["data"]["result"][0]["metric"][name]
        .as_str()
        .map(str::to_string)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rendered_names_reach_prometheus_exactly() {
    let server = blocking(|| PromServer::start(&[])).unwrap();
    let url = server.url();
    // A series whose label `v` is the value as rendered in a string, and `m="yes"` if `v`
    // matches the value as rendered with `| regex`.
    let probe = r#"label_replace(label_replace(vector(1), "v", "{{ canary }}", "", ""), "m", "yes", "v", "{{ stable | regex }}")"#;
    for value in [
        "green",
        r#"a"b"#,
        r"back\slash\",
        "new\nline",
        "tab\tand\rreturn",
        "ctl\u{1}\u{7f}",
        "é ünï 🦀",
        r#"}{"[ ]"#,
        ".*",
        "$(x)|^a+b?",
    ] {
        let vars = Vars {
            canary: value,
            stable: value,
            service: "s",
            target: value,
            interval: Duration::from_secs(1),
        };
        let q = render(probe, &vars).unwrap();
        assert_eq!(label_of(&url, &q, "v").await.as_deref(), Some(value), "{q}");
        assert_eq!(label_of(&url, &q, "m").await.as_deref(), Some("yes"), "{q}");
    }
    // String-escaped is not regex-escaped: `a.b` as a regex matches `axb`; `| regex` does not.
    let vars = Vars {
        canary: "a.b",
        stable: "a.b",
        service: "s",
        target: "a.b",
        interval: Duration::from_secs(1),
    };
    let loose = r#"label_replace(label_replace(vector(1), "v", "axb", "", ""), "m", "yes", "v", "{{ canary }}")"#;
    let exact = r#"label_replace(label_replace(vector(1), "v", "axb", "", ""), "m", "yes", "v", "{{ canary | regex }}")"#;
    assert_eq!(
        label_of(&url, &render(loose, &vars).unwrap(), "m")
            .await
            .as_deref(),
        Some("yes")
    );
    assert_eq!(
        label_of(&url, &render(exact, &vars).unwrap(), "m").await,
        None
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_prometheus_that_is_down_is_unreachable_at_once() {
    let port = free_port();
    let p = Prometheus::new(&PrometheusConfig {
        url: format!("http://127.0.0.1:{port}"),
        ..PrometheusConfig::default()
    })
    .unwrap();
    let started = Instant::now();
    let e = p.instant("vector(1)", Utc::now()).await.unwrap_err();
    let took = started.elapsed();
    println!("down: {e} (after {took:?})");
    assert!(matches!(e, ProviderError::Unreachable { .. }), "{e:?}");
    assert!(e.is_transient());
    assert!(
        e.to_string()
            .starts_with(&format!("prometheus http://127.0.0.1:{port} unreachable: ")),
        "{e}"
    );
    assert!(took < Duration::from_secs(1), "took {took:?}");
    let e = p
        .range("vector(1)", Utc::now(), Utc::now(), Duration::from_secs(1))
        .await
        .unwrap_err();
    assert!(matches!(e, ProviderError::Unreachable { .. }), "{e:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_prometheus_that_never_answers_times_out() {
    // Accepts connections and never answers.
    let silent = Silent::start().await;
    let addr = silent.addr;
    let p = Prometheus::new(&PrometheusConfig {
        url: format!("http://{addr}"),
        timeout: Some("300ms".into()),
        ..PrometheusConfig::default()
    })
    .unwrap();
    let started = Instant::now();
    let e = p.instant("vector(1)", Utc::now()).await.unwrap_err();
    let took = started.elapsed();
    drop(silent);
    println!("silent: {e} (after {took:?})");
    assert!(matches!(e, ProviderError::Timeout { .. }), "{e:?}");
    assert!(e.is_transient());
    assert_eq!(
        e.to_string(),
        format!("prometheus http://{addr} did not answer within 300ms")
    );
    assert!(
        (Duration::from_millis(290)..Duration::from_millis(1500)).contains(&took),
        "took {took:?}"
    );
}

/// What a fake Prometheus saw of one request.
#[derive(Clone, Debug)]
struct Seen {
    path: String,
    headers: HeaderMap,
    form: BTreeMap<String, String>,
}

/// A fake Prometheus on 127.0.0.1 answering `answer(request)`: status, body, extra headers.
/// Stops when the returned token is dropped (cancelled).
async fn fake_prometheus(
    answer: impl Fn(&Seen) -> (u16, String, Vec<(&'static str, String)>) + Send + Sync + 'static,
) -> (SocketAddr, Arc<Mutex<Vec<Seen>>>, DropGuard) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let answer = Arc::new(answer);
    let app = {
        let seen = seen.clone();
        axum::Router::new().fallback(move |uri: Uri, headers: HeaderMap, body: String| {
            let (seen, answer) = (seen.clone(), answer.clone());
            async move {
                let form = reqwest::Url::parse(&format!("http://x/?{body}"))
                    .unwrap()
                    .query_pairs()
                    .into_owned()
                    .collect();
                let request = Seen {
                    path: uri.path().to_string(),
                    headers,
                    form,
                };
                let (status, body, extra) = answer(&request);
                seen.lock().unwrap().push(request);
                let mut response = (StatusCode::from_u16(status).unwrap(), body).into_response();
                for (name, value) in extra {
                    response.headers_mut().insert(name, value.parse().unwrap());
                }
                response
            }
        })
    };
    let (addr, stop) = net::serve(app).await;
    (addr, seen, stop)
}

fn scalar(v: &str) -> String {
    format!(
        r#"{{"status":"success","data":{{"resultType":"scalar","result":[1700000000,"{v}"]}}}}"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bearer_token_headers_and_path_prefix_are_sent_and_redirects_not_followed() {
    let (addr, seen, _stop) = fake_prometheus(|r| {
        if r.path.starts_with("/moved/") {
            return (302, String::new(), vec![("location", "http://127.0.0.2:9/api/v1/query?token=abc".into())]);
        }
        if r.path != "/prom/api/v1/query" && r.path != "/prom/api/v1/query_range" {
            return (404, "404 page not found\n".into(), vec![]);
        }
        let auth = r.headers.get("authorization").and_then(|v| v.to_str().ok());
        match auth {
            // The value tells the test which token came.
            Some("Bearer tok-1") => (200, scalar("1"), vec![]),
            Some("Bearer tok-2") if r.path.ends_with("_range") => (
                200,
                r#"{"status":"success","data":{"resultType":"matrix","result":[{"metric":{},"values":[[1,"2"],[2,"NaN"]]}]}}"#.into(),
                vec![],
            ),
            Some("Bearer tok-2") => (200, scalar("2"), vec![]),
            _ => (401, "Unauthorized\n".into(), vec![]),
        }
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, "tok-1\n").unwrap();
    let config = PrometheusConfig {
        url: format!("http://{addr}/prom/"),
        timeout: Some("2s".into()),
        bearer_token: Some(SecretRef::file(&token)),
        headers: BTreeMap::from([("X-Scope-OrgID".to_string(), "tenant-a".to_string())]),
        ..PrometheusConfig::default()
    };
    let p = Prometheus::new(&config).unwrap();
    let at = at_ms(1_700_000_000_500);
    assert_eq!(p.instant("up", at).await.unwrap(), Some(1.0));
    {
        let seen = seen.lock().unwrap();
        let r = &seen[0];
        assert_eq!(r.headers["x-scope-orgid"], "tenant-a");
        assert_eq!(
            r.headers["content-type"],
            "application/x-www-form-urlencoded"
        );
        assert_eq!(r.form["query"], "up");
        assert_eq!(r.form["time"], "1700000000.500");
        assert_eq!(r.form["timeout"], "2s");
    }
    // A rotated token is used from the next query on.
    std::fs::write(&token, "tok-2").unwrap();
    assert_eq!(p.instant("up", at).await.unwrap(), Some(2.0));
    let values = p
        .range(
            "up",
            at_ms(1_700_000_000_000),
            at_ms(1_700_000_060_000),
            Duration::from_secs(15),
        )
        .await
        .unwrap();
    assert_eq!(values[0], 2.0);
    assert!(values[1].is_nan());
    {
        let seen = seen.lock().unwrap();
        let r = seen.last().unwrap();
        assert_eq!(r.path, "/prom/api/v1/query_range");
        assert_eq!(
            (
                r.form["start"].as_str(),
                r.form["end"].as_str(),
                r.form["step"].as_str()
            ),
            ("1700000000.000", "1700000060.000", "15s")
        );
    }
    // A wrong token: 401, and the message does not show it.
    std::fs::write(&token, "sekrit-token").unwrap();
    let e = p.instant("up", at).await.unwrap_err();
    println!("401: {e}");
    assert!(
        matches!(e, ProviderError::Http { status: 401, .. }),
        "{e:?}"
    );
    assert!(
        !e.to_string().contains("sekrit") && !format!("{e:?}").contains("sekrit"),
        "{e}"
    );
    assert!(!format!("{p:?}").contains("sekrit"));
    // A missing token file: said before anything is sent.
    std::fs::remove_file(&token).unwrap();
    let before = seen.lock().unwrap().len();
    let e = p.instant("up", at).await.unwrap_err();
    assert!(matches!(e, ProviderError::Secret { .. }), "{e:?}");
    assert_eq!(seen.lock().unwrap().len(), before);

    // No path prefix: 404 with a hint.
    let p = Prometheus::new(&PrometheusConfig {
        url: format!("http://{addr}"),
        ..PrometheusConfig::default()
    })
    .unwrap();
    let e = p.instant("up", at).await.unwrap_err();
    assert!(e.to_string().contains("path prefix"), "{e}");

    // A redirect is reported, not followed (the credentials stay here).
    std::fs::write(&token, "tok-1").unwrap();
    let p = Prometheus::new(&PrometheusConfig {
        url: format!("http://{addr}/moved"),
        ..config
    })
    .unwrap();
    let before = seen.lock().unwrap().len();
    let e = p.instant("up", at).await.unwrap_err();
    println!("redirect: {e}");
    assert!(
        matches!(e, ProviderError::Http { status: 302, .. }),
        "{e:?}"
    );
    assert!(
        e.to_string()
            .contains("to http://127.0.0.2:9/api/v1/query,"),
        "{e}"
    );
    assert!(!e.to_string().contains("token=abc"), "{e}");
    assert_eq!(seen.lock().unwrap().len(), before + 1);
}

/// `canaryd:canary-test-pw`, bcrypt with cost 4 (Go's minimum), for `--web.config.file`.
const WEB_CONFIG: &str =
    "basic_auth_users:\n  canaryd: $2b$04$QukUmVpics4iAaU1ypDyduLv2X89T8rUdZKbd.zLs7tX8GBwZQ0ny\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn basic_auth_against_real_prometheus() {
    let server = blocking(|| {
        PromServer::start_with(PromOptions {
            web_config: Some(WEB_CONFIG.to_string()),
            // base64("canaryd:canary-test-pw")
            auth_header: Some("Basic Y2FuYXJ5ZDpjYW5hcnktdGVzdC1wdw==".to_string()),
            ..PromOptions::new(&[])
        })
    })
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let password = dir.path().join("password");
    std::fs::write(&password, "canary-test-pw\n").unwrap();
    let config = PrometheusConfig {
        url: server.url(),
        username: Some("canaryd".into()),
        password: Some(SecretRef::file(&password)),
        ..PrometheusConfig::default()
    };
    let p = Prometheus::new(&config).unwrap();
    assert_eq!(p.instant("vector(3)", Utc::now()).await.unwrap(), Some(3.0));

    std::fs::write(&password, "wrong-pw").unwrap();
    let e = p.instant("vector(3)", Utc::now()).await.unwrap_err();
    println!("wrong password: {e}");
    assert!(
        matches!(e, ProviderError::Http { status: 401, .. }),
        "{e:?}"
    );
    assert!(!e.to_string().contains("wrong-pw"), "{e}");

    let anonymous = server.client();
    let e = anonymous
        .instant("vector(3)", Utc::now())
        .await
        .unwrap_err();
    assert!(
        matches!(e, ProviderError::Http { status: 401, .. }),
        "{e:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// The built-in queries against real exporters
// ---------------------------------------------------------------------------------------------

const SERVICE: &str = "checkout";
/// Healthy, 5 ms per answer.
const BLUE: &str = "blue";
/// Fails 20 % of its requests (exactly one in five), 20 ms per answer.
const GREEN: &str = "green";
/// Never gets traffic.
const YELLOW: &str = "yellow";
/// Nothing listens: every connection is refused.
const RED: &str = "red";

fn servers() -> Vec<Server> {
    vec![
        Server::new(BLUE).latency(Duration::from_millis(5)),
        Server::new(GREEN)
            .failing(0.2)
            .latency(Duration::from_millis(20)),
        Server::new(YELLOW),
        Server::new(RED).down(),
    ]
}

/// The four built-in answers for one target.
#[derive(Debug)]
struct Measured {
    success: Option<f64>,
    error: Option<f64>,
    latency: Option<f64>,
    count: Option<f64>,
}

async fn measure(
    p: &Prometheus,
    router: builtin::Router,
    target: &str,
    interval: Duration,
    at: DateTime<Utc>,
) -> Measured {
    let vars = Vars {
        canary: GREEN,
        stable: BLUE,
        service: SERVICE,
        target,
        interval,
    };
    let run = |q: &'static str| {
        let query = render(q, &vars).unwrap();
        async move {
            p.instant(&query, at)
                .await
                .unwrap_or_else(|e| panic!("{query}: {e}"))
        }
    };
    Measured {
        success: run(builtin::success_rate(router)).await,
        error: run(builtin::error_rate(router)).await,
        latency: run(builtin::latency(router)).await,
        count: run(builtin::request_count(router)).await,
    }
}

/// Loads `frontend` in small batches until `stop`, recording when the first 5xx came back.
fn background_load(
    frontend: SocketAddr,
    stop: CancellationToken,
) -> tokio::task::JoinHandle<(Option<Instant>, LoadReport)> {
    tokio::spawn(async move {
        let mut first_failure = None;
        let mut total = LoadReport::default();
        let deadline = Instant::now() + Duration::from_secs(30);
        while !stop.is_cancelled() && Instant::now() < deadline {
            let batch = LoadConfig {
                concurrency: 2,
                total: 4,
                max_duration: Duration::from_secs(5),
                host: None,
            };
            let report = load(frontend, batch).await.unwrap();
            if report.server_errors > 0 && first_failure.is_none() {
                first_failure = Some(Instant::now());
            }
            total.merge(report);
        }
        (first_failure, total)
    })
}

/// How long after the canary gets traffic (and fails) Prometheus shows a non-zero error rate.
struct Detection {
    since_first_failure: Duration,
    since_weight_set: Duration,
}

/// Starts load on the stable only, gives the canary 50 %, and polls the canary's error rate
/// (over 10 s) every 100 ms until it is above 0.
async fn detect(
    p: &Prometheus,
    router: builtin::Router,
    frontend: SocketAddr,
    set_canary_weight: impl std::future::Future<Output = ()>,
) -> Detection {
    let stop = CancellationToken::new();
    let loader = background_load(frontend, stop.clone());
    tokio::time::sleep(Duration::from_millis(300)).await;
    let set = Instant::now();
    set_canary_weight.await;
    let vars = Vars {
        canary: GREEN,
        stable: BLUE,
        service: SERVICE,
        target: GREEN,
        interval: Duration::from_secs(10),
    };
    let query = render(builtin::error_rate(router), &vars).unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    let detected = loop {
        if let Some(rate) = p.instant(&query, Utc::now()).await.unwrap()
            && rate > 0.0
        {
            break Instant::now();
        }
        assert!(Instant::now() < deadline, "no error rate within 15 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    stop.cancel();
    let (first_failure, report) = loader.await.unwrap();
    let first_failure = first_failure.expect("the canary failed a request");
    println!("{router:?} detection load: {report:?}");
    Detection {
        since_first_failure: detected.duration_since(first_failure),
        since_weight_set: detected.duration_since(set),
    }
}

fn near(value: Option<f64>, want: f64, tolerance: f64, what: &str) {
    let v = value.unwrap_or_else(|| panic!("{what}: no data, want {want}"));
    assert!(
        (v - want).abs() <= tolerance,
        "{what}: {v}, want {want} ± {tolerance}"
    );
}

/// The measured phase: after a quiet moment, `requests` requests at the given weights; the
/// window is exactly from the last scrape before the load to the first after it, so that
/// `increase()` has nothing to extrapolate. Returns (load report, window, time of the last
/// scrape).
async fn measured_load(
    prom: &PromServer,
    frontend: SocketAddr,
    requests: usize,
    set_weights: impl std::future::Future<Output = ()>,
) -> (LoadReport, Duration, DateTime<Utc>) {
    set_weights.await;
    // Traefik's API shows a new configuration a moment before its handlers serve it (seen:
    // 65 of 1,200 requests at the old weights, counted under no new series). Nothing is sent
    // meanwhile, so settling costs the window nothing.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let quiet = Utc::now() + chrono::Duration::milliseconds(200);
    let before = blocking(|| prom.wait_scraped_after(quiet));
    let started = Instant::now();
    let report = load(
        frontend,
        LoadConfig {
            concurrency: 4,
            total: requests,
            max_duration: Duration::from_secs(20),
            host: None,
        },
    )
    .await
    .unwrap();
    println!("measured load: {report:?} in {:?}", started.elapsed());
    assert_eq!(
        (report.sent, report.abandoned, report.failed),
        (requests as u64, 0, 0),
        "{report:?}"
    );
    let done = Utc::now() + chrono::Duration::milliseconds(200);
    let after = blocking(|| prom.wait_scraped_after(done));
    let window = (after - before).to_std().unwrap();
    (report, window, after)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn haproxy_builtin_queries_measure_the_target() {
    let started = Instant::now();
    let backends = Backends::start(&servers()).await;
    let haproxy = Haproxy::start(SERVICE, backends.upstreams()).await.unwrap();
    let metrics = haproxy.metrics;
    let prom = blocking(|| PromServer::start(&[metrics])).unwrap();
    let p = prom.client();
    let router = builtin::Router::Haproxy;
    println!("haproxy and prometheus up after {:?}", started.elapsed());

    // Every server's series exist from the start, at 0: no traffic is NaN, not 100 % success.
    let window = Duration::from_secs(5);
    blocking(|| prom.wait_scraped_after(Utc::now() + chrono::Duration::seconds(1)));
    let idle = measure(&p, router, GREEN, window, Utc::now()).await;
    println!("haproxy, green before traffic: {idle:?}");
    assert_eq!((idle.success, idle.error, idle.latency), (None, None, None));
    assert_eq!(idle.count, Some(0.0));

    let detection = detect(
        &p,
        router,
        haproxy.frontend,
        haproxy.set_weights(&[(BLUE, 50), (GREEN, 50)]),
    )
    .await;
    println!(
        "haproxy: error rate seen {:?} after the first failed request, {:?} after the weight was set",
        detection.since_first_failure, detection.since_weight_set
    );
    assert!(detection.since_first_failure < Duration::from_secs(5));

    let (report, window, at) = measured_load(
        &prom,
        haproxy.frontend,
        1200,
        haproxy.set_weights(&[(BLUE, 45), (GREEN, 45), (RED, 10)]),
    )
    .await;
    let sent_to = |name: &str| report.by_backend.get(name).copied().unwrap_or(0) as f64;
    // HAProxy answers red's requests itself (503), without the backend header.
    let red_sent = report.sent as f64 - report.by_backend.values().sum::<u64>() as f64;
    let mut all = BTreeMap::new();
    for target in [BLUE, GREEN, YELLOW, RED] {
        let m = measure(&p, router, target, window, at).await;
        println!("haproxy {target:6} over {window:?}: {m:?}");
        all.insert(target, m);
    }
    let (blue, green, yellow, red) = (&all[BLUE], &all[GREEN], &all[YELLOW], &all[RED]);
    // Green fails exactly one request in five of those it served (±1 over the window).
    let one = 1.0 / sent_to(GREEN);
    near(green.error, 0.2, one, "green error rate");
    near(green.success, 0.8, one, "green success rate");
    near(green.count, sent_to(GREEN), 0.5, "green request count");
    // An average of whole milliseconds: 20 ms of backend plus what two shared cores add.
    let green_ms = green.latency.unwrap();
    assert!((19.0..40.0).contains(&green_ms), "green latency {green_ms}");
    near(blue.error, 0.0, 0.0, "blue error rate");
    near(blue.success, 1.0, 0.0, "blue success rate");
    near(blue.count, sent_to(BLUE), 0.5, "blue request count");
    let blue_ms = blue.latency.unwrap();
    assert!(
        (4.0..green_ms - 8.0).contains(&blue_ms),
        "blue latency {blue_ms}"
    );
    // The average response time and the average total time (which adds the client's side)
    // read the same with this fast client.
    for metric in ["response_time", "total_time"] {
        let q = format!(
            r#"haproxy_server_{metric}_average_seconds{{proxy="{SERVICE}",server="{GREEN}"}}"#
        );
        let v = p.instant(&q, at).await.unwrap();
        println!("haproxy green {metric}_average: {v:?} s");
    }
    // Refused connections are failures, and count as requests.
    near(red.error, 1.0, 0.0, "red error rate");
    near(red.success, 0.0, 0.0, "red success rate");
    near(red.count, red_sent, 0.5, "red request count");
    assert_eq!(
        red.latency, None,
        "red answered nothing, so it has no response time"
    );
    assert_eq!(
        (yellow.success, yellow.error, yellow.latency),
        (None, None, None)
    );
    assert_eq!(yellow.count, Some(0.0));

    // The judge's view: the canary's error rate over the window, every second.
    let vars = Vars {
        canary: GREEN,
        stable: BLUE,
        service: SERVICE,
        target: GREEN,
        interval: Duration::from_secs(3),
    };
    let query = render(builtin::error_rate(router), &vars).unwrap();
    let start = at - chrono::Duration::from_std(window).unwrap();
    let series = p
        .range(&query, start, at, Duration::from_secs(1))
        .await
        .unwrap();
    println!("haproxy green error rate, every second: {series:?}");
    assert!(series.iter().any(|v| (0.1..0.3).contains(v)), "{series:?}");
    assert!(
        series.iter().all(|v| v.is_nan() || (0.0..=1.0).contains(v)),
        "{series:?}"
    );
    println!("haproxy test took {:?}", started.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traefik_builtin_queries_measure_the_target() {
    let started = Instant::now();
    let backends = Backends::start(&servers()).await;
    let traefik = Traefik::start(SERVICE, backends.upstreams()).await.unwrap();
    traefik
        .set_weights(&[(BLUE, 100), (GREEN, 0), (YELLOW, 0), (RED, 0)])
        .await;
    let metrics = traefik.metrics;
    let prom = blocking(|| PromServer::start(&[metrics])).unwrap();
    let p = prom.client();
    let router = builtin::Router::Traefik;
    println!("traefik and prometheus up after {:?}", started.elapsed());

    // No series at all before the first request: no data.
    let idle = measure(&p, router, GREEN, Duration::from_secs(5), Utc::now()).await;
    println!("traefik, green before traffic: {idle:?}");
    assert_eq!(
        (idle.success, idle.error, idle.latency, idle.count),
        (None, None, None, None)
    );

    let detection = detect(
        &p,
        router,
        traefik.frontend,
        traefik.set_weights(&[(BLUE, 50), (GREEN, 50), (YELLOW, 0), (RED, 0)]),
    )
    .await;
    println!(
        "traefik: error rate seen {:?} after the first failed request, {:?} after the weight was set",
        detection.since_first_failure, detection.since_weight_set
    );
    assert!(detection.since_first_failure < Duration::from_secs(5));

    let (report, window, at) = measured_load(
        &prom,
        traefik.frontend,
        1200,
        traefik.set_weights(&[(BLUE, 45), (GREEN, 45), (YELLOW, 0), (RED, 10)]),
    )
    .await;
    let sent_to = |name: &str| report.by_backend.get(name).copied().unwrap_or(0) as f64;
    // Traefik answers red's requests itself (502), without the backend header.
    let red_sent = report.sent as f64 - report.by_backend.values().sum::<u64>() as f64;
    let mut all = BTreeMap::new();
    for target in [BLUE, GREEN, YELLOW, RED] {
        let m = measure(&p, router, target, window, at).await;
        println!("traefik {target:6} over {window:?}: {m:?}");
        all.insert(target, m);
    }
    let (blue, green, yellow, red) = (&all[BLUE], &all[GREEN], &all[YELLOW], &all[RED]);
    let one = 1.0 / sent_to(GREEN);
    near(green.error, 0.2, one, "green error rate");
    near(green.success, 0.8, one, "green success rate");
    near(green.count, sent_to(GREEN), 0.5, "green request count");
    // A p99 is the tail: on two shared cores it reads well above the backends' 20 ms (45 ms
    // seen), but never below, and never at the default buckets' ~99 ms artefact. The median
    // from the same histogram shows it measures the right thing.
    let green_ms = green.latency.unwrap();
    assert!((19.0..95.0).contains(&green_ms), "green p99 {green_ms}");
    let p50 = |target: &str| {
        let q = format!(
            r#"histogram_quantile(0.5, sum by (le) (rate(traefik_service_request_duration_seconds_bucket{{service="{SERVICE}-{target}@file"}}[{}]))) * 1000"#,
            canaryd::promql::duration(window)
        );
        let p = &p;
        async move { p.instant(&q, at).await.unwrap().unwrap() }
    };
    let (green_p50, blue_p50) = (p50(GREEN).await, p50(BLUE).await);
    println!("traefik p50: green {green_p50} ms, blue {blue_p50} ms");
    assert!((15.0..35.0).contains(&green_p50), "green p50 {green_p50}");
    assert!(blue_p50 < green_p50 - 5.0, "blue p50 {blue_p50}");
    near(
        blue.error,
        0.0,
        0.0,
        "blue error rate (no 5xx series at all)",
    );
    near(blue.success, 1.0, 0.0, "blue success rate");
    near(blue.count, sent_to(BLUE), 0.5, "blue request count");
    let blue_ms = blue.latency.unwrap();
    assert!((5.0..green_ms).contains(&blue_ms), "blue p99 {blue_ms}");
    // Traefik's own 502s count under the child service. The series is born in this window:
    // Prometheus extrapolates it back to zero, which recovers its first scrape's count.
    near(red.error, 1.0, 0.0, "red error rate");
    near(
        red.success,
        0.0,
        0.0,
        "red success rate (no non-5xx series at all)",
    );
    let red_count = red.count.unwrap();
    println!("traefik red: {red_count} counted of {red_sent} sent");
    assert!(
        red_count > 0.0 && red_count <= red_sent + 0.5,
        "{red_count} of {red_sent}"
    );
    // Never routed to: no series, no data.
    assert_eq!(
        (yellow.success, yellow.error, yellow.latency, yellow.count),
        (None, None, None, None)
    );
    println!("traefik test took {:?}", started.elapsed());
}
