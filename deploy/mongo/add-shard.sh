#!/usr/bin/env bash
# Add a shard: initiate its replica set (once), then sh.addShard through mongos (once).
# Run on an app node (mongos on 127.0.0.1), or through an ssh tunnel to one with --uri.
# The members must be installed first (EC2: `deploy/ec2.py add-shard` launches them and their
# user-data installs mongod and initiates the set; elsewhere: install-mongod.sh on each).
set -euo pipefail
# shellcheck source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

usage() {
  cat <<USAGE
usage: add-shard.sh --shard NAME --member HOST:PORT... --admin-password-file FILE [options]

  --shard NAME               the shard's replica set name (shard03)
  --member HOST:PORT         a member (repeat; usually 3)
  --admin-password-file F    password of $ADMIN_USER
  --uri URI                  mongos (default mongodb://localhost:$MONGOS_PORT/)
  --ssh USER                 initiate the set on its first member over ssh (localhost
                             exception); without it the set must already be initiated
  --wait SECONDS             for the members and a primary (default $DEFAULT_WAIT_SECONDS)
$TLS_USAGE
  --dry-run                  print the commands instead of running them
  -h, --help                 this text
USAGE
}

main() {
  local shard="" admin_file="" uri="mongodb://localhost:$MONGOS_PORT/" ssh_user=""
  local wait=$DEFAULT_WAIT_SECONDS members=()
  while (($#)); do
    common_option "$1" && { shift; continue; }
    tls_option "$1" "${2-}" && { shift 2; continue; }
    case $1 in
      --shard) shard=$2 ;;
      --member) members+=("$2") ;;
      --admin-password-file) admin_file=$2 ;;
      --uri) uri=$2 ;;
      --ssh) ssh_user=$2 ;;
      --wait) wait=$2 ;;
      *) die "unknown option $1 (see --help)" ;;
    esac
    shift 2
  done
  check_name "$shard"
  [[ -n $admin_file ]] || die "--admin-password-file is required"
  ((${#members[@]})) || die "at least one --member is required"
  local member init=(--replset "$shard" --wait "$wait" --ca "$MONGO_CA" --cert "$MONGO_CLIENT_CERT")
  for member in "${members[@]}"; do
    check_member "$member"
    init+=(--member "$member")
  done
  if [[ -n $ssh_user ]]; then init+=(--ssh "$ssh_user"); else init+=(--direct); fi
  if dry; then init+=(--dry-run); fi
  "$DEPLOY_LIB_DIR/init-replset.sh" "${init[@]}"
  local js
  [[ $admin_file == /* ]] || admin_file=$PWD/$admin_file
  js="$(js_admin_login "$admin_file")"$'\n'"$(js_add_shard "$shard" "${members[@]}")"
  mongosh_eval "$uri" "$js"
}

main "$@"
