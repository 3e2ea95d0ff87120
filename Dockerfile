# meshward: one image for `meshward serve` and `meshward controller` (Deployments) and
# `meshward node-tap` (DaemonSet).
# node-tap needs CAP_NET_RAW (AF_PACKET) and CAP_SYS_ADMIN (setns into pod network namespaces)
# plus the host's /var/run/netns or /proc mounted; serve needs no capabilities.
# the dashboard's bundle (pinned npm packages, esbuild) into meshward/app/static/dashboard, which
# the Python package then carries as package data: the image needs no node and no CDN
FROM node:20-bookworm-slim AS dashboard
WORKDIR /src/dashboard
COPY dashboard/package.json dashboard/package-lock.json ./
RUN npm ci --no-audit --no-fund --loglevel=error
COPY dashboard/build.mjs ./
COPY dashboard/src ./src
RUN node build.mjs

FROM python:3.11-slim-bookworm AS build
WORKDIR /src
COPY pyproject.toml README.md LICENSE ./
COPY meshward ./meshward
COPY extauthz ./extauthz
COPY tap ./tap
COPY istio ./istio
COPY linkerd ./linkerd
COPY --from=dashboard /src/meshward/app/static/dashboard ./meshward/app/static/dashboard
RUN pip install --no-cache-dir --prefix=/install .

FROM python:3.11-slim-bookworm
RUN groupadd --system --gid 10001 meshward \
 && useradd --system --uid 10001 --gid meshward --home-dir /var/lib/meshward --create-home meshward
COPY --from=build /install /usr/local
ENV MESHWARD_DB=/var/lib/meshward/meshward.db \
    MESHWARD_CACHE=/usr/local/share/meshward/hyperscan \
    PYTHONUNBUFFERED=1
# compile the Hyperscan databases of every level into the image: a pod then starts in well under
# a second instead of compiling for several (a CPU without this build host's features falls
# back to compiling at start)
RUN python -c "from meshward.app.sigcache import warm; warm()"
USER 10001:10001
WORKDIR /var/lib/meshward
EXPOSE 9191 9192 9193 9194
ENTRYPOINT ["meshward"]
CMD ["serve"]
