# One gochat node (GOCHAT_WORKERS=N with REDIS_URL: N worker processes on its port). `docker compose up` runs two of them behind nginx with Redis (compose.yaml).
# Installs exactly what uv.lock says (runtime packages only), as `make run` does.
FROM python:3.11-slim
WORKDIR /app
COPY requirements-uv.txt ./
RUN pip install --no-cache-dir --require-hashes --no-deps -r requirements-uv.txt
COPY pyproject.toml uv.lock README.md ./
COPY gochat ./gochat
COPY web ./web
COPY admin ./admin
ENV UV_PROJECT_ENVIRONMENT=/app/.venv UV_PYTHON_DOWNLOADS=never UV_COMPILE_BYTECODE=1
RUN uv sync --locked --no-editable --no-cache && useradd --system gochat
ENV PATH=/app/.venv/bin:$PATH HOST=0.0.0.0 PORT=8080
USER gochat
EXPOSE 8080
CMD ["gochat"]
