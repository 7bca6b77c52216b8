#!/usr/bin/env bash
# Install and (re)start a mongod on this database node (run as root): the MongoDB apt
# repository and server, an XFS data volume, the keyfile and TLS files, production tuning,
# /etc/mongod.conf from the template. Safe to run again: it only restarts mongod when its
# configuration or secrets changed.
set -euo pipefail
# shellcheck source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

usage() {
  cat <<'USAGE'
usage: install-mongod.sh --role config|shard --replset NAME --secrets DIR [options]

  --role ROLE          config (config server replica set) or shard
  --replset NAME       replica set name, e.g. cfg or shard01
  --secrets DIR        holds keyfile, ca.pem and member.pem (see make-secrets.sh)
  --bind-ip IPS        listen addresses (default: 127.0.0.1 and this host's first address)
  --data-device DEV    format (XFS, only if it has no filesystem) and mount it on
                       /var/lib/mongodb
  --dry-run            print the commands instead of running them
  -h, --help           this text
USAGE
}

main() {
  local role="" replset="" secrets="" bind_ip="" device=""
  while (($#)); do
    common_option "$1" && { shift; continue; }
    case $1 in
      --role) role=$2 ;;
      --replset) replset=$2 ;;
      --secrets) secrets=$2 ;;
      --bind-ip) bind_ip=$2 ;;
      --data-device) device=$2 ;;
      *) die "unknown option $1 (see --help)" ;;
    esac
    shift 2
  done
  [[ $role == config || $role == shard ]] || die "--role must be config or shard"
  check_name "$replset"
  [[ -n $secrets ]] || die "--secrets DIR is required"
  if [[ -z $bind_ip ]]; then
    bind_ip="127.0.0.1,$(hostname -I | awk '{print $1}')"
  fi
  ensure_mongodb_repo
  apt_install mongodb-org xfsprogs
  if [[ -n $device ]]; then
    mount_data_volume "$device"
  fi
  install_tuning
  install_mongo_secrets "$secrets" member.pem
  local changed=$FILE_CHANGED config
  config=$("$DEPLOY_LIB_DIR/render-config.sh" --role "$role" --replset "$replset" --bind-ip "$bind_ip")
  write_file /etc/mongod.conf 0644 root:root <<<"$config"
  changed=$((changed | FILE_CHANGED))
  run systemctl enable mongod
  if ((changed)); then
    run systemctl restart mongod
  else
    run systemctl start mongod
  fi
}

mount_data_volume() {
  local device=$1
  if dry || [[ -z $(blkid -o value -s TYPE "$device" || true) ]]; then
    run mkfs.xfs -q -L mongodata "$device"
  fi
  if dry || ! grep -q 'LABEL=mongodata' /etc/fstab; then
    run bash -c "echo 'LABEL=mongodata /var/lib/mongodb xfs defaults,noatime,nofail 0 2' >>/etc/fstab"
  fi
  run install -d -m 0750 -o mongodb -g mongodb /var/lib/mongodb
  if dry || ! mountpoint -q /var/lib/mongodb; then
    run mount /var/lib/mongodb
  fi
  run chown mongodb:mongodb /var/lib/mongodb
}

install_tuning() {
  render_template "$MONGO_TEMPLATES/thp-tmpfiles.conf.in" |
    write_file /etc/tmpfiles.d/mongodb-thp.conf 0644 root:root
  if [[ $FILE_CHANGED == 1 ]]; then run systemd-tmpfiles --create /etc/tmpfiles.d/mongodb-thp.conf; fi
  render_template "$MONGO_TEMPLATES/sysctl.conf.in" |
    write_file /etc/sysctl.d/90-mongodb.conf 0644 root:root
  if [[ $FILE_CHANGED == 1 ]]; then run sysctl --quiet --load /etc/sysctl.d/90-mongodb.conf; fi
}

main "$@"
