# The demo origin of deploy/compose.yaml: ferry's demo origin handler (the
# one `ferry dev` serves) behind mutual TLS, from ferry-deploy-tool (built
# by deploy/build-images.sh from deploy/lib/tool.sh). Not for production.
FROM scratch
COPY ferry-deploy-tool /ferry-deploy-tool
USER 65532:65532
EXPOSE 8443 8444
ENTRYPOINT ["/ferry-deploy-tool", "origin"]
