# syntax=docker/dockerfile:1
# Build stage: dependencies first (cached), then the project.
FROM python:3.11-slim AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
# The locked dependencies (exact versions, checked hashes) in a layer of their own.
COPY requirements.lock ./
RUN pip install --require-hashes -r requirements.lock
COPY pyproject.toml README.md ./
COPY receiver ./receiver
COPY store ./store
RUN pip install --no-deps .

# Runtime stage: the venv only, a non-root user, data on a volume.
FROM python:3.11-slim
RUN useradd --system --uid 10001 --home /data receiver && mkdir /data && chown receiver /data
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    RECEIVER_HOST=0.0.0.0 \
    RECEIVER_PORT=8000 \
    RECEIVER_DATABASE_URL=sqlite:////data/receiver.db
USER receiver
WORKDIR /data
VOLUME ["/data"]
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=3s --start-period=10s \
    CMD ["python", "-c", "import urllib.request,sys; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=2).status != 200)"]
CMD ["receiver", "serve"]
