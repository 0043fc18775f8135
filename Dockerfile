# syntax=docker/dockerfile:1
# xpcs-io service image: build a wheel, install it into a venv, run as a non-root user.
# Every package version comes from constraints.txt; both stages are the slim Python image,
# which has no compiler (every dependency installs from a wheel).

FROM python:3.11-slim AS build
WORKDIR /src
COPY constraints.txt ./
ENV PIP_CONSTRAINT=/src/constraints.txt \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv \
 && /opt/venv/bin/pip install --no-cache-dir -c /src/constraints.txt --upgrade pip build
COPY pyproject.toml README.md ./
COPY client ./client
COPY service ./service
RUN /opt/venv/bin/python -m build --wheel --outdir /dist . \
 && /opt/venv/bin/pip install --no-cache-dir -c /src/constraints.txt "$(ls /dist/*.whl)[server]" \
 && /opt/venv/bin/pip uninstall --yes build pyproject_hooks

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
# Probes the port the server was configured with (XPCS_IO_PORT), whatever it is.
HEALTHCHECK --interval=15s --timeout=3s --start-period=10s --retries=3 \
  CMD ["python", "-c", "import os, sys, urllib.request; url = 'http://127.0.0.1:%s/health' % os.environ.get('XPCS_IO_PORT', '8000'); sys.exit(0 if urllib.request.urlopen(url, timeout=2).status == 200 else 1)"]
CMD ["xpcs-io", "serve"]
