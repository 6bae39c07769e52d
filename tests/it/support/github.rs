//! A fake GitHub on 127.0.0.1 that holds every request to GitHub's published OpenAPI
//! description and answers with the description's examples and `@octokit/fixtures` recordings
//! (GitHub itself cannot be reached here): what the forge driver and the daemon talk to.
//!
//! The fake matches each request's method and path against the description's `paths`
//! templates, checks its query parameter names and values and its path parameters against the
//! operation's `parameters`, validates its JSON body against the operation's `requestBody`
//! schema (`$ref`s into `#/components/...` resolved through a registry holding the whole
//! document; OpenAPI 3.0's `nullable` turned into JSON Schema's `null` type; `format`s checked)
//! and refuses a body property the schema does not declare (GitHub ignores those silently, so
//! a misspelt field would do nothing there). It checks canaryd's headers and credentials. A
//! request that matches no operation or fails a check is answered 400 and recorded as a
//! violation, and every test ends by asserting there were none ([`FakeGitHub::assert_clean`]).
//!
//! Answers start from published bodies: the description's `examples` for the operation and
//! status (the installation token, pull requests, check runs), and `@octokit/fixtures`'
//! `create-status` recording for statuses and `errors` recording for the shape of a 422. Fields
//! are patched so that the story is coherent (`number`, `html_url`, `head.ref`, `title`,
//! `id`, `expires_at`...), and every patched success answer is validated against the
//! operation's response schema before it is sent. Error bodies GitHub does not publish
//! examples for (401 "Bad credentials", the rate limit 403, the 422 "A pull request already
//! exists") are written from the texts ANCHORS §6 quotes and validated against the
//! description's `basic-error` and `validation-error` schemas.
//!
//! The npm packages are installed by `.ci/run` into `$CANARYD_OCTOKIT_DIR` (default
//! `/work/npm-octokit`); without them these tests fail with the command that installs them.

use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use canaryd::forge::{AnyForge, ForgeConfig, GitHubApp, GitHubConfig, StatusKind};
use canaryd::secret::SecretRef;
use serde_json::{Value, json};
use tokio_util::sync::DropGuard;

use super::net;

pub const OWNER: &str = "octo-org";
pub const REPO: &str = "shop";
pub const TOKEN: &str = "ghp_canarydTestToken0123456789abcdefABCD";
pub const APP_ID: u64 = 424242;
pub const INSTALLATION_ID: u64 = 5151;
pub const INSTALLATION_TOKEN: &str = "ghs_canarydInstallationToken0123456789ab";
pub const HEAD: &str = "canaryd/revert/checkout-0123456789ab";
pub const SHA: &str = "6dcb09b5b57875f334f61aebed695e2e4193db5e";
const OPENAPI_VERSION: &str = "23.0.2";
const FIXTURES_VERSION: &str = "23.1.2";
/// The base URI the description is registered under for `$ref` resolution.
const DOC_URI: &str = "https://canaryd.test/api.github.com.json";

// --- The published description and recordings ----------------------------------------------

fn octokit_dir() -> PathBuf {
    let dir = std::env::var_os("CANARYD_OCTOKIT_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/work/npm-octokit"));
    let openapi = dir.join("node_modules/@octokit/openapi/generated/api.github.com.json");
    let fixtures = dir.join("node_modules/@octokit/fixtures/scenarios/api.github.com");
    if !openapi.is_file() || !fixtures.is_dir() {
        panic!(
            "GitHub's OpenAPI description and recordings are missing under {}; install them with\n  \
             npm install --prefix {} --no-audit --no-fund --save-exact \
             @octokit/openapi@{OPENAPI_VERSION} @octokit/fixtures@{FIXTURES_VERSION}\n\
             (.ci/run does this; set CANARYD_OCTOKIT_DIR to use another directory)",
            dir.display(),
            dir.display()
        );
    }
    dir
}

fn read_json(path: &Path) -> Value {
    let text = std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap()
}

/// OpenAPI 3.0 `"type": T, "nullable": true` as JSON Schema `"type": [T, "null"]` (and `null` added
/// to its `enum`, if any).
fn nullable_to_json_schema(value: &mut Value) {
    match value {
        Value::Object(map) => {
            if map.get("nullable") == Some(&Value::Bool(true))
                && let Some(Value::String(t)) = map.get("type").cloned()
            {
                map.insert("type".into(), json!([t, "null"]));
                // GitHub means `null` is allowed for nullable enums too (`conclusion` of a run
                // in progress).
                if let Some(Value::Array(values)) = map.get_mut("enum")
                    && !values.contains(&Value::Null)
                {
                    values.push(Value::Null);
                }
            }
            for child in map.values_mut() {
                nullable_to_json_schema(child);
            }
        }
        Value::Array(items) => items.iter_mut().for_each(nullable_to_json_schema),
        _ => {}
    }
}

