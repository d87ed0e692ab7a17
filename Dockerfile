# Tollgate's image: both binaries, `tollgate` (control plane and CLI) and `tollgate-sidecar`.
#
#   docker build -t tollgate:latest .
#
# Built with the same toolchain as CI (release profile: fat LTO, one codegen unit). The runtime
# is distroless (glibc and CA certificates, no shell, no package manager) and runs as the
# non-root user 65532; the Kubernetes manifests also make its root filesystem read-only.
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin tollgate --bin tollgate-sidecar \
 && mkdir -p /out \
 && cp target/release/tollgate target/release/tollgate-sidecar /out/

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /out/tollgate /out/tollgate-sidecar /usr/local/bin/
USER 65532:65532
# The control plane by default; the sidecar is `tollgate-sidecar` (the injected container sets
# its command).
ENTRYPOINT ["/usr/local/bin/tollgate"]
CMD ["serve", "--grpc=0.0.0.0:50051", "--http=0.0.0.0:9902", "--data=/var/lib/tollgate"]
