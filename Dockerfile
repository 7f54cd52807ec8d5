# derecho-actors node image: the package, its examples, and nothing else.
#   docker build -t derecho-actors:0.1.0 .
# Runs as an unprivileged user; data in /var/lib/derecho, config and certificates mounted
# under /etc/derecho (see deploy/compose.yaml and deploy/kubernetes/).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
WORKDIR /app
COPY pyproject.toml setup.cfg README.md ./
COPY derecho_actors ./derecho_actors
COPY runtime ./runtime
COPY examples ./examples
RUN pip install . \
    && useradd --uid 10001 --create-home --shell /usr/sbin/nologin derecho \
    && mkdir -p /var/lib/derecho /etc/derecho \
    && chown derecho:derecho /var/lib/derecho
USER 10001
# 7001: peers and clients (mutual TLS); 9100: /metrics, /health/live, /health/ready
EXPOSE 7001 9100
VOLUME ["/var/lib/derecho"]
# --app modules are imported from the working directory (/app: the examples) or site-packages.
ENTRYPOINT ["derecho-actors"]
CMD ["node", "--help"]
