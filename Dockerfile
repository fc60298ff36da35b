# One image for every qesmon process (pipeline, notifier, api, migrate): the command picks one.
#   docker build -t qes-monitoring .
#   docker run --rm qes-monitoring --help
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    RULES_DIR=/app/rules \
    RECOVERY_DIR=/var/lib/qesmon/recovery

WORKDIR /app

# Dependencies first, from pyproject.toml alone, so that code changes reuse this layer.
COPY pyproject.toml README.md ./
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" \
        > /tmp/requirements.txt \
    && pip install -r /tmp/requirements.txt \
    && rm /tmp/requirements.txt

# The source tree stays in /app: migrations/ and templates/ are found next to the packages,
# and rules/ is the default RULES_DIR (mount your own over it).
COPY . .
RUN pip install --no-deps --editable . \
    && useradd --system --uid 10001 --home-dir /var/lib/qesmon --shell /usr/sbin/nologin qesmon \
    && mkdir -p /var/lib/qesmon/recovery \
    && chown -R qesmon:qesmon /var/lib/qesmon

# Bytewax recovery snapshots live here; docker-compose.yml mounts a named volume on it
# (a fresh named volume takes this directory's owner, so the non-root user can write).
VOLUME ["/var/lib/qesmon/recovery"]
USER qesmon

EXPOSE 8000 8001
ENTRYPOINT ["qesmon"]
CMD ["--help"]
