# nats-server built from the version pinned in ferry's go.mod
# (go build github.com/nats-io/nats-server/v2, static), nothing else.
# Built by deploy/build-images.sh; the configuration is mounted at
# /etc/nats (deploy/nats/*.conf rendered by deploy/setup.sh).
FROM scratch
ARG VERSION=unknown
LABEL org.opencontainers.image.title="nats-server" \
      org.opencontainers.image.description="nats-server built from ferry's pinned module" \
      org.opencontainers.image.version="${VERSION}"
COPY nats-server /nats-server
COPY --chown=65532:65532 data/ /var/lib/nats/
USER 65532:65532
EXPOSE 4222 6222 8222
ENTRYPOINT ["/nats-server"]
CMD ["--config", "/etc/nats/nats-server.conf"]
