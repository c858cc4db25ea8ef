# One gochat node. `docker compose up` runs two of them behind nginx with Redis (compose.yaml).
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY gochat ./gochat
COPY web ./web
COPY admin ./admin
RUN pip install --no-cache-dir . && useradd --system gochat
USER gochat
ENV HOST=0.0.0.0 PORT=8080
EXPOSE 8080
CMD ["gochat"]
