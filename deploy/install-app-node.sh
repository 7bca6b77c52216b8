#!/usr/bin/env bash
# Install (or update) cloudpacs on this app node, as root: the cloudpacs user and folders, the
# package in /opt/cloudpacs/.venv, /etc/cloudpacs/cloudpacs.env (mode 0600 root:root: it holds
# the database password, and systemd reads it as root before starting the service as
# cloudpacs), the client address policy (trusted_proxies, allowed_networks), the mongos
# router (mongo/install-mongos.sh) and the systemd units cloudpacs@serve and cloudpacs@ingest
# (systemd/cloudpacs@.service). Safe to run again: the services restart only when something
# they read changed.
set -euo pipefail
# shellcheck source=mongo/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/mongo/lib.sh"

readonly PREFIX=/opt/cloudpacs
readonly ENV_FILE=/etc/cloudpacs/cloudpacs.env
readonly INBOX=/srv/cloudpacs/inbox
readonly APP_CA=/etc/cloudpacs/tls/ca.pem
readonly UNIT_DIR=/etc/systemd/system
# Seconds the services drain in-flight work on stop (below the unit's TimeoutStopSec=45s).
readonly DRAIN_SECONDS=30
# The private address ranges (RFC 1918): where the HAProxy nodes are, in the VPC or on a
# private network. The app security group lets only the balancer reach the API port.
readonly PRIVATE_NETWORKS=(10.0.0.0/8 172.16.0.0/12 192.168.0.0/16)
# Always allowed: the node itself (curl on the node, the local CLI).
readonly LOOPBACK_NETWORKS=(127.0.0.0/8 ::1/128)

usage() {
  cat <<'USAGE'
usage: install-app-node.sh --secrets DIR --configdb RS/HOST:PORT,... [options]

  --secrets DIR        keyfile, ca.pem, mongos.pem and app.password (make-secrets.sh)
  --configdb SPEC      the config server replica set, for mongos
  --source DIR         cloudpacs tree to install (default: the one holding this script)
  --database NAME      archive database (default cloudpacs)
  --http-port PORT     DICOMweb port, reached by the balancer only (default 8080)
  --sqs-queue URL      S3 notification queue for `cloudpacs ingest` (repeat)
  --aws-region REGION  region of the queues
  --trusted-proxy CIDR an HAProxy node, whose X-Forwarded-For is believed (repeat;
                       default: the private ranges 10.0.0.0/8, 172.16.0.0/12, 192.168.0.0/16)
  --allowed-network CIDR  clients that may use the API, by their address as HAProxy saw it
                       (repeat; default: the private ranges). The trusted proxies (HAProxy's
                       /readyz checks) and loopback are always allowed.
  --dry-run            print the commands instead of running them
  -h, --help           this text
USAGE
}

