# syntax=docker/dockerfile:1.7
# One file, one target per service, and one for the deployment's setup Job:
#   docker build --target gateway -t tunewire/gateway:0.1.0 .
# BuildKit cache mounts keep the crate registry and target/ between builds, so dependencies
# compile once and the six targets share one workspace build. Every image is
# debian:bookworm-slim with only the runtime libraries its binary links (ldd decided the
# lists below), running as an unprivileged user.

ARG RUST_VERSION=1.95
ARG DEBIAN=bookworm

FROM rust:${RUST_VERSION}-${DEBIAN} AS build
RUN apt-get update && apt-get install -y --no-install-recommends \
        clang libclang-dev pkg-config libssl-dev \
        libavcodec-dev libavformat-dev libavutil-dev libswresample-dev libswscale-dev \
        libavfilter-dev libavdevice-dev \
        nodejs npm \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
# The gateway's build script builds the web app (web/, esbuild) with Node and npm.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/root/.npm \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bins \
    && mkdir -p /out \
    && cp target/release/tunewire-gateway target/release/tunewire-auth target/release/tunewire-converter \
          target/release/tunewire-notifier target/release/tunewire-catalog-indexer \
          target/release/tunewire-setup /out/

FROM debian:${DEBIAN}-slim AS runtime
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates libssl3 \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --gid 10001 tunewire \
    && useradd --uid 10001 --gid 10001 --no-create-home --shell /usr/sbin/nologin tunewire
ENV LOG_FORMAT=json
USER 10001:10001

FROM runtime AS auth
COPY --from=build /out/tunewire-auth /usr/local/bin/
EXPOSE 8081
HEALTHCHECK CMD ["tunewire-auth", "healthcheck"]
ENTRYPOINT ["tunewire-auth"]

FROM runtime AS notifier
COPY --from=build /out/tunewire-notifier /usr/local/bin/
EXPOSE 9102
HEALTHCHECK CMD ["tunewire-notifier", "healthcheck"]
ENTRYPOINT ["tunewire-notifier"]

FROM runtime AS catalog-indexer
COPY --from=build /out/tunewire-catalog-indexer /usr/local/bin/
EXPOSE 8082
HEALTHCHECK CMD ["tunewire-catalog-indexer", "healthcheck"]
ENTRYPOINT ["tunewire-catalog-indexer"]

# Run once per deployment with the administrators' credentials (k8s/base/setup.yaml): each
# service's PostgreSQL role and RabbitMQ user, and the bus's topology. A one-shot: no port,
# no health check.
FROM runtime AS setup
COPY --from=build /out/tunewire-setup /usr/local/bin/
ENTRYPOINT ["tunewire-setup"]

# The gateway probes uploads with FFmpeg's demuxers.
FROM runtime AS gateway
USER root
RUN apt-get update && apt-get install -y --no-install-recommends \
        libavformat59 libavcodec59 libavutil57 libswresample4 \
    && rm -rf /var/lib/apt/lists/*
USER 10001:10001
COPY --from=build /out/tunewire-gateway /usr/local/bin/
EXPOSE 8080
HEALTHCHECK CMD ["tunewire-gateway", "healthcheck"]
ENTRYPOINT ["tunewire-gateway"]

# The converter decodes, filters and encodes (libmp3lame comes with libavcodec59).
FROM runtime AS converter
USER root
RUN apt-get update && apt-get install -y --no-install-recommends \
        libavformat59 libavcodec59 libavutil57 libswresample4 libavfilter8 \
    && rm -rf /var/lib/apt/lists/*
USER 10001:10001
COPY --from=build /out/tunewire-converter /usr/local/bin/
EXPOSE 9101
HEALTHCHECK CMD ["tunewire-converter", "healthcheck"]
ENTRYPOINT ["tunewire-converter"]
