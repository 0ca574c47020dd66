# ferry: the one static binary (CGO_ENABLED=0 go build -trimpath ./cmd/ferry)
# and nothing else. No base image: nothing is pulled from a registry.
# Built by deploy/build-images.sh, whose context holds:
#   ferry     the binary
#   certs/    CA certificates for public origins (empty unless
#             FERRY_IMAGE_CA_BUNDLE names a bundle: ferry's own identities
#             and the demo origin use the deployment's CA, mounted at run time)
#   data/     /var/lib/ferry/{coordinator,certvault,agent}, and srv/: /srv/ferry
#             (an agent's root), owned by the runtime user, so that volumes
#             mounted there start writable. The paths are those of the systemd
#             units too: one config file serves both.
FROM scratch
ARG VERSION=dev
LABEL org.opencontainers.image.title="ferry" \
      org.opencontainers.image.description="ferry roles: coordinator, agent, certvault (and the CLI)" \
      org.opencontainers.image.version="${VERSION}"
COPY ferry /ferry
COPY certs/ /etc/ssl/certs/
COPY --chown=65532:65532 data/ /var/lib/ferry/
COPY --chown=65532:65532 srv/ /srv/ferry/
ENV HOME=/var/lib/ferry
USER 65532:65532
ENTRYPOINT ["/ferry"]
