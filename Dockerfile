# syntax=docker/dockerfile:1
# The secure-defaults webhook image: a static-enough Rust binary on distroless (glibc + libgcc, no shell,
# no package manager), running as the nonroot user 65532.
#   docker build -t ghcr.io/secure-defaults/secure-defaults:0.1.0 .
# The builder and base images are build arguments (BUILDER_IMAGE, BASE_IMAGE), e.g. to use a mirror:
#   podman build --build-arg BASE_IMAGE=mirror.example/distroless/cc-debian12:nonroot -t ... .
# Without any registry, `make image` builds the same layout from Debian packages (Containerfile.local).
# manifests/ expects the entrypoint to be the binary (args: serve --config ...), UID/GID 65532 and ports
# 8443 (webhook, TLS) and 8080 (admin: /healthz, /readyz, /metrics).

ARG RUST_VERSION=1
ARG BUILDER_IMAGE=docker.io/library/rust:${RUST_VERSION}-bookworm
# Debian 12 like the builder, so the glibc the binary was linked against is there.
ARG BASE_IMAGE=gcr.io/distroless/cc-debian12:nonroot

FROM ${BUILDER_IMAGE} AS build
WORKDIR /src
COPY . .
# Cache mounts keep the registry and the target directory between builds; the binary is copied out of the
# cached target directory within the same step.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/usr/local/cargo/git \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin secure-defaults \
    && cp target/release/secure-defaults /secure-defaults

FROM ${BASE_IMAGE}
LABEL org.opencontainers.image.title="secure-defaults" \
      org.opencontainers.image.description="Kubernetes mutating admission webhook that fills in missing pod securityContext fields" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=build /secure-defaults /secure-defaults
USER 65532:65532
EXPOSE 8443 8080
ENTRYPOINT ["/secure-defaults"]
CMD ["serve", "--config", "/etc/secure-defaults/config/secure-defaults.yaml"]
