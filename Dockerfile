# A small runtime image for canaryd: build with the Rust toolchain, run as a non-root user on
# a distroless base (glibc, CA certificates, nothing else).
FROM rust:1.95-slim-bookworm AS build
# git2 builds libgit2 (and libssh2) against OpenSSL.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends pkg-config libssl-dev \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
# The allocator's build settings (see .cargo/config.toml).
COPY .cargo ./.cargo
# benches/ too: Cargo.toml declares the bench target, and cargo reads every target's path.
COPY src ./src
COPY benches ./benches
RUN cargo build --release --locked --bin canaryd \
    && strip target/release/canaryd

# cc carries glibc and OpenSSL's libssl3, which libgit2 links.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /src/target/release/canaryd /usr/local/bin/canaryd
# 65532 is distroless's `nonroot`; numeric, so Kubernetes can check runAsNonRoot.
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/canaryd"]
CMD ["--help"]
