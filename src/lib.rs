//! canaryd: a GitOps canary-release controller.
//!
//! # Codemap
//!
//! The decision is pure; I/O lives at the edges.
//!
//! - [`spec`]: the documents users write (`Rollout`, `Router`, `MetricTemplate`), exactly as
//!   YAML spells them; serde reads them and schemars turns them into `schemas/`.
//!   [`spec::condition`] is the `result < 0.01` language, [`spec::duration`] the `5m` one.
//! - [`yaml`]: bounded reading of YAML files into documents, with a map from field path to
//!   line and column; each file is parsed once.
//! - [`validate`]: raw documents → [`model`] types, collecting every problem as a
//!   [`diag::Diagnostic`] (file, line, column, field, help). `canaryd lint` runs only this.
//!   Files are parsed, and rollouts checked, on every core through [`par`].
//! - [`model`]: validated rollouts (`Weight` in 0..=100, parsed durations, resolved
//!   templates), the [`model::Revision`] that identifies what is rolled out, and the traffic
//!   types ([`model::Traffic`] desired, [`model::Observed`] live).
//! - [`progress`]: the state machine of a rollout; serialised, it is the status file in Git.
//! - [`analysis`]: metric semantics: value → outcome → run → verdict.
//! - [`judge`]: the statistical canary-versus-baseline judge (Mann–Whitney U, Hodges–Lehmann
//!   shift and its interval, Kayenta's classes and score); an analysis's `judge:` scores with it.
//! - [`promql`]: query templating (`{{ canary }}`…, escaped) and the built-in PromQL for the
//!   HAProxy and Traefik exporters; [`templates`] the built-in metric templates by router kind.
//! - [`plan`]: the planner, `plan(spec, recorded status, live weights, measurements, gates,
//!   now) → Plan`. The daemon executes plans; `canaryd plan` prints them.
//! - [`repo`]: finds and reads spec files on disk (the only module here touching the file
//!   system), and [`live`] reads a live-weights file for `canaryd plan`.
//! - [`report`]: what `lint` and `plan` print, human or JSON; [`status_view`] what `status` prints.
//! - [`schema`]: JSON Schema generation for `schemas/`.
//! - [`record`]: the status file, one per rollout on the status branch: the planner's state plus
//!   what the daemon observed, assembled by [`record::StatusFile::after`].
//! - [`number`]: numbers as commit subjects and pull requests show them.
//!
//! The edges, where I/O lives:
//!
//! - [`daemon`]: `canaryd run`, one loop over a closed `Event` that fetches, plans and executes
//!   each plan's [`plan::Effect`]s in order, batched across rollouts in rounds (one status push
//!   per round); measurements run on their own tasks and come back as events.
//!   [`daemon::message`] writes the status commit messages.
//! - [`git`]: every Git operation (git2, blocking; the daemon runs it on the blocking pool), one
//!   file per concern: the mirror, pushing, credentials, known_hosts, gate commits, and the
//!   repository played by hand for the demo and benchmarks.
//! - [`clock`]: the only place time is read; the daemon takes a [`clock::Clock`].
//! - [`router`]: the router boundary (`observe`, `observe_all`, `apply`, `health`), one file
//!   per driver: [`router::embedded`] (the reverse proxy inside the daemon), [`router::haproxy`],
//!   [`router::traefik`], [`router::caddy`], [`router::nginx`], [`router::gateway`].
//! - [`provider`]: metric providers: the embedded router's counters and [`prometheus`] (the
//!   HTTP API client); the judge's series for both sides. [`analyze`] is `canaryd analyze`.
//! - [`forge`]: the forge behind a trait, GitHub through octocrab (the only module using it):
//!   revert pull requests and commit statuses; the daemon sends to it from a worker.
//! - [`secret`]: secrets read from files or the environment, never printed.
//! - [`admin`]: `/healthz`, `/readyz`, `/metrics`; [`telemetry`] the events that both log and count.
//! - [`listener`]: the HTTP/1.1 listener under the embedded router and the admin endpoints
//!   (backlog, connection cap, header-read timeout and size limit, what it refused, counted).
//! - [`backend`]: demo backends and a bounded loopback load generator, for the demo and tests.
//! - [`demo`]: `canaryd demo`, the whole story on the real `run` path in a temp dir.
//!
//! # Invariants
//!
//! - `spec`, `yaml`, `validate`, `model`, `progress`, `analysis`, `judge` and `plan` do no I/O and never
//!   read the clock: time comes in as `now`. They cannot fail except by returning values.
//! - The planner never emits a canary weight that the current spec's steps do not name, other
//!   than 0 and 100 (a property test checks this).
//! - Only [`git`] uses git2 (and only blocking; never on an async worker). Only [`router`],
//!   [`provider`] and [`prometheus`], [`forge`], [`admin`], [`backend`] and [`daemon`] touch the
//!   network, and only [`daemon`] (and the one-shot commands) decide when.
//! - The daemon records a step toward the canary before applying it, and applies a step back
//!   (abort, rollback) before recording it: [`plan::Plan::effects`] orders them, a property test
//!   checks the order, and the daemon only follows it.
//! - Time is read only in [`clock`] (clippy's `disallowed-methods`); git2 only in [`git`],
//!   octocrab only in [`forge`]; no two modules import each other, even round a loop
//!   (`tests/it/tidy.rs` checks all three).
//! - Nothing below `main` reads the environment, except [`secret`] reading the variable a
//!   configuration names; configuration is parsed once and passed down.
//! - Secrets never appear in specs: router and forge credentials are named by environment
//!   variable or file.

pub mod admin;
pub mod analysis;
pub mod analyze;
pub mod backend;
pub mod clock;
pub mod daemon;
pub mod demo;
pub mod diag;
pub mod forge;
pub mod git;
pub mod judge;
pub mod listener;
pub mod live;
pub mod model;
pub mod number;
pub mod par;
pub mod plan;
pub mod progress;
pub mod prometheus;
pub mod promql;
pub mod provider;
pub mod record;
pub mod repo;
pub mod report;
pub mod router;
pub mod schema;
pub mod secret;
pub mod spec;
pub mod status_view;
pub mod telemetry;
pub mod templates;
pub mod validate;
pub mod webhook;
pub mod yaml;
