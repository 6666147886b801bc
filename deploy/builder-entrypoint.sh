#!/bin/sh
# The builder's container command on Kubernetes (deploy/kubernetes/builder.yaml) and in
# compose.yaml: what scripts/install.sh and scripts/isolation.sh do for the builder on a host,
# done in its pod or container, then the builder itself (or the command given as arguments:
# compose.yaml's deploy/replicas.sh, which runs several). Runs as the container's root, in a privileged container; builds run
# as the unprivileged bindery-build (rootless podman) as on a host.
#
# In: the pod's BINDERY_* settings (BINDERY_REGISTRY, BINDERY_PYTHON_VERSIONS, ...), the build
# disk mounted at the build user's home. Out: the builder, with
#   1. a cgroup tree it may divide: on cgroup v2 a cgroup holding processes cannot hand its
#      controllers down (the "no internal processes" rule), and the container's own cgroup is
#      the root of its cgroup namespace, where bindery.builder.cgroups makes each build's group
#      and bindery.builder.sandbox the registry group. So this shell moves into a leaf first,
#      as docker-in-docker's entrypoint does;
#   2. the build disk owned by the build user (its image store, layer cache, build contexts);
#   3. scripts/isolation.sh's rules in the pod's network namespace: build steps (the build
#      user's processes) reach the public internet, DNS and the configured mirrors only; never
#      the broker, the registry (but for pushes and pulls from the registry group), the
#      services or the cluster's private addresses. A NetworkPolicy cannot say this: it sees
#      the pod, in which the builder itself must reach the broker and the registry;
#   4. the base images in the build disk's image store (scripts/base-image.sh; only on the
#      first start on a disk does it build, which takes minutes: the startup probe allows it).
#      A fresh disk gets them copied from a disk of prebuilt ones if one is mounted at
#      /var/lib/bindery-build-base (compose.yaml's, made by scripts/compose-images.sh with this
#      script): seconds instead of minutes.
set -eu
cd "$(dirname "$0")/.."

if [ "$(stat -fc %T /sys/fs/cgroup)" = cgroup2fs ]; then
    mkdir -p /sys/fs/cgroup/builder
    echo $$ > /sys/fs/cgroup/builder/cgroup.procs
fi
build_user="${BINDERY_BUILD_USER:-bindery-build}"
build_home="$(getent passwd "$build_user" | cut -d: -f6)"
chown "$build_user:$build_user" "$build_home"
# Rootless runc remounts a build's bind mounts and cannot drop flags the mount under them is
# locked with: podman's named volumes (compose.yaml's build disk) come nodev,nosuid.
if mountpoint -q "$build_home"; then
    mount -o remount,bind,dev,suid,exec "$build_home"
fi
# A cgroup v1 host's podman container sees the v1 hierarchies only; the registry group
# (scripts/isolation.sh, bindery.builder.sandbox) lives in the v2 one a hybrid host also has.
if [ "$(stat -fc %T /sys/fs/cgroup)" = tmpfs ] && [ ! -e /sys/fs/cgroup/unified ] \
    && grep -q cgroup2 /proc/filesystems; then
    mkdir /sys/fs/cgroup/unified
    mount -t cgroup2 none /sys/fs/cgroup/unified
fi
scripts/isolation.sh up
prebuilt=/var/lib/bindery-build-base
if [ -e "$prebuilt/.local/share/containers/storage" ] \
    && [ ! -e "$build_home/.local/share/containers/storage" ]; then
    cp -a "$prebuilt/." "$build_home/"
fi
scripts/base-image.sh >/dev/null
if [ "$#" -eq 0 ]; then
    set -- python -m bindery.builder
fi
exec "$@"
