# syntax=docker/dockerfile:1
# xpcs-io service image: build a wheel, install it into a venv, run as a non-root user.

FROM python:3.11-slim AS build
WORKDIR /src
RUN python -m venv /opt/venv && /opt/venv/bin/pip install --no-cache-dir --upgrade pip build
COPY pyproject.toml README.md ./
COPY client ./client
COPY service ./service
RUN /opt/venv/bin/python -m build --wheel --outdir /dist . \
 && /opt/venv/bin/pip install --no-cache-dir "$(ls /dist/*.whl)[server]"

FROM python:3.11-slim AS runtime
RUN useradd --create-home --uid 10001 xpcs \
 && mkdir -p /data && chown xpcs /data
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    XPCS_IO_DATA_ROOT=/data \
    XPCS_IO_HOST=0.0.0.0 \
    XPCS_IO_PORT=8000
USER xpcs
VOLUME ["/data"]
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=3s --start-period=10s --retries=3 \
  CMD ["python", "-c", "import urllib.request,sys; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8000/health', timeout=2).status == 200 else 1)"]
CMD ["xpcs-io", "serve"]
