//! The one harness the test modules share (and no test module imports another): loopback
//! networking, canaryd's demo backends, the real routers and Prometheus, checks of a driver's
//! `observe_all` against its `observe`, Git repositories, the daemon's world and a fake GitHub.
//! `benches/` include `net`, `backends`, `git` and `rig` with `#[path]`, so those four build
//! outside this crate too.

pub mod backends;
pub mod git;
pub mod github;
pub mod net;
pub mod observe;
pub mod rig;
pub mod who;
pub mod world;