pub struct Operation {
    pub id: String,
    method: Method,
    template: Vec<String>,
    /// JSON pointer of the operation object in the description.
    pointer: String,
}

pub struct Spec {
    doc: &'static Value,
    registry: jsonschema::Registry<'static>,
    operations: Vec<Operation>,
    validators: Mutex<HashMap<String, Arc<jsonschema::Validator>>>,
}

pub fn spec() -> &'static Spec {
    static DOC: OnceLock<Value> = OnceLock::new();
    static SPEC: OnceLock<Spec> = OnceLock::new();
    SPEC.get_or_init(|| {
        let doc = DOC.get_or_init(|| {
            let mut doc = read_json(
                &octokit_dir().join("node_modules/@octokit/openapi/generated/api.github.com.json"),
            );
            nullable_to_json_schema(&mut doc);
            doc
        });
        let registry = jsonschema::Registry::new()
            .draft(jsonschema::Draft::Draft4)
            .add(DOC_URI, doc)
            .unwrap()
            .prepare()
            .unwrap();
        let mut operations = Vec::new();
        for (path, item) in doc["paths"].as_object().unwrap() {
            for (method, op) in item.as_object().unwrap() {
                let Ok(m) = method.to_uppercase().parse::<Method>() else {
                    continue;
                };
                let Some(id) = op["operationId"].as_str() else {
                    continue;
                };
                operations.push(Operation {
                    id: id.to_string(),
                    method: m,
                    template: path.split('/').skip(1).map(str::to_string).collect(),
                    pointer: format!(
                        "/paths/{}/{method}",
                        path.replace('~', "~0").replace('/', "~1")
                    ),
                });
            }
        }
        Spec {
            doc,
            registry,
            operations,
            validators: Mutex::new(HashMap::new()),
        }
    })
}

impl Spec {
    /// The operation `method path` is, and its path parameters; the most literal template wins.
    pub fn route(
        &self,
        method: &Method,
        path: &str,
    ) -> Option<(&Operation, HashMap<String, String>)> {
        let segments: Vec<&str> = path.split('/').skip(1).collect();
        self.operations
            .iter()
            .filter(|op| op.method == *method && op.template.len() == segments.len())
            .filter_map(|op| {
                let mut params = HashMap::new();
                let mut literal = 0;
                for (t, s) in op.template.iter().zip(&segments) {
                    if t.starts_with('{') && t.ends_with('}') {
                        if s.is_empty() {
                            return None;
                        }
                        params.insert(t[1..t.len() - 1].to_string(), percent_decode(s));
                    } else if t == s {
                        literal += 1;
                    } else {
                        return None;
                    }
                }
                Some((literal, op, params))
            })
            .max_by_key(|(literal, _, _)| *literal)
            .map(|(_, op, params)| (op, params))
    }

