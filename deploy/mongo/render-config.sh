#!/usr/bin/env bash
# Render the YAML configuration of a mongod (config server or shard member) or a mongos from
# deploy/mongo/templates/, to stdout or to a file (--out).
set -euo pipefail
# shellcheck source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

usage() {
  cat <<'USAGE'
usage: render-config.sh --role config|shard|mongos [options]

  --role ROLE          config (config server member), shard (shard member) or mongos
  --replset NAME       replica set name (config, shard)
  --configdb RS/H:P,.. config server replica set (mongos)
  --bind-ip IPS        addresses to listen on (default: 127.0.0.1; mongos stays on loopback)
  --port PORT          default: 27019 config, 27018 shard, 27017 mongos
  --tls-dir DIR        holds ca.pem and node.pem (default /etc/mongodb/tls)
  --keyfile PATH       internal authentication keyfile (default /etc/mongodb/keyfile)
  --out FILE           write there instead of stdout
  --dry-run            print what would be written
  -h, --help           this text
USAGE
}

main() {
  local role="" replset="" configdb="" bind_ip=127.0.0.1 port="" out=""
  local tls_dir=$MONGO_TLS_DIR keyfile=$MONGO_KEYFILE
  while (($#)); do
    common_option "$1" && { shift; continue; }
    case $1 in
      --role) role=$2 ;;
      --replset) replset=$2 ;;
      --configdb) configdb=$2 ;;
      --bind-ip) bind_ip=$2 ;;
      --port) port=$2 ;;
      --tls-dir) tls_dir=$2 ;;
      --keyfile) keyfile=$2 ;;
      --out) out=$2 ;;
      *) die "unknown option $1 (see --help)" ;;
    esac
    shift 2
  done
  local text
  text=$(render "$role" "$replset" "$configdb" "$bind_ip" "$port" "$tls_dir" "$keyfile")
  if [[ -z $out ]]; then
    printf '%s\n' "$text"
  else
    write_file "$out" 0644 root:root <<<"$text"
  fi
}

# render ROLE REPLSET CONFIGDB BIND_IP PORT TLS_DIR KEYFILE -> YAML on stdout
render() {
  local role=$1 replset=$2 configdb=$3 bind_ip=$4 port=$5 tls_dir=$6 keyfile=$7
  local common=("BIND_IP=$bind_ip" "TLS_DIR=$tls_dir" "KEYFILE=$keyfile")
  case $role in
    config | shard)
      check_name "$replset"
      local cluster_role=shardsvr default_port=$SHARD_PORT
      if [[ $role == config ]]; then cluster_role=configsvr default_port=$CONFIG_PORT; fi
      render_template "$MONGO_TEMPLATES/mongod.conf.in" "${common[@]}" "ROLE=$role" \
        "REPLSET=$replset" "CLUSTER_ROLE=$cluster_role" "PORT=${port:-$default_port}"
      ;;
    mongos)
      [[ $configdb =~ ^[A-Za-z0-9_-]+/[A-Za-z0-9.:,-]+$ ]] || die "--configdb must be RS/host:port,..."
      render_template "$MONGO_TEMPLATES/mongos.conf.in" "${common[@]}" \
        "CONFIG_DB=$configdb" "PORT=${port:-$MONGOS_PORT}"
      ;;
    *) die "--role must be config, shard or mongos" ;;
  esac
}

main "$@"
