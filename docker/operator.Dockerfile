# The EdgeFleet operator (kopf, the fleet gateway, metrics).
#   docker build -f docker/operator.Dockerfile -t edgefleet-operator .
# Two stages: the build stage installs into a virtual environment with docker/install.sh
# (which a test also runs), the final stage carries only that environment and runs as
# a non-root user.
FROM python:3.11-slim AS build
COPY pyproject.toml README.md /src/
COPY operator /src/operator
COPY edge_runtime /src/edge_runtime
COPY protos /src/protos
COPY docker/install.sh /install.sh
RUN sh /install.sh operator /src /opt/edgefleet

FROM python:3.11-slim
COPY --from=build /opt/edgefleet /opt/edgefleet
ENV PATH=/opt/edgefleet/bin:$PATH PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
USER 65532:65532
EXPOSE 50051 8080
ENTRYPOINT ["edgefleet-operator"]
