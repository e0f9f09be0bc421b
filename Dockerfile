# ipfsreg as a self-contained node: the OCI registry on :5000 and the libp2p/IPFS peer on :4001,
# with every block and registry record in the /data volume.
#
#   docker build -t ipfsreg .
#   docker run -d --name ipfsreg -p 5000:5000 -p 4001:4001 -v ipfsreg:/data ipfsreg
#
# Arguments after the image name are appended to `ipfsreg serve --data /data` (for example
# `--peer MULTIADDR` or `--log-level debug`). To move the registry port inside the container, set
# IPFSREG_REGISTRY_LISTEN (the health check follows it). The process runs as uid:gid 10001:10001.
#
# BASE is any Debian-based image with python3 >= 3.11 and its venv module: python:3.12-slim, or a
# Debian image with python3 and python3-venv installed (interop/test_container.py builds from one).
# A compiler is installed in the build stage only. With buildah, `buildah bud --format docker`
# keeps the HEALTHCHECK (the OCI image format has no field for it).
ARG BASE=python:3.12-slim

FROM ${BASE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
# fastecdsa (a py-libp2p dependency) ships no Linux wheels: compile it against GMP here. Debian's
# own python3 needs python3-dev for the headers; python:*-slim images already have them.
RUN set -eux; \
    packages="gcc libc6-dev libgmp-dev"; \
    python3 -c 'import os, sys, sysconfig; sys.exit(not os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h")))' \
        || packages="$packages python3-dev"; \
    apt-get update; \
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends $packages; \
    rm -rf /var/lib/apt/lists/*; \
    python3 -m venv /opt/ipfsreg
COPY pyproject.toml constraints.txt README.md /src/
COPY ipfsreg /src/ipfsreg
# pip and setuptools are not needed at run time: leave them out of the image.
RUN set -eux; \
    /opt/ipfsreg/bin/pip install -c /src/constraints.txt /src; \
    /opt/ipfsreg/bin/ipfsreg --version; \
    /opt/ipfsreg/bin/python -m pip uninstall -y pip setuptools

FROM ${BASE}
# A fixed uid/gid, so a bind-mounted data dir can be chowned to it from the host.
RUN set -eux; \
    groupadd --gid 10001 ipfsreg; \
    useradd --uid 10001 --gid ipfsreg --home-dir /data --no-create-home \
        --shell /usr/sbin/nologin ipfsreg; \
    install -d -o ipfsreg -g ipfsreg -m 0750 /data
COPY --from=build /opt/ipfsreg /opt/ipfsreg
# The compiled extensions load here or the build fails (fastecdsa's libgmp10 is pre-depended on by
# coreutils, so every Debian base has it).
RUN /opt/ipfsreg/bin/python -c "import fastecdsa.curvemath, fastecdsa._ecdsa, plyvel, libp2p, ipfsreg.app"
# IPFSREG_DATA_DIR makes `docker exec CONTAINER ipfsreg id|peers|add ...` act on the running node.
ENV PATH=/opt/ipfsreg/bin:$PATH PYTHONUNBUFFERED=1 IPFSREG_DATA_DIR=/data \
    IPFSREG_DEFAULT_CONFIG=/etc/docker/registry/config.yml
LABEL org.opencontainers.image.title="ipfsreg" \
      org.opencontainers.image.description="A container image registry on IPFS, in one Python process" \
      org.opencontainers.image.licenses="MIT"
USER ipfsreg
WORKDIR /data
VOLUME /data
EXPOSE 5000 4001
# Any HTTP answer from /v2/ below 500 (200, or 401 with auth on) means the registry is serving.
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python3", "-c", "import http.client as h, os; port = int(os.environ.get('IPFSREG_REGISTRY_LISTEN', ':5000').rpartition(':')[2]); c = h.HTTPConnection('127.0.0.1', port, timeout=4); c.request('GET', '/v2/'); raise SystemExit(c.getresponse().status >= 500)"]
ENTRYPOINT ["ipfsreg", "serve", "--data", "/data"]
CMD []
