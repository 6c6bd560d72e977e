# The rustlayer image for a Docker engine:
#
#   docker build -t ghcr.io/rustlayer/rustlayer:0.1.0 .
#
# hack/build-image.sh builds the same image without one (an OCI archive from
# Debian packages and the release binary).

FROM rust:1-bookworm AS build
# libdevmapper-dev and libclang-dev: the devmapper backend's bindings are
# generated against the system headers at build time.
RUN apt-get update \
 && apt-get install -y --no-install-recommends libdevmapper-dev libclang-dev pkg-config \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
# The release profile keeps line tables for backtraces during development; in
# the image they would be four fifths of the binary.
RUN cargo build --release --locked -p rustlayer \
 && install -D -m 0755 target/release/rustlayer /out/rustlayer \
 && strip --strip-debug /out/rustlayer

FROM debian:bookworm-slim
# mount(8) for layer chains longer than one mount(2) page, mkfs.ext4/mkfs.xfs for
# thin devices, and libdevmapper, which the binary links against.
RUN apt-get update \
 && apt-get install -y --no-install-recommends e2fsprogs xfsprogs mount libdevmapper1.02.1 \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /out/rustlayer /usr/local/bin/rustlayer
LABEL org.opencontainers.image.title="rustlayer" \
      org.opencontainers.image.description="A containerd snapshotter: overlay and devmapper backends behind containerd's snapshots API" \
      org.opencontainers.image.source="https://github.com/rustlayer/rustlayer" \
      org.opencontainers.image.licenses="Apache-2.0"
ENTRYPOINT ["rustlayer"]
CMD ["serve"]