    fn op(&self, op: &Operation) -> &'static Value {
        self.doc.pointer(&op.pointer).unwrap()
    }

    fn deref(&self, value: &'static Value) -> &'static Value {
        match value["$ref"].as_str() {
            Some(r) => self.deref(self.doc.pointer(r.trim_start_matches('#')).unwrap()),
            None => value,
        }
    }

    /// A validator for the schema at `pointer`, resolved within the whole description.
    fn validator(&self, pointer: &str) -> Arc<jsonschema::Validator> {
        let mut cache = self.validators.lock().unwrap();
        if let Some(v) = cache.get(pointer) {
            return v.clone();
        }
        let fragment: String = pointer
            .chars()
            .map(|c| match c {
                '{' => "%7B".to_string(),
                '}' => "%7D".to_string(),
                c => c.to_string(),
            })
            .collect();
        let validator = jsonschema::options()
            .with_draft(jsonschema::Draft::Draft4)
            .should_validate_formats(true)
            .with_registry(&self.registry)
            .build(&json!({"$ref": format!("{DOC_URI}#{fragment}")}))
            .unwrap_or_else(|e| panic!("schema at {pointer}: {e}"));
        let validator = Arc::new(validator);
        cache.insert(pointer.to_string(), validator.clone());
        validator
    }

    fn complaints(&self, pointer: &str, value: &Value) -> Vec<String> {
        self.validator(pointer)
            .iter_errors(value)
            .map(|e| format!("{}: {e}", e.instance_path()))
            .collect()
    }

    /// The parameters of `op`, references resolved.
    fn parameters(&self, op: &Operation) -> Vec<&'static Value> {
        self.op(op)["parameters"]
            .as_array()
            .map(|ps| ps.iter().map(|p| self.deref(p)).collect())
            .unwrap_or_default()
    }

    /// Everything wrong with a request for `op`.
    pub fn check_request(
        &self,
        op: &Operation,
        path_params: &HashMap<String, String>,
        query: &[(String, String)],
        body: &[u8],
    ) -> Vec<String> {
        let mut wrong = Vec::new();
        let params = self.parameters(op);
        let param_value = |schema: &Value, raw: &str| -> Value {
            match schema["type"].as_str() {
                Some("integer") => raw.parse::<i64>().map_or(json!(raw), |n| json!(n)),
                _ => json!(raw),
            }
        };
        for (name, raw) in path_params {
            match params
                .iter()
                .find(|p| p["in"] == "path" && p["name"] == name.as_str())
            {
                None => wrong.push(format!("path parameter {name} is not declared")),
                Some(p) => {
                    let v = jsonschema::options()
                        .with_draft(jsonschema::Draft::Draft4)
                        .build(&p["schema"])
                        .unwrap();
                    if !v.is_valid(&param_value(&p["schema"], raw)) {
                        wrong.push(format!(
                            "path parameter {name}={raw} does not fit {}",
                            p["schema"]
                        ));
                    }
                }
            }
        }
        for (name, raw) in query {
            match params
                .iter()
                .find(|p| p["in"] == "query" && p["name"] == name.as_str())
            {
                None => wrong.push(format!(
                    "query parameter `{name}` is not one of the operation's"
                )),
                Some(p) => {
                    let v = jsonschema::options()
                        .with_draft(jsonschema::Draft::Draft4)
                        .build(&p["schema"])
                        .unwrap();
                    if !v.is_valid(&param_value(&p["schema"], raw)) {
                        wrong.push(format!(
                            "query parameter {name}={raw} does not fit {}",
                            p["schema"]
                        ));
                    }
                }
            }
        }
        for p in &params {
            if p["required"] == true
                && p["in"] == "query"
                && !query.iter().any(|(n, _)| p["name"] == n.as_str())
            {
                wrong.push(format!("required query parameter {} is missing", p["name"]));
            }
        }
        let request_body = &self.op(op)["requestBody"];
        if request_body.is_null() {
            if !body.is_empty() {
                wrong.push("a body was sent to an operation that takes none".into());
            }
            return wrong;
        }
        let body: Value = match serde_json::from_slice(body) {
            Ok(v) => v,
            Err(e) if request_body["required"] == true || !body.is_empty() => {
                wrong.push(format!("the body is not JSON: {e}"));
                return wrong;
            }
            Err(_) => return wrong,
        };
        let pointer = format!(
            "{}/requestBody/content/application~1json/schema",
            op.pointer
        );
        wrong.extend(self.complaints(&pointer, &body));
        self.undeclared(self.doc.pointer(&pointer).unwrap(), &body, "", &mut wrong);
        wrong
    }

    /// Body properties the schema does not declare.
    fn undeclared(&self, schema: &'static Value, value: &Value, at: &str, wrong: &mut Vec<String>) {
        let schema = self.deref(schema);
        let (Some(props), Some(object)) = (schema["properties"].as_object(), value.as_object())
        else {
            return;
        };
        if schema.get("additionalProperties").is_some() {
            return;
        }
        for (key, child) in object {
            match props.get(key) {
                None => wrong.push(format!("{at}/{key} is not a property the operation takes")),
                Some(s) => self.undeclared(s, child, &format!("{at}/{key}"), wrong),
            }
        }
    }

    /// The example answer `name` (the first when `None`) of `op_id` for `status`.
    fn example(&self, op_id: &str, status: u16, name: Option<&str>) -> Value {
        let op = self.operations.iter().find(|o| o.id == op_id).unwrap();
        let response = self.deref(&self.op(op)["responses"][status.to_string()]);
        let examples = response["content"]["application/json"]["examples"]
            .as_object()
            .unwrap_or_else(|| panic!("{op_id} {status} has no examples"));
        let example = match name {
            Some(name) => &examples[name],
            None => examples.values().next().unwrap(),
        };
        self.deref(example)["value"].clone()
    }

    /// Complaints of the response schema of `op_id` for `status` about `answer`.
    fn check_answer(&self, op_id: &str, status: u16, answer: &Value) -> Vec<String> {
        let op = self.operations.iter().find(|o| o.id == op_id).unwrap();
        let mut pointer = format!("{}/responses/{status}", op.pointer);
        if let Some(r) = self.doc.pointer(&pointer).unwrap()["$ref"].as_str() {
            pointer = r.trim_start_matches('#').to_string();
        }
        self.complaints(
            &format!("{pointer}/content/application~1json/schema"),
            answer,
        )
    }

    fn schema_complaints(&self, component: &str, value: &Value) -> Vec<String> {
        self.complaints(&format!("/components/schemas/{component}"), value)
    }
}

