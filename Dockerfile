# syntax=docker/dockerfile:1
# Container images of nodepool-rs, with upstream's targets:
#   docker build --target nodepool-launcher -t nodepool-launcher .
#   docker build --target nodepool-builder  -t nodepool-builder .
#   docker build --target nodepool          -t nodepool .
# Configuration goes to /etc/nodepool/nodepool.yaml (mount it); the
# launcher's web app listens on 8005. Set DEBUG to any value for debug logs.
#
# The two base images are build arguments, so the images can be built where
# no image registry is reachable (tools/container-smoke.sh builds every
# target with podman from a debootstrapped Debian 12):
#   RUST_IMAGE  the build stage: Rust (the workspace's rust-version or newer,
#               cargo on PATH, CARGO_HOME /usr/local/cargo), a C compiler
#               and CA certificates, on Debian 12 (the binaries link
#               against its glibc);
#   BASE_IMAGE  the runtime stages: Debian 12 with apt.
# Crates come from crates.io at build time (Cargo.lock, --locked); the
# registry and the target directory are cache mounts, so a rebuild after a
# change compiles only what changed.
ARG RUST_IMAGE=rust:1-bookworm
ARG BASE_IMAGE=debian:bookworm-slim

FROM ${RUST_IMAGE} AS build
WORKDIR /src
COPY . .
# The workspace's release profile keeps line tables (debug = 1) for profiling
# on the host; with the cloud SDKs that makes the launcher a 500 MB binary.
# The images' binaries have no debug info (symbols stay, for backtraces).
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    CARGO_PROFILE_RELEASE_DEBUG=0 CARGO_PROFILE_RELEASE_STRIP=debuginfo \
    cargo build --release --locked -p np-launcher -p np-builder -p np-cli \
 && install -m755 target/release/nodepool target/release/nodepool-launcher \
        target/release/nodepool-builder /usr/local/bin/

# The packages of the runtime stages come before the binaries, so their
# layers are reused when only the code changed.
FROM ${BASE_IMAGE} AS nodepool-base
# ssh-keyscan for host keys; CA certificates for cloud APIs.
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends ca-certificates openssh-client \
 && rm -rf /var/lib/apt/lists/* \
 && useradd -u 10001 -m -d /var/lib/nodepool -s /bin/sh nodepool

FROM nodepool-base AS nodepool
COPY --from=build /usr/local/bin/nodepool /usr/local/bin/
CMD ["/usr/local/bin/nodepool"]

FROM nodepool-base AS nodepool-launcher
COPY --from=build /usr/local/bin/nodepool /usr/local/bin/nodepool-launcher /usr/local/bin/
EXPOSE 8005
CMD ["/bin/sh", "-c", "exec /usr/local/bin/nodepool-launcher -f ${DEBUG:+-d}"]

FROM nodepool-base AS nodepool-builder
# diskimage-builder and what it runs; it calls sudo itself.
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        binutils curl debian-keyring debootstrap dosfstools e2fsprogs fdisk gdisk git kpartx parted \
        procps python3 python3-venv qemu-utils squashfs-tools sudo util-linux xz-utils zstd \
 && rm -rf /var/lib/apt/lists/* \
 && python3 -m venv /opt/dib \
 && /opt/dib/bin/pip install --no-cache-dir diskimage-builder \
 && echo 'nodepool ALL=(ALL) NOPASSWD:ALL' > /etc/sudoers.d/nodepool-sudo \
 && chmod 0440 /etc/sudoers.d/nodepool-sudo
ENV PATH=/opt/dib/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
COPY --from=build /usr/local/bin/nodepool /usr/local/bin/nodepool-builder /usr/local/bin/
CMD ["/bin/sh", "-c", "exec /usr/local/bin/nodepool-builder -f ${DEBUG:+-d}"]
