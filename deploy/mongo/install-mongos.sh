#!/usr/bin/env bash
# Install and (re)start the mongos router of an app node (run as root): MongoDB's mongos and
# mongosh packages, the keyfile and TLS files, /etc/mongos.conf (127.0.0.1 only, pointing at
# the config server replica set) and a systemd unit. Safe to run again.
set -euo pipefail
# shellcheck source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

usage() {
  cat <<'USAGE'
usage: install-mongos.sh --configdb RS/HOST:PORT,... --secrets DIR [options]

  --configdb SPEC   the config server replica set, e.g.
                    cfg/cfg-1.pacs.cloudpacs.internal:27019,cfg-2...:27019,cfg-3...:27019
  --secrets DIR     holds keyfile, ca.pem and mongos.pem (see make-secrets.sh)
  --dry-run         print the commands instead of running them
  -h, --help        this text
USAGE
}

main() {
  local configdb="" secrets=""
  while (($#)); do
    common_option "$1" && { shift; continue; }
    case $1 in
      --configdb) configdb=$2 ;;
      --secrets) secrets=$2 ;;
      *) die "unknown option $1 (see --help)" ;;
    esac
    shift 2
  done
  [[ -n $configdb ]] || die "--configdb is required"
  [[ -n $secrets ]] || die "--secrets DIR is required"
  ensure_mongodb_repo
  apt_install mongodb-org-mongos mongodb-mongosh
  install_mongo_secrets "$secrets" mongos.pem
  local changed=$FILE_CHANGED config
  run install -d -m 0750 -o mongodb -g mongodb /var/log/mongodb
  config=$("$DEPLOY_LIB_DIR/render-config.sh" --role mongos --configdb "$configdb")
  write_file /etc/mongos.conf 0644 root:root <<<"$config"
  changed=$((changed | FILE_CHANGED))
  render_template "$MONGO_TEMPLATES/mongos.service.in" CONFIG_FILE=/etc/mongos.conf |
    write_file /etc/systemd/system/mongos.service 0644 root:root
  if [[ $FILE_CHANGED == 1 ]]; then
    run systemctl daemon-reload
    changed=1
  fi
  run systemctl enable mongos
  if ((changed)); then
    run systemctl restart mongos
  else
    run systemctl start mongos
  fi
}

main "$@"
