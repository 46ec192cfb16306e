# The EdgeFleet edge runtime (ONNX Runtime, Open Inference Protocol; no kopf, no Kubernetes client).
#   docker build -f docker/edge.Dockerfile -t edgefleet-edge .
# Two stages: the build stage installs into a virtual environment with docker/install.sh
# (which a test also runs), the final stage carries only that environment and runs as
# a non-root user.
FROM python:3.11-slim AS build
COPY pyproject.toml README.md /src/
COPY operator /src/operator
COPY edge_runtime /src/edge_runtime
COPY protos /src/protos
COPY docker/install.sh /install.sh
RUN sh /install.sh edge /src /opt/edgefleet

FROM python:3.11-slim
COPY --from=build /opt/edgefleet /opt/edgefleet
ENV PATH=/opt/edgefleet/bin:$PATH PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
USER 65532:65532
EXPOSE 8000 8001 8002
ENTRYPOINT ["edgefleet-edge"]
