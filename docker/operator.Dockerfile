# The EdgeFleet operator (kopf, the fleet gateway, metrics, variant builds).
#   docker build -f docker/operator.Dockerfile -t edgefleet-operator .
# Two stages: the build stage installs into a virtual environment with docker/install.sh
# (which a test also runs) from the hash-pinned docker/requirements-operator.lock; the final
# stage carries only that environment and runs as a non-root user.
# The base of both stages, pinned by digest: a tag moves (every Python patch release and
# Debian update re-points it), a digest names these exact bytes, so a rebuild gets the
# same interpreter and system libraries until someone moves it on purpose. This is the
# multi-arch index of python:3.11-slim (3.11.16, Debian trixie). To refresh, take the
# index digest (not a per-platform one) and update both images together:
#   docker buildx imagetools inspect python:3.11-slim --format '{{json .Manifest.Digest}}'
ARG BASE_IMAGE=python:3.11-slim@sha256:e41613d42d4891e4930f79523f93f81bbc7632584ec65e36ab055f41a800b41e

FROM ${BASE_IMAGE} AS build
COPY pyproject.toml README.md /src/
COPY operator /src/operator
COPY edge_runtime /src/edge_runtime
COPY protos /src/protos
COPY trainer /src/trainer
COPY docker/install.sh docker/requirements-operator.lock /src/docker/
RUN sh /src/docker/install.sh operator /src /opt/edgefleet

FROM ${BASE_IMAGE}
COPY --from=build /opt/edgefleet /opt/edgefleet
ENV PATH=/opt/edgefleet/bin:$PATH PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
USER 65532:65532
EXPOSE 50051 50052 8080
ENTRYPOINT ["edgefleet-operator"]