/// The first recorded answer of `@octokit/fixtures` scenario `scenario` to `method`.
fn recorded(scenario: &str, method: &str) -> Value {
    let path = octokit_dir()
        .join("node_modules/@octokit/fixtures/scenarios/api.github.com")
        .join(scenario)
        .join("normalized-fixture.json");
    let records = read_json(&path);
    records
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["method"] == method)
        .unwrap_or_else(|| panic!("{scenario} has no {method}"))["response"]
        .clone()
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap();
                out.push(u8::from_str_radix(hex, 16).unwrap());
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).unwrap()
}

fn parse_query(query: Option<&str>) -> Vec<(String, String)> {
    query
        .unwrap_or("")
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

// --- The fake GitHub -------------------------------------------------------------------------

/// One request as it reached the fake.
#[derive(Clone, Debug)]
pub struct Recorded {
    pub op: String,
    pub path: String,
    pub query: Vec<(String, String)>,
    pub authorization: Option<String>,
    pub body: String,
    pub status: u16,
}

impl Recorded {
    pub fn param(&self, name: &str) -> Option<&str> {
        self.query
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// An answer the fake gives instead of the normal one, once, to the next request for an
/// operation.
#[derive(Clone, Debug)]
pub enum Mishap {
    /// 502 from the edge, an HTML page; `after_effect`: the operation was carried out first
    /// (the answer was lost on the way back).
    BadGateway { after_effect: bool },
    /// Primary rate limit: 403, `x-ratelimit-remaining: 0`, reset at this epoch second.
    RateLimited { reset: u64 },
    /// Secondary rate limit: 403 with `retry-after`.
    Secondary { retry_after: u64 },
    /// The list answers as if nothing existed yet (another writer's pull request not
    /// listed yet, or opened between our lookup and our create).
    Stale,
}

#[derive(Clone, Debug)]
pub enum Expect {
    Token(String),
    App,
}

pub struct Fake {
    pub expect: Expect,
    pub public_key: Option<PathBuf>,
    pub pulls: Vec<Value>,
    pub statuses: Vec<Value>,
    pub runs: Vec<Value>,
    pub next_id: u64,
    mishaps: VecDeque<(String, Mishap)>,
    pub log: Vec<Recorded>,
    pub violations: Vec<String>,
    pub jwts: Vec<String>,
}

pub type Shared = Arc<Mutex<Fake>>;

fn answer(status: u16, body: &Value) -> Response {
    (
        StatusCode::from_u16(status).unwrap(),
        axum::Json(body.clone()),
    )
        .into_response()
}

/// A complaint with array indices as `*`, so complaints about list items compare.
fn any_index(complaint: &str) -> String {
    complaint
        .split('/')
        .map(|seg| {
            if !seg.is_empty() && seg.bytes().all(|b| b.is_ascii_digit()) {
                "*"
            } else {
                seg
            }
        })
        .collect::<Vec<_>>()
        .join("/")
}

/// A success answer made from the published `example`, checked against the operation's
/// response schema first. Some published examples are off their own schema (the pull request
/// example's `requested_teams` lack `type`); what the example itself breaks is not held against
/// the fake, what the patches break is.
fn published(
    op: &str,
    status: u16,
    example: &Value,
    body: Value,
    violations: &mut Vec<String>,
) -> Response {
    let spec = spec();
    let known: Vec<String> = spec
        .check_answer(op, status, example)
        .iter()
        .map(|c| any_index(c))
        .collect();
    let wrong: Vec<String> = spec
        .check_answer(op, status, &body)
        .into_iter()
        .filter(|c| !known.contains(&any_index(c)))
        .collect();
    if !wrong.is_empty() {
        violations.push(format!(
            "the fake's own {op} {status} answer is off the description: {wrong:?}"
        ));
    }
    answer(status, &body)
}

fn basic_error(status: u16, message: &str, violations: &mut Vec<String>) -> Value {
    let body = json!({
        "message": message,
        "documentation_url": "https://docs.github.com/rest",
        "status": status.to_string(),
    });
    let wrong = spec().schema_complaints("basic-error", &body);
    if !wrong.is_empty() {
        violations.push(format!(
            "the fake's {status} body is off basic-error: {wrong:?}"
        ));
    }
    body
}

/// GitHub's 422, starting from the `errors` recording's body.
fn validation_failed(message: &str, violations: &mut Vec<String>) -> Value {
    let mut body = recorded("errors", "post");
    body["errors"] = json!([{"resource": "PullRequest", "code": "custom", "message": message}]);
    body["documentation_url"] =
        json!("https://docs.github.com/rest/pulls/pulls#create-a-pull-request");
    body["status"] = json!("422");
    let wrong = spec().schema_complaints("validation-error", &body);
    if !wrong.is_empty() {
        violations.push(format!(
            "the fake's 422 body is off validation-error: {wrong:?}"
        ));
    }
    body
}

pub fn pull_url(number: u64) -> String {
    format!("https://github.com/{OWNER}/{REPO}/pull/{number}")
}

/// A pull request as the description's example shows it, made to be `pull`.
fn as_pull_example(mut example: Value, pull: &Value) -> Value {
    let number = pull["number"].as_u64().unwrap();
    for (k, v) in pull.as_object().unwrap() {
        if !matches!(k.as_str(), "head" | "base") {
            example[k] = v.clone();
        }
    }
    example["html_url"] = json!(pull_url(number));
    example["url"] = json!(format!(
        "https://api.github.com/repos/{OWNER}/{REPO}/pulls/{number}"
    ));
    for side in ["head", "base"] {
        example[side]["ref"] = pull[side]["ref"].clone();
        example[side]["label"] = json!(format!("{OWNER}:{}", pull[side]["ref"].as_str().unwrap()));
        example[side]["repo"]["name"] = json!(REPO);
        example[side]["repo"]["full_name"] = json!(format!("{OWNER}/{REPO}"));
    }
    example
}

fn as_run_example(mut example: Value, run: &Value) -> Value {
    for (k, v) in run.as_object().unwrap() {
        if k == "app_id" {
            example["app"]["id"] = v.clone();
        } else if k == "output" {
            for (field, value) in v.as_object().unwrap() {
                example["output"][field] = value.clone();
            }
        } else {
            example[k] = v.clone();
        }
    }
    if run["status"] != "completed" {
        example["conclusion"] = Value::Null;
        example["completed_at"] = Value::Null;
    }
    example
}

pub fn now_s() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn chrono_like(epoch: u64) -> String {
    // YYYY-MM-DDTHH:MM:SSZ without a date library: civil-from-days (Howard Hinnant).
    let days = (epoch / 86_400) as i64;
    let secs = epoch % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    )
}

async fn github(
    axum::extract::State(fake): axum::extract::State<Shared>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let spec = spec();
    let mut guard = fake.lock().unwrap();
    let fake = &mut *guard;
    let path = uri.path().to_string();
    let query = parse_query(uri.query());
    let authorization = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let mut record = Recorded {
        op: String::new(),
        path: path.clone(),
        query: query.clone(),
        authorization: authorization.clone(),
        body: String::from_utf8_lossy(&body).into_owned(),
        status: 400,
    };
    let Some((op, path_params)) = spec.route(&method, &path) else {
        fake.violations.push(format!(
            "{method} {path} is no operation of the description"
        ));
        fake.log.push(record);
        return answer(400, &json!({"message": "fake github: no such operation"}));
    };
    record.op = op.id.clone();
    let mut wrong = spec.check_request(op, &path_params, &query, &body);
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    };
    if !header("user-agent").starts_with("canaryd/") {
        wrong.push(format!("user-agent is {:?}", header("user-agent")));
    }
    if headers.get_all("user-agent").iter().count() != 1 {
        wrong.push("more than one user-agent".into());
    }
    if header("x-github-api-version") != "2022-11-28" {
        wrong.push(format!(
            "x-github-api-version is {:?}",
            header("x-github-api-version")
        ));
    }
    if header("accept") != "application/vnd.github+json" {
        wrong.push(format!("accept is {:?}", header("accept")));
    }
    if !body.is_empty() && !header("content-type").starts_with("application/json") {
        wrong.push(format!("content-type is {:?}", header("content-type")));
    }
    if let Some(owner) = path_params.get("owner")
        && (owner != OWNER || path_params.get("repo").map(String::as_str) != Some(REPO))
    {
        wrong.push(format!("repository {owner}/{:?}", path_params.get("repo")));
    }
    if !wrong.is_empty() {
        fake.violations
            .push(format!("{method} {path} ({}): {wrong:?}", op.id));
        fake.log.push(record);
        return answer(400, &json!({"message": format!("fake github: {wrong:?}")}));
    }

    // Credentials.
    let bearer = authorization
        .as_deref()
        .and_then(|a| a.strip_prefix("Bearer "));
    let minting = op.id == "apps/create-installation-access-token";
    let authorised = match (&fake.expect, minting) {
        (Expect::Token(token), false) => bearer == Some(token.as_str()),
        (Expect::Token(_), true) => false,
        (Expect::App, true) => {
            let jwt = bearer.unwrap_or("");
            fake.jwts.push(jwt.to_string());
            jwt.split('.').count() == 3
                && path_params.get("installation_id").map(String::as_str)
                    == Some(INSTALLATION_ID.to_string().as_str())
        }
        (Expect::App, false) => bearer == Some(INSTALLATION_TOKEN),
    };
    if !authorised {
        record.status = 401;
        fake.log.push(record);
        return answer(
            401,
            &basic_error(401, "Bad credentials", &mut fake.violations),
        );
    }

    let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let mishap = fake
        .mishaps
        .iter()
        .position(|(id, _)| *id == op.id)
        .map(|i| fake.mishaps.remove(i).unwrap().1);
    let response = match mishap {
        Some(Mishap::RateLimited { reset }) => {
            let b = basic_error(
                403,
                "API rate limit exceeded for installation ID 5151. If you reach out to GitHub Support for help, please include the request ID.",
                &mut fake.violations,
            );
            let mut r = answer(403, &b);
            let h = r.headers_mut();
            h.insert("x-ratelimit-limit", HeaderValue::from_static("5000"));
            h.insert("x-ratelimit-remaining", HeaderValue::from_static("0"));
            h.insert("x-ratelimit-used", HeaderValue::from_static("5000"));
            h.insert(
                "x-ratelimit-reset",
                HeaderValue::from_str(&reset.to_string()).unwrap(),
            );
            h.insert("x-ratelimit-resource", HeaderValue::from_static("core"));
            r
        }
        Some(Mishap::Secondary { retry_after }) => {
            let b = basic_error(
                403,
                "You have exceeded a secondary rate limit. Please wait a few minutes before you try again.",
                &mut fake.violations,
            );
            let mut r = answer(403, &b);
            r.headers_mut().insert(
                "retry-after",
                HeaderValue::from_str(&retry_after.to_string()).unwrap(),
            );
            r
        }
        Some(Mishap::BadGateway { after_effect }) => {
            if after_effect {
                let _ = carry_out(fake, &op.id, &path_params, &query, &body, false);
            }
            let mut r = (
                StatusCode::BAD_GATEWAY,
                "<html><body><h1>502 Bad Gateway</h1>\nThe server returned an invalid or incomplete response.\n</body></html>\n",
            )
                .into_response();
            r.headers_mut()
                .insert("content-type", HeaderValue::from_static("text/html"));
            r
        }
        Some(Mishap::Stale) => carry_out(fake, &op.id, &path_params, &query, &body, true),
        None => carry_out(fake, &op.id, &path_params, &query, &body, false),
    };
    record.status = response.status().as_u16();
    fake.log.push(record);
    response
}

/// What GitHub does for `op`; `stale`: lists answer as if empty.
fn carry_out(
    fake: &mut Fake,
    op: &str,
    path: &HashMap<String, String>,
    query: &[(String, String)],
    body: &Value,
    stale: bool,
) -> Response {
    let spec = spec();
    let q = |name: &str| {
        query
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.clone())
    };
    match op {
        "apps/create-installation-access-token" => {
            let example = spec.example(op, 201, None);
            let mut token = example.clone();
            token["token"] = json!(INSTALLATION_TOKEN);
            token["expires_at"] = json!(chrono_like(now_s() + 3600));
            published(op, 201, &example, token, &mut fake.violations)
        }
        "pulls/list" => {
            let state = q("state").unwrap_or_else(|| "open".into());
            let head = q("head");
            let base = q("base");
            let examples = spec.example(op, 200, None);
            let listed: Vec<Value> = if stale {
                Vec::new()
            } else {
                let example = examples[0].clone();
                fake.pulls
                    .iter()
                    .filter(|p| state == "all" || p["state"] == state.as_str())
                    // GitHub ignores a `head` without `OWNER:` (it lists every pull request).
                    .filter(|p| match head.as_deref().and_then(|h| h.split_once(':')) {
                        Some((owner, branch)) => owner == OWNER && p["head"]["ref"] == branch,
                        None => true,
                    })
                    .filter(|p| base.as_ref().is_none_or(|b| p["base"]["ref"] == b.as_str()))
                    .map(|p| as_pull_example(example.clone(), p))
                    .collect()
            };
            published(op, 200, &examples, json!(listed), &mut fake.violations)
        }
        "pulls/create" => {
            let (head, base) = (
                body["head"].as_str().unwrap(),
                body["base"].as_str().unwrap(),
            );
            if fake.pulls.iter().any(|p| {
                p["state"] == "open" && p["head"]["ref"] == head && p["base"]["ref"] == base
            }) {
                let b = validation_failed(
                    &format!("A pull request already exists for {OWNER}:{head}."),
                    &mut fake.violations,
                );
                return answer(422, &b);
            }
            if head == base {
                let b = validation_failed(
                    &format!("No commits between {base} and {head}"),
                    &mut fake.violations,
                );
                return answer(422, &b);
            }
            fake.next_id += 1;
            let pull = json!({
                "number": fake.next_id, "id": 1_000_000 + fake.next_id, "state": "open",
                "title": body["title"], "body": body["body"],
                "head": {"ref": head}, "base": {"ref": base},
            });
            fake.pulls.push(pull.clone());
            let example = spec.example(op, 201, None);
            published(
                op,
                201,
                &example,
                as_pull_example(example.clone(), &pull),
                &mut fake.violations,
            )
        }
        "pulls/update" => {
            let number: u64 = path["pull_number"].parse().unwrap();
            let Some(pull) = fake.pulls.iter_mut().find(|p| p["number"] == number) else {
                let b = basic_error(404, "Not Found", &mut fake.violations);
                return answer(404, &b);
            };
            for key in ["title", "body", "state"] {
                if let Some(v) = body.get(key) {
                    pull[key] = v.clone();
                }
            }
            let pull = pull.clone();
            let example = spec.example(op, 200, None);
            published(
                op,
                200,
                &example,
                as_pull_example(example.clone(), &pull),
                &mut fake.violations,
            )
        }
        "repos/create-commit-status" => {
            fake.next_id += 1;
            let recording = recorded("create-status", "post");
            let mut status = recording.clone();
            status["id"] = json!(fake.next_id);
            status["url"] = json!(format!(
                "https://api.github.com/repos/{OWNER}/{REPO}/statuses/{}",
                path["sha"]
            ));
            for key in ["state", "description", "target_url", "context"] {
                status[key] = body.get(key).cloned().unwrap_or(Value::Null);
            }
            let mut stored = status.clone();
            stored["sha"] = json!(path["sha"]);
            fake.statuses.push(stored);
            published(op, 201, &recording, status, &mut fake.violations)
        }
        "checks/list-for-ref" => {
            let example = spec.example(op, 200, None);
            let run_example = example["check_runs"][0].clone();
            let runs: Vec<Value> = if stale {
                Vec::new()
            } else {
                fake.runs
                    .iter()
                    .filter(|r| r["head_sha"] == path["ref"].as_str())
                    .filter(|r| q("check_name").is_none_or(|n| r["name"] == n.as_str()))
                    .filter(|r| {
                        q("app_id").is_none_or(|a| a.parse::<u64>().ok() == r["app_id"].as_u64())
                    })
                    .map(|r| as_run_example(run_example.clone(), r))
                    .collect()
            };
            let mut list = example.clone();
            list["total_count"] = json!(runs.len());
            list["check_runs"] = json!(runs);
            published(op, 200, &example, list, &mut fake.violations)
        }
        "checks/create" => {
            fake.next_id += 1;
            let mut run = json!({
                "id": fake.next_id, "name": body["name"], "head_sha": body["head_sha"],
                "status": body.get("status").cloned().unwrap_or(json!("queued")),
                "conclusion": body.get("conclusion").cloned().unwrap_or(Value::Null),
                "app_id": APP_ID,
            });
            if !body["conclusion"].is_null() {
                run["status"] = json!("completed");
            }
            if let Some(url) = body.get("details_url") {
                run["details_url"] = url.clone();
            }
            if let Some(output) = body.get("output") {
                run["output"] = output.clone();
            }
            fake.runs.push(run.clone());
            let name = if run["status"] == "completed" {
                "example-of-completed-conclusion"
            } else {
                "example-of-in-progress-conclusion"
            };
            let example = spec.example(op, 201, Some(name));
            published(
                op,
                201,
                &example,
                as_run_example(example.clone(), &run),
                &mut fake.violations,
            )
        }
        "checks/update" => {
            let id: u64 = path["check_run_id"].parse().unwrap();
            let Some(run) = fake.runs.iter_mut().find(|r| r["id"] == id) else {
                let b = basic_error(404, "Not Found", &mut fake.violations);
                return answer(404, &b);
            };
            for key in ["status", "conclusion", "details_url", "output"] {
                if let Some(v) = body.get(key) {
                    run[key] = v.clone();
                }
            }
            if !body["conclusion"].is_null() {
                run["status"] = json!("completed");
            }
            let run = run.clone();
            let example = spec.example(op, 200, None);
            published(
                op,
                200,
                &example,
                as_run_example(example.clone(), &run),
                &mut fake.violations,
            )
        }
        other => {
            fake.violations.push(format!(
                "the driver called {other}, which it has no business with"
            ));
            answer(
                400,
                &json!({"message": "fake github: unexpected operation"}),
            )
        }
    }
}

