FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY infogrowth ./infogrowth
COPY agents ./agents
COPY infra ./infra
COPY schemas ./schemas
RUN pip install --no-cache-dir .
ENV INFOGROWTH_SCHEMAS_DIR=/app/schemas
CMD ["infogrowth", "--help"]
