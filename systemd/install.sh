#!/usr/bin/env bash
# Install TopicGeo Edge as the systemd service topicgeo-edge.service (run as root from a checkout of the repository).
#
#   sudo systemd/install.sh [options]
#
# Options:
#   --prefix DIR              install prefix; the venv goes to DIR/venv (default /opt/topicgeo-edge)
#   --python PY               interpreter for the venv (default python3; >= 3.10)
#   --extras LIST             pip extras to install, e.g. trt (default: none)
#   --system-site-packages    let the venv see system packages (JetPack's TensorRT / OpenCV with GStreamer)
#   --exec PATH               use this edge-runtime executable instead of building a venv
#   --root DIR                install into DIR instead of / (staging, packaging, tests); implies --no-systemctl
#   --no-user                 do not create the 'topicgeo' system user
#   --no-systemctl            do not run systemctl (daemon-reload / enable / start)
#   --enable                  systemctl enable the unit
#   --start                   systemctl enable --now the unit
#
# Idempotent: an existing /etc/topicgeo-edge/vehicle.yaml or edge.env is never overwritten (the shipped examples are
# written next to them as *.example); the unit file is always replaced. The installed unit is checked with
# `systemd-analyze verify`, whose warnings (stderr) fail the installation.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PREFIX=/opt/topicgeo-edge
PYTHON=python3
EXTRAS=""
SYSTEM_SITE=0
EXEC=""
ROOT=""
MAKE_USER=1
SYSTEMCTL=1
ENABLE=0
START=0
SERVICE_USER=topicgeo

die() { echo "install.sh: $*" >&2; exit 1; }

while [[ $# -gt 0 ]]; do
    case "$1" in
        --prefix) PREFIX="${2:?--prefix needs a value}"; shift 2 ;;
        --python) PYTHON="${2:?--python needs a value}"; shift 2 ;;
        --extras) EXTRAS="${2:?--extras needs a value}"; shift 2 ;;
        --system-site-packages) SYSTEM_SITE=1; shift ;;
        --exec) EXEC="${2:?--exec needs a value}"; shift 2 ;;
        --root) ROOT="${2:?--root needs a value}"; SYSTEMCTL=0; shift 2 ;;
        --no-user) MAKE_USER=0; shift ;;
        --no-systemctl) SYSTEMCTL=0; shift ;;
        --enable) ENABLE=1; shift ;;
        --start) ENABLE=1; START=1; shift ;;
        -h|--help) sed -n '2,21p' "$0"; exit 0 ;;
        *) die "unknown option $1 (see --help)" ;;
    esac
done

