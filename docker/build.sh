#!/usr/bin/env bash
# Builds both images, sweeplb (the balancer) and sweeplb-webapp, on an engine with no registry
# and no images: a fully static binary from cargo, then `docker build` of FROM scratch targets
# with a context holding only that binary and the balancer's default config.
#
#   docker/build.sh                 # tags sweeplb:latest and sweeplb-webapp:latest
#   SWEEPLB_TAG=dev docker/build.sh # tags sweeplb:dev and sweeplb-webapp:dev
#
# The release profile uses fat LTO, so a cold build takes minutes; a warm one is seconds.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
tag=${SWEEPLB_TAG:-latest}
triple=x86_64-unknown-linux-gnu
target_dir=${CARGO_TARGET_DIR:-$repo/target}

# An explicit --target keeps the static build in target/$triple, apart from the host builds in
# target/debug and target/release, and stops crt-static from applying to build scripts.
echo "build.sh: cargo build (static, $triple)" >&2
RUSTFLAGS="-C target-feature=+crt-static" \
    cargo build --manifest-path "$repo/Cargo.toml" --release --locked --target "$triple" --bin sweeplb
bin=$target_dir/$triple/release/sweeplb

# A scratch image has no loader: refuse a binary that would need one.
if LC_ALL=C readelf --program-headers "$bin" 2>/dev/null | grep -q 'INTERP'; then
    echo "build.sh: $bin is dynamically linked (has a program interpreter); expected static" >&2
    exit 1
fi

context=$(mktemp -d)
trap 'rm -rf "$context"' EXIT
# Line tables are for local debugging; the image keeps the symbols (so backtraces still name
# functions) and drops the DWARF, about 20 MB to 5.5 MB.
if command -v strip >/dev/null; then
    strip --strip-debug -o "$context/sweeplb" "$bin"
else
    cp "$bin" "$context/sweeplb"
fi
cp "$repo/docker/Dockerfile" "$repo/docker/config.yaml" "$context/"

version=$(sed -n 's/^version = "\(.*\)"/\1/p' "$repo/Cargo.toml" | head -n1)
revision=$(git -C "$repo" rev-parse HEAD 2>/dev/null || echo unknown)
# The commit's time, not the clock's: an unchanged tree then rebuilds entirely from the cache
# instead of leaving the previous images behind, dangling, for a label that moved.
created=$(TZ=UTC0 git -C "$repo" log -1 --format=%cd --date=format-local:%Y-%m-%dT%H:%M:%SZ 2>/dev/null || echo unknown)
for target in balancer webapp; do
    case $target in
        balancer) image=sweeplb:$tag ;;
        webapp) image=sweeplb-webapp:$tag ;;
    esac
    echo "build.sh: docker build --target $target -t $image" >&2
    # The legacy builder (no buildx here) is fine: scratch needs nothing pulled.
    DOCKER_BUILDKIT=${DOCKER_BUILDKIT:-0} docker build --quiet \
        --target "$target" --tag "$image" \
        --build-arg VERSION="$version" --build-arg REVISION="$revision" --build-arg CREATED="$created" \
        "$context" >/dev/null
done
# The identity secret the compose lab and the swarm stack share between the balancer and the
# webapps: made once, at random, and kept. 0644 because compose bind-mounts it and the
# containers run as nobody; it is only as private as this directory.
secret=$repo/docker/identity.secret
if [ -z "${SWEEPLB_IDENTITY_SECRET_FILE:-}" ] && [ ! -s "$secret" ]; then
    echo "build.sh: making $secret (a random identity secret for the lab)" >&2
    (umask 022 && od -An -N32 -tx1 /dev/urandom | tr -d ' \n' >"$secret" && echo >>"$secret")
fi

docker images --filter reference="sweeplb:$tag" --filter reference="sweeplb-webapp:$tag"