main() {
  local secrets="" configdb="" database=cloudpacs port=8080 region="" queues=()
  local proxies=() networks=()
  local source_dir
  source_dir=$(cd "$DEPLOY_LIB_DIR/../.." && pwd)
  while (($#)); do
    common_option "$1" && { shift; continue; }
    case $1 in
      --secrets) secrets=$2 ;;
      --configdb) configdb=$2 ;;
      --source) source_dir=$2 ;;
      --database) database=$2 ;;
      --http-port) port=$2 ;;
      --sqs-queue) queues+=("$2") ;;
      --aws-region) region=$2 ;;
      --trusted-proxy) proxies+=("$(checked_cidr "$2")") ;;
      --allowed-network) networks+=("$(checked_cidr "$2")") ;;
      *) die "unknown option $1 (see --help)" ;;
    esac
    shift 2
  done
  [[ -n $secrets && -n $configdb ]] || die "--secrets and --configdb are required"
  check_name "$database"
  [[ $port =~ ^[0-9]+$ ]] || die "--http-port takes a number"
  ((${#proxies[@]})) || proxies=("${PRIVATE_NETWORKS[@]}")
  ((${#networks[@]})) || networks=("${PRIVATE_NETWORKS[@]}")
  mapfile -t networks < <(unique "${networks[@]}" "${proxies[@]}" "${LOOPBACK_NETWORKS[@]}")
  apt_install python3 python3-venv
  install_package "$source_dir"
  local changed=0
  install_copy "$secrets/ca.pem" "$APP_CA" 0644 root:root
  changed=$((changed | FILE_CHANGED))
  app_env "$(app_password "$secrets/app.password")" "$database" "$port" "$region" \
    "$(joined "${proxies[@]}")" "$(joined "${networks[@]}")" "${queues[@]}" |
    write_file "$ENV_FILE" 0600 root:root
  changed=$((changed | FILE_CHANGED))
  local mongos=(--configdb "$configdb" --secrets "$secrets")
  if dry; then mongos+=(--dry-run); fi
  "$DEPLOY_LIB_DIR/install-mongos.sh" "${mongos[@]}"
  install_units "$PREFIX/systemd/cloudpacs@.service"
  changed=$((changed | FILE_CHANGED))
  local action=start
  if ((changed)); then action=restart; fi
  run systemctl enable cloudpacs@serve cloudpacs@ingest
  run systemctl "$action" cloudpacs@serve cloudpacs@ingest
}

install_package() {
  local source_dir=$1
  run bash -c "getent passwd cloudpacs >/dev/null || useradd --system --user-group --home-dir /var/lib/cloudpacs --shell /usr/sbin/nologin cloudpacs"
  run install -d -m 0755 -o root -g root "$PREFIX"
  if [[ $source_dir != "$PREFIX" ]]; then
    run bash -c "tar -C $(quote_args "$source_dir") --exclude=./.venv --exclude=./var --exclude=./.git --exclude=./.tools -cf - . | tar -C $PREFIX -xf -"
  fi
  if dry || [[ ! -x $PREFIX/.venv/bin/python ]]; then
    run python3 -m venv "$PREFIX/.venv"
  fi
  run "$PREFIX/.venv/bin/pip" install --quiet --upgrade "$PREFIX"
  run install -d -m 0750 -o cloudpacs -g cloudpacs "$INBOX"
  run install -d -m 0750 -o root -g cloudpacs /etc/cloudpacs /etc/cloudpacs/tls
}

# The password goes into a mongodb:// URI unencoded: refuse characters that would need
# percent-encoding (make-secrets.sh makes hex passwords).
app_password() {
  if dry; then
    echo '***'
    return
  fi
  local password
  password=$(<"$1")
  [[ $password =~ ^[A-Za-z0-9._~-]+$ ]] || die "$1: use letters, digits and ._~- only"
  echo "$password"
}

# An address or CIDR block (IPv4 or IPv6); cloudpacs checks it again when it starts.
checked_cidr() {
  [[ $1 =~ ^[0-9A-Fa-f:.]+(/[0-9]{1,3})?$ && $1 =~ [.:] ]] || die "'$1' is not an address or CIDR"
  echo "$1"
}

# unique ITEM... -> each item once, in order, one per line
unique() {
  local seen=" " item
  for item; do
    [[ $seen == *" $item "* ]] && continue
    seen+="$item "
    echo "$item"
  done
}

joined() {
  local IFS=,
  echo "$*"
}

# app_env PASSWORD DATABASE PORT REGION PROXIES NETWORKS QUEUE... -> the environment file
app_env() {
  local password=$1 database=$2 port=$3 region=$4 proxy_list=$5 network_list=$6
  shift 6
  local IFS=,
  cat <<ENV
# $ENV_FILE (generated by deploy/install-app-node.sh), mode 0600 root:root
CLOUDPACS_MONGO_URI=mongodb://$APP_USER:$password@127.0.0.1:$MONGOS_PORT/$database?authSource=admin&tls=true&tlsCAFile=$APP_CA
CLOUDPACS_DATABASE=$database
CLOUDPACS_HTTP_HOST=0.0.0.0
CLOUDPACS_HTTP_PORT=$port
CLOUDPACS_TRUSTED_PROXIES=$proxy_list
CLOUDPACS_ALLOWED_NETWORKS=$network_list
CLOUDPACS_WATCH=$INBOX
CLOUDPACS_DRAIN_SECONDS=$DRAIN_SECONDS
CLOUDPACS_LOG_LEVEL=INFO
ENV
  if (($#)); then echo "CLOUDPACS_SQS_QUEUES=$*"; fi
  if [[ -n $region ]]; then echo "CLOUDPACS_AWS_REGION=$region"; fi
}

install_units() {
  local unit=$1 changed
  install_copy "$unit" "$UNIT_DIR/cloudpacs@.service" 0644 root:root
  changed=$FILE_CHANGED
  run install -d -m 0755 "$UNIT_DIR/cloudpacs@.service.d"
  write_file "$UNIT_DIR/cloudpacs@.service.d/mongos.conf" 0644 root:root <<'DROPIN'
# generated by deploy/install-app-node.sh: the local mongos first; retry forever (the
# database users appear only when deploy/mongo/bootstrap-cluster.sh has run)
[Unit]
After=mongos.service
Wants=mongos.service
StartLimitIntervalSec=0

[Service]
RestartSec=5s
DROPIN
  changed=$((changed | FILE_CHANGED))
  if ((changed)); then run systemctl daemon-reload; fi
  FILE_CHANGED=$changed
}

main "$@"