[[ "$PREFIX" = /* ]] || die "--prefix must be absolute, got $PREFIX"
if [[ -z "$ROOT" && "$(id -u)" -ne 0 ]]; then
    die "run as root (or stage with --root DIR)"
fi
ROOT="${ROOT%/}"
ETC="$ROOT/etc/topicgeo-edge"
UNIT_DIR="$ROOT/etc/systemd/system"
UNIT="$UNIT_DIR/topicgeo-edge.service"

# 1. the service user (no login, no home; systemd creates the state/cache directories for it)
if [[ $MAKE_USER -eq 1 ]]; then
    if ! getent passwd "$SERVICE_USER" >/dev/null; then
        useradd --system --user-group --no-create-home --home-dir /var/lib/topicgeo-edge \
            --shell /usr/sbin/nologin --comment "TopicGeo Edge service" "$SERVICE_USER"
        echo "created system user $SERVICE_USER"
    fi
fi

# 2. the program
if [[ -n "$EXEC" ]]; then
    [[ -x "$EXEC" || -x "$ROOT$EXEC" ]] || die "--exec $EXEC is not an executable"
    EXEC_PATH="$EXEC"
else
    VENV="$PREFIX/venv"
    if [[ ! -x "$ROOT$VENV/bin/python" ]]; then
        venv_args=()
        [[ $SYSTEM_SITE -eq 1 ]] && venv_args+=(--system-site-packages)
        "$PYTHON" -m venv "${venv_args[@]}" "$ROOT$VENV"
    fi
    spec="$REPO"
    [[ -n "$EXTRAS" ]] && spec="$REPO[$EXTRAS]"
    "$ROOT$VENV/bin/python" -m pip install --upgrade "$spec"
    EXEC_PATH="$VENV/bin/edge-runtime"
fi

# 3. config and environment file (never overwritten)
install -d -m 0750 "$ETC"
install_config() {  # src dest
    local src="$1" dest="$2"
    if [[ -e "$dest" ]]; then
        install -m 0640 "$src" "$dest.example"
        echo "kept existing $dest (new example: $dest.example)"
    else
        install -m 0640 "$src" "$dest"
        echo "installed $dest"
    fi
}
install_config "$REPO/configs/vehicle.yaml" "$ETC/vehicle.yaml"
install_config "$REPO/systemd/edge.env.example" "$ETC/edge.env"
if getent group "$SERVICE_USER" >/dev/null && [[ -z "$ROOT" ]]; then
    chgrp "$SERVICE_USER" "$ETC" "$ETC/vehicle.yaml" "$ETC/edge.env"
fi

# 4. the unit: ExecStart points at the installed program; supplementary groups that do not exist on this system are
#    dropped (systemd refuses to start a unit whose SupplementaryGroups= name a missing group).
groups=()
for g in video render; do
    if getent group "$g" >/dev/null; then groups+=("$g"); else echo "note: group $g does not exist; not added"; fi
done
install -d -m 0755 "$UNIT_DIR"
tmp="$(mktemp "$UNIT_DIR/.topicgeo-edge.service.XXXXXX")"
trap 'rm -f "$tmp"' EXIT
sed -e "s#^ExecStart=[^ ]*edge-runtime #ExecStart=$EXEC_PATH #" \
    -e "s#^SupplementaryGroups=.*#SupplementaryGroups=${groups[*]:-}#" \
    "$REPO/systemd/topicgeo-edge.service" > "$tmp"
if [[ ${#groups[@]} -eq 0 ]]; then
    sed -i '/^SupplementaryGroups=$/d' "$tmp"
fi
chmod 0644 "$tmp"
mv -f "$tmp" "$UNIT"
trap - EXIT
echo "installed $UNIT (ExecStart=$EXEC_PATH)"

# 5. verify the unit (warnings go to stderr and exit status stays 0, so stderr must be empty)
if command -v systemd-analyze >/dev/null; then
    check="$UNIT"
    if [[ -n "$ROOT" ]]; then  # verify a copy whose ExecStart resolves on this machine
        check="$(mktemp -d)/topicgeo-edge.service"
        exe="$EXEC_PATH"; [[ -x "$exe" ]] || exe="$ROOT$EXEC_PATH"
        sed "s#^ExecStart=[^ ]*#ExecStart=$exe#" "$UNIT" > "$check"
    fi
    if ! err="$(systemd-analyze verify "$check" 2>&1 >/dev/null)" || [[ -n "$err" ]]; then
        die "systemd-analyze verify $UNIT: ${err:-failed}"
    fi
    echo "systemd-analyze verify: OK"
else
    echo "note: systemd-analyze not found; unit not verified"
fi

# 6. systemd
if [[ $SYSTEMCTL -eq 1 ]]; then
    systemctl daemon-reload
    if [[ $START -eq 1 ]]; then
        systemctl enable --now topicgeo-edge.service
    elif [[ $ENABLE -eq 1 ]]; then
        systemctl enable topicgeo-edge.service
    fi
fi

cat <<EOF
done. Next:
  1. edit $ETC/vehicle.yaml and $ETC/edge.env (secrets)
  2. put the bundle in /var/lib/topicgeo-edge/bundle and the map cache in /var/cache/topicgeo-edge/maps
     (owned by $SERVICE_USER), check with: $EXEC_PATH --config /etc/topicgeo-edge/vehicle.yaml --check
  3. systemctl enable --now topicgeo-edge && journalctl -u topicgeo-edge -f
EOF
