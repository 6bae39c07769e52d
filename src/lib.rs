//! canaryd: a GitOps canary-release controller.
//!
//! # Codemap
//!
//! The decision is pure; I/O lives at the edges. Three folders show it: [`core`] (pure),
//! [`edge`] (I/O) and [`view`] (what the CLI prints); the binary's commands are `src/cli/`,
//! one file per command, with the arguments they share defined once.
//!
//! [`core`], the pure core:
//!
//! - [`core::spec`]: the documents users write (`Rollout`, `Router`, `MetricTemplate`), exactly
//!   as YAML spells them; serde reads them and schemars turns them into `schemas/`
//!   ([`core::schema`]). [`core::spec::condition`] is the `result < 0.01` language,
//!   [`core::spec::duration`] the `5m` one.
//! - [`core::yaml`]: bounded reading of YAML files into documents, with a map from field path
//!   to line and column; each file is parsed once.
//! - [`core::validate`]: raw documents → [`core::model`] types, collecting every problem as a
//!   [`core::diag::Diagnostic`] (file, line, column, field, help). `canaryd lint` runs only
//!   this. Files are parsed, and rollouts checked, on every core through [`core::par`].
//! - [`core::model`]: validated rollouts (`Weight` in 0..=100, parsed durations, resolved
//!   templates), the [`core::model::Revision`] that identifies what is rolled out, and the
//!   traffic types ([`core::model::Traffic`] desired, [`core::model::Observed`] live).
//! - [`core::progress`]: the state machine of a rollout; serialised, it is the status file.
//! - [`core::analysis`]: metric semantics: value → outcome → run → verdict.
//! - [`core::judge`]: the statistical canary-versus-baseline judge (Mann–Whitney U,
//!   Hodges–Lehmann shift and its interval, Kayenta's classes and score).
//! - [`core::promql`]: query templating (`{{ canary }}`…, escaped) and the built-in PromQL for
//!   the HAProxy and Traefik exporters; [`core::templates`] the built-in metric templates.
//! - [`core::plan`]: the planner, `plan(spec, recorded status, live weights, measurements,
//!   gates, now) → Plan`, and the ordered [`core::plan::Effect`]s of a plan. The daemon
//!   executes them; `canaryd plan` prints them.
//! - [`core::record`]: the status file, one per rollout on the status branch: the planner's
//!   state plus what the daemon observed, assembled by [`core::record::StatusFile::after`].
//! - [`core::number`]: numbers as commit subjects and pull requests show them.
//!
//! [`edge`], where I/O lives:
//!
//! - [`edge::daemon`]: `canaryd run`, one loop over a closed event that carries its data. Each
//!   look plans from one snapshot of Git read in one blocking call, and executes each plan's
//!   effects in order, batched across rollouts in rounds (one status push per round);
//!   measurements and router calls run on their own tasks.
//! - [`edge::git`]: every Git operation (git2, blocking; the daemon runs it on the blocking
//!   pool), one file per concern: the mirror, pushing, credentials, known_hosts, gate commits,
//!   and repositories played by hand for the demo, the CLI and benchmarks.
//! - [`edge::clock`]: the only place time is read; the daemon takes a [`edge::clock::Clock`]
//!   (tokio's time in tests, so a paused runtime plays hours in milliseconds).
//! - [`edge::router`]: the [`edge::router::Router`] trait (`observe_all`, `apply`,
//!   `health`) and one file per driver: [`edge::router::embedded`] (the reverse proxy inside
//!   the daemon), `haproxy`, `traefik`, `caddy`, `nginx`, `gateway`.
//! - [`edge::provider`]: metric providers behind the [`edge::provider::MetricsProvider`]
//!   trait: the embedded router's counters and [`edge::prometheus`] (the HTTP API client);
//!   the judge's series for both sides. [`edge::analyze`] is `canaryd analyze`.
//! - [`edge::forge`]: the forge behind a trait, GitHub through octocrab (the only module using
//!   it): revert pull requests and commit statuses; the daemon sends to it from a worker.
//! - [`edge::secret`]: secrets read from files or the environment, never printed.
//! - [`edge::admin`]: `/healthz`, `/readyz` (the daemon's first look, and every router it
//!   drives answering), `/metrics`; [`edge::telemetry`] the events that both log and count;
//!   [`edge::webhook`] the push webhooks served beside them.
//! - [`edge::listener`]: the HTTP/1.1 listener under the embedded router and the admin
//!   endpoints (backlog, connection cap, header-read timeout and size limit, counted).
//! - [`edge::repo`]: finds and reads spec files on disk for the one-shot commands, and
//!   [`edge::live`] reads a live-weights file for `canaryd plan`.
//! - [`edge::backend`]: demo backends and a bounded loopback load generator.
//! - [`edge::demo`]: `canaryd demo`, the whole story on the real `run` path in a temp dir.
//!
//! [`view`]: [`view::report`] is what `lint` and `plan` print, [`view::status`] what `status`
//! prints, human or JSON.
//!
//! # Invariants
//!
//! - Nothing in [`core`] does I/O, reads the clock or names [`edge`]: time comes in as `now`.
//!   It cannot fail except by returning values. (`tests/it/tidy.rs` checks that no file under
//!   `src/core/` names `crate::edge`, tokio, reqwest, `std::fs`, `std::net` or the clock.)
//! - The planner never emits a canary weight that the current spec's steps do not name, other
//!   than 0 and 100 (a property test checks this).
//! - Only [`edge::git`] uses git2 (and only blocking; never on an async worker). Only
//!   [`edge`] touches the network, and only [`edge::daemon`] (and the one-shot commands)
//!   decide when.
//! - The daemon records a step toward the canary before applying it, and applies a step back
//!   (abort, rollback) before recording it: [`core::plan::Plan::effects`] orders them, a
//!   property test checks the order, and the daemon only follows it (a paused-clock test
//!   checks it did: the fake router reads Git at each change).
//! - Time is read only in [`edge::clock`] (clippy's `disallowed-methods`); git2 only in
//!   [`edge::git`], octocrab only in [`edge::forge`]; no two modules import each other, even
//!   round a loop (`tests/it/tidy.rs` checks all of these).
//! - Nothing below `main` and `src/cli/` reads the environment, except [`edge::secret`]
//!   reading the variable a configuration names; configuration is parsed once and passed down.
//! - Secrets never appear in specs: router and forge credentials are named by environment
//!   variable or file.

pub mod core;
pub mod edge;
pub mod view;
