//! The limits of the listeners (the embedded router's and the admin endpoints'), as a spec
//! or the command line sets them, checked and with the defaults filled in: what validation
//! checks and the listener enforces.

use std::time::Duration;

/// Limits of one listener; [`ListenerLimits::default`] holds the defaults the README lists.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ListenerLimits {
    /// How long a client may take to send a whole request head (and how long an idle
    /// keep-alive connection is kept).
    pub header_read_timeout: Duration,
    /// The largest request head (request line and headers) in bytes; larger: 431.
    pub max_header_bytes: usize,
    /// Open connections at most; more are closed at once.
    pub max_connections: usize,
    /// The listen backlog asked of the kernel.
    pub backlog: u32,
}

impl ListenerLimits {
    pub const DEFAULT_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
    /// NGINX's `large_client_header_buffers` default, 4 × 8k.
    pub const DEFAULT_MAX_HEADER_BYTES: usize = 32 * 1024;
    pub const DEFAULT_MAX_CONNECTIONS: usize = 4096;
    pub const DEFAULT_BACKLOG: u32 = 1024;
}

impl Default for ListenerLimits {
    fn default() -> Self {
        ListenerLimits {
            header_read_timeout: Self::DEFAULT_HEADER_READ_TIMEOUT,
            max_header_bytes: Self::DEFAULT_MAX_HEADER_BYTES,
            max_connections: Self::DEFAULT_MAX_CONNECTIONS,
            backlog: Self::DEFAULT_BACKLOG,
        }
    }
}

/// A listener's limits as configured, with the embedded router's two body and upstream limits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Resolved {
    pub listener: ListenerLimits,
    /// The longest wait for the next piece of a request body.
    pub body_idle_timeout: Duration,
    /// How long a backend may take to answer, from the end of the request body.
    pub upstream_timeout: Duration,
}

impl Resolved {
    pub const DEFAULT_BODY_IDLE_TIMEOUT: Duration = Duration::from_secs(30);
    pub const DEFAULT_UPSTREAM_TIMEOUT: Duration = Duration::from_secs(30);
}

/// A limit that cannot be used: its field (camelCase, under `limits`) and why.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("limits.{field}: {message}")]
pub struct LimitError {
    pub field: &'static str,
    pub message: String,
}

/// `spec` with the defaults filled in.
pub fn resolve(spec: &crate::core::spec::Limits) -> Result<Resolved, LimitError> {
    let duration = |field: &'static str, text: &Option<String>, default: Duration| {
        let Some(text) = text else {
            return Ok(default);
        };
        match crate::core::spec::duration::parse(text) {
            Ok(d) if d.is_zero() => Err(LimitError {
                field,
                message: "must be longer than 0".to_string(),
            }),
            Ok(d) => Ok(d),
            Err(e) => Err(LimitError {
                field,
                message: e.to_string(),
            }),
        }
    };
    let max_header_bytes = spec
        .max_header_bytes
        .map_or(ListenerLimits::DEFAULT_MAX_HEADER_BYTES, |n| n as usize);
    if !(1024..=1 << 20).contains(&max_header_bytes) {
        return Err(LimitError {
            field: "maxHeaderBytes",
            message: format!("{max_header_bytes} is outside 1024..=1048576"),
        });
    }
    for (field, value) in [
        ("maxConnections", spec.max_connections),
        ("backlog", spec.backlog),
    ] {
        if value == Some(0) {
            return Err(LimitError {
                field,
                message: "must be at least 1".to_string(),
            });
        }
    }
    Ok(Resolved {
        listener: ListenerLimits {
            header_read_timeout: duration(
                "headerReadTimeout",
                &spec.header_read_timeout,
                ListenerLimits::DEFAULT_HEADER_READ_TIMEOUT,
            )?,
            max_header_bytes,
            max_connections: spec
                .max_connections
                .map_or(ListenerLimits::DEFAULT_MAX_CONNECTIONS, |n| n as usize),
            backlog: spec.backlog.unwrap_or(ListenerLimits::DEFAULT_BACKLOG),
        },
        body_idle_timeout: duration(
            "bodyIdleTimeout",
            &spec.body_idle_timeout,
            Resolved::DEFAULT_BODY_IDLE_TIMEOUT,
        )?,
        upstream_timeout: duration(
            "upstreamTimeout",
            &spec.upstream_timeout,
            Resolved::DEFAULT_UPSTREAM_TIMEOUT,
        )?,
    })
}