/// The fake GitHub on 127.0.0.1, with the token file and App key the driver reads; stopped
/// on drop.
pub struct FakeGitHub {
    pub url: String,
    pub fake: Shared,
    pub dir: tempfile::TempDir,
    pub _stop: DropGuard,
}

impl FakeGitHub {
    pub async fn start(expect: Expect) -> FakeGitHub {
        spec();
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("token"), format!("{TOKEN}\n")).unwrap();
        let public_key = matches!(expect, Expect::App).then(|| app_key(dir.path()));
        let fake = Arc::new(Mutex::new(Fake {
            expect,
            public_key,
            pulls: Vec::new(),
            statuses: Vec::new(),
            runs: Vec::new(),
            next_id: 1346,
            mishaps: VecDeque::new(),
            log: Vec::new(),
            violations: Vec::new(),
            jwts: Vec::new(),
        }));
        let app = axum::Router::new()
            .fallback(github)
            .with_state(fake.clone());
        let (addr, stop) = net::serve(app).await;
        let url = format!("http://{addr}");
        FakeGitHub {
            url,
            fake,
            dir,
            _stop: stop,
        }
    }

    /// A forge as the daemon would connect it (a new one is a restart: nothing in memory).
    pub fn forge(&self, statuses: StatusKind) -> AnyForge {
        let app = matches!(self.fake.lock().unwrap().expect, Expect::App);
        let cfg = ForgeConfig::GitHub(GitHubConfig {
            api_url: Some(self.url.clone()),
            owner: OWNER.into(),
            repo: REPO.into(),
            token: (!app).then(|| SecretRef::file(self.dir.path().join("token"))),
            app: app.then(|| GitHubApp {
                id: APP_ID,
                private_key: SecretRef::file(self.dir.path().join("app.pem")),
                installation_id: INSTALLATION_ID,
            }),
            statuses,
        });
        AnyForge::connect(&cfg).unwrap()
    }

    pub fn mishap(&self, op: &str, mishap: Mishap) {
        self.fake
            .lock()
            .unwrap()
            .mishaps
            .push_back((op.to_string(), mishap));
    }

    pub fn log(&self) -> Vec<Recorded> {
        self.fake.lock().unwrap().log.clone()
    }

    /// The operations called, in order, with their answers: `pulls/list 200`.
    pub fn calls(&self) -> Vec<String> {
        self.log()
            .iter()
            .map(|r| format!("{} {}", r.op, r.status))
            .collect()
    }

    pub fn pulls(&self) -> Vec<Value> {
        self.fake.lock().unwrap().pulls.clone()
    }

    pub fn clear_log(&self) {
        self.fake.lock().unwrap().log.clear();
    }

    /// No request broke the description, and no secret went anywhere but the
    /// `Authorization` header.
    pub fn assert_clean(&self) {
        let fake = self.fake.lock().unwrap();
        assert!(
            fake.violations.is_empty(),
            "violations: {:#?}",
            fake.violations
        );
        let mut secrets = vec![TOKEN.to_string(), INSTALLATION_TOKEN.to_string()];
        if fake.public_key.is_some() {
            let key = std::fs::read_to_string(self.dir.path().join("app.pem")).unwrap();
            // Any line of the private key's base64.
            secrets.extend(
                key.lines()
                    .filter(|l| !l.starts_with("-----"))
                    .map(str::to_string),
            );
        }
        for r in &fake.log {
            for secret in &secrets {
                assert!(
                    !r.body.contains(secret.as_str()),
                    "a secret in the body of {r:?}"
                );
                assert!(
                    !r.path.contains(secret.as_str()),
                    "a secret in the path of {r:?}"
                );
                assert!(
                    !r.query
                        .iter()
                        .any(|(k, v)| k.contains(secret.as_str()) || v.contains(secret.as_str())),
                    "a secret in the query of {r:?}"
                );
            }
        }
    }
}

/// A throwaway App key pair (PKCS#1, as GitHub hands them out) made by the openssl CLI;
/// writes `app.pem` and returns the public key's path.
pub fn app_key(dir: &Path) -> PathBuf {
    let private = dir.join("app.pem");
    let public = dir.join("app.pub.pem");
    let run = |args: &[&str]| {
        let out = Command::new("openssl").args(args).output().expect(
            "the openssl CLI is needed to make a throwaway App key (apt-get install openssl)",
        );
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    run(&[
        "genrsa",
        "-traditional",
        "-out",
        private.to_str().unwrap(),
        "2048",
    ]);
    run(&[
        "rsa",
        "-in",
        private.to_str().unwrap(),
        "-pubout",
        "-out",
        public.to_str().unwrap(),
    ]);
    public
}
