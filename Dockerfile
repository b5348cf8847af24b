# syntax=docker/dockerfile:1
# Paceline service image: `paceline-server` on a slim Python base, as a non-root user.
#   docker build -t paceline:0.1.0 .
#   docker run -p 8000:8000 -p 50051:50051 paceline:0.1.0 serve --grpc-port 50051
# With no settings it serves the embedded SQLite database in the /data volume; set
# PACELINE_DATABASE_URL (postgresql+psycopg://...) and PACELINE_API_TOKENS for production.
ARG PYTHON_VERSION=3.11

# --- build: install the distribution and its dependencies into a self-contained venv ---
FROM python:${PYTHON_VERSION}-slim AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY service/ service/
COPY client/ client/
RUN python -m venv /opt/paceline \
    && /opt/paceline/bin/pip install --upgrade pip \
    && /opt/paceline/bin/pip install . \
    && find /opt/paceline -name '__pycache__' -prune -exec rm -rf {} +

# --- runtime: the venv only, no compilers, no build files ---
FROM python:${PYTHON_VERSION}-slim AS runtime
RUN groupadd --system --gid 10001 paceline \
    && useradd --system --uid 10001 --gid paceline --no-create-home \
       --home-dir /data --shell /usr/sbin/nologin paceline \
    && mkdir -p /data \
    && chown paceline:paceline /data
COPY --from=build /opt/paceline /opt/paceline
ENV PATH=/opt/paceline/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PACELINE_HOST=0.0.0.0 \
    PACELINE_PORT=8000 \
    PACELINE_DATABASE_URL=sqlite:////data/paceline.db
WORKDIR /data
VOLUME ["/data"]
# Numeric, so Kubernetes' runAsNonRoot can verify it without a passwd lookup.
USER 10001:10001
EXPOSE 8000 50051
# python instead of curl: the slim image has no curl, and the check must not add packages.
HEALTHCHECK --interval=15s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('PACELINE_PORT', '8000'), timeout=4)"]
ENTRYPOINT ["paceline-server"]
CMD ["serve"]
