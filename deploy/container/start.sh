#!/bin/sh
# Starts a Meridian node in a container (compose, Kubernetes).
#
#   MERIDIAN_CONFIG     the node's settings (default /etc/meridian/node.toml)
#   MERIDIAN_DATA_DIR   its data-dir (default /var/lib/meridian); keep it on a volume
#   MERIDIAN_JOIN_FROM  admin URL of a running member, e.g. http://meridian-eu-west:9080;
#                       unset on the founding node
#   MERIDIAN_TOKEN      that member's admin.token, if it has one
#
# A node whose data directory already holds an identity (it founded or
# joined the cluster before) simply runs. A fresh node with
# MERIDIAN_JOIN_FROM asks that member for a one-time join token (retrying
# until the member answers) and joins; a fresh node without it founds a new
# one-node cluster. Arguments, when given, replace all this: the container
# then runs `meridian ARGS`.
set -eu

if [ "$#" -gt 0 ]; then
    exec meridian "$@"
fi

config="${MERIDIAN_CONFIG:-/etc/meridian/node.toml}"
data="${MERIDIAN_DATA_DIR:-/var/lib/meridian}"

if [ -d "$data/pki" ] || [ -z "${MERIDIAN_JOIN_FROM:-}" ]; then
    exec meridian node run --config "$config"
fi

tries=0
until token="$(meridian cluster token --ttl 10m --admin "$MERIDIAN_JOIN_FROM")" && [ -n "$token" ]; do
    tries=$((tries + 1))
    if [ "$tries" -ge "${MERIDIAN_JOIN_TRIES:-60}" ]; then
        echo "meridian-start: no join token from $MERIDIAN_JOIN_FROM after $tries tries" >&2
        exit 1
    fi
    echo "meridian-start: waiting for $MERIDIAN_JOIN_FROM to issue a join token" >&2
    sleep 2
done
exec meridian cluster join --config "$config" --token "$token"
