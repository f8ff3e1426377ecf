FROM python:3.11-slim
# hnswlib has no wheel on PyPI: pip compiles it from source, which needs a C++ compiler.
RUN apt-get update \
    && apt-get install -y --no-install-recommends build-essential \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /app
COPY pyproject.toml README.md ./
COPY infogrowth ./infogrowth
COPY agents ./agents
COPY infra ./infra
COPY schemas ./schemas
RUN pip install --no-cache-dir .
ENV INFOGROWTH_SCHEMAS_DIR=/app/schemas
CMD ["infogrowth", "--help"]
