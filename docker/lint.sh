#!/bin/sh
# Checks of docker/ without a container engine (run by `make lint`):
#   hadolint on the Dockerfile; Debian's docker-compose `config` on compose.yaml with every variable set
#   (accepted) and with each password or token empty (refused); caddy validating the Caddyfile.
# A missing docker-compose or caddy is skipped with the reason, except under CI=true where it fails.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
hadolint=${HADOLINT:-hadolint}
secrets="POSTGRES_PASSWORD LABEL_STUDIO_PASSWORD LABEL_STUDIO_USER_TOKEN GEOLABEL_ML_BACKEND_PASSWORD"
missing() {
    echo "docker/lint.sh: $1"
    [ "${CI:-}" != "true" ]
}

"$hadolint" "$here/Dockerfile"
echo "hadolint: docker/Dockerfile clean"

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
# An operator's .env: .env.example with placeholders for the empty values (never real secrets).
sed -e 's/^\(POSTGRES_PASSWORD\|LABEL_STUDIO_PASSWORD\|GEOLABEL_ML_BACKEND_PASSWORD\)=$/\1=lint-placeholder-0123456789/' \
    -e 's/^LABEL_STUDIO_USER_TOKEN=$/LABEL_STUDIO_USER_TOKEN=0123456789abcdef0123456789abcdef01234567/' \
    -e 's/^PUBLIC_HOST=$/PUBLIC_HOST=labels.example.org/' \
    -e 's#^PUBLIC_URL=$#PUBLIC_URL=https://labels.example.org#' "$here/.env.example" >"$tmp/ok.env"

if command -v docker-compose >/dev/null; then
    # Variables of the calling shell would win over --env-file: leave them out.
    compose() { env -u POSTGRES_PASSWORD -u LABEL_STUDIO_PASSWORD -u LABEL_STUDIO_USER_TOKEN \
        -u GEOLABEL_ML_BACKEND_PASSWORD docker-compose -f "$here/compose.yaml" --env-file "$1" config --quiet; }
    compose "$tmp/ok.env"
    for name in $secrets; do
        sed "s/^$name=.*/$name=/" "$tmp/ok.env" >"$tmp/empty.env"
        if compose "$tmp/empty.env" 2>"$tmp/err"; then
            echo "docker/lint.sh: compose.yaml accepted an empty $name"
            exit 1
        fi
        grep -q "set $name in .env" "$tmp/err" || { cat "$tmp/err"; exit 1; }
    done
    echo "docker-compose config: accepted with every variable set, refused with each secret empty"
else
    missing "docker-compose is not installed (make docker-judges): compose.yaml not checked"
fi

if command -v caddy >/dev/null; then
    for tls in internal admin@example.org; do
        HOME="$tmp" XDG_DATA_HOME="$tmp/data" XDG_CONFIG_HOME="$tmp/config" PUBLIC_HOST=labels.example.org \
            CADDY_TLS="$tls" caddy validate --config "$here/Caddyfile" --adapter caddyfile >"$tmp/caddy.log" 2>&1 \
            || { cat "$tmp/caddy.log"; exit 1; }
    done
    echo "caddy validate: docker/Caddyfile valid (self-signed and ACME)"
else
    missing "caddy is not installed (make docker-judges): Caddyfile not checked"
fi
