# roastq's image: the worker pool, the scheduler, the CLI (migrate), the console and the Claude simulator.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /app

COPY pyproject.toml README.md ./
COPY roastq ./roastq
COPY actors ./actors
COPY middleware ./middleware
COPY observability ./observability
RUN pip install .

# Metrics: the multiprocess files of the pool's processes (one exporter serves them all).
ENV PROMETHEUS_MULTIPROC_DIR=/tmp/roastq-metrics METRICS_HOST=0.0.0.0 METRICS_PORT=9191 LOG_FORMAT=json
EXPOSE 9191 9292
CMD ["python", "-m", "actors", "--processes", "2", "--threads", "8"]
