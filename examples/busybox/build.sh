#!/usr/bin/env bash
# Builds `orch-example/busybox:latest`, a tiny image for trying orch on a
# machine with no registry: Debian's static busybox in an otherwise empty image,
# with a page at / for httpd.
# Needs: apt-get install busybox-static
set -euo pipefail
ctx=$(mktemp -d)
trap 'rm -rf "$ctx"' EXIT
cp "$(readlink -f /bin/busybox)" "$ctx/busybox"
cat > "$ctx/Dockerfile" <<'DOCKERFILE'
FROM scratch
COPY busybox /bin/busybox
RUN ["/bin/busybox", "--install", "-s", "/bin"]
# A page at the root, so `httpd -f -p 80` (serving /) answers 200 and a
# health check of / passes.
RUN ["/bin/sh", "-c", "echo 'hello from orch' > /index.html"]
CMD ["sh"]
DOCKERFILE
docker build -q -t orch-example/busybox:latest "$ctx"
