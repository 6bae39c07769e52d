//! The HTTP(S) client for calls canaryd makes to other people's services (notification sinks,
//! hooks): hyper over rustls with the system's CA roots, plain HTTP too, HTTP/1.1.

use std::time::Duration;

use http_body_util::{BodyExt as _, Full};
use hyper::body::Bytes;
use hyper_util::client::legacy::Client as Hyper;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

/// A client for `http://` and `https://` URLs.
pub type Client = Hyper<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>;

/// A new client; fails only when the system's CA certificates cannot be loaded.
pub fn client() -> Result<Client, String> {
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_native_roots()
        .map_err(|e| format!("cannot load the system's CA certificates: {e}"))?
        .https_or_http()
        .enable_http1()
        .build();
    Ok(Hyper::builder(TokioExecutor::new()).build(connector))
}

/// An answer: its status, `Retry-After` in seconds if it gave one, and its body.
#[derive(Debug)]
pub struct Answer {
    pub status: hyper::StatusCode,
    pub retry_after: Option<Duration>,
    pub body: Bytes,
}

/// Sends `request` and reads the whole answer, within `timeout`; why not, as text, its causes
/// included.
pub async fn send(
    client: &Client,
    request: hyper::Request<Full<Bytes>>,
    timeout: Duration,
) -> Result<Answer, String> {
    let exchange = async {
        let resp = client
            .request(request)
            .await
            .map_err(|e| crate::edge::telemetry::chain(&e))?;
        let status = resp.status();
        let retry_after = resp
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        let body = resp
            .into_body()
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        Ok(Answer {
            status,
            retry_after,
            body,
        })
    };
    match tokio::time::timeout(timeout, exchange).await {
        Ok(answer) => answer,
        Err(_) => Err(format!("no answer in {} s", timeout.as_secs_f64())),
    }
}
