#!/usr/bin/env bash
# Initiate a replica set (config servers or a shard) once, then wait for its primary.
#
# rs.initiate runs on the first member through localhost: with keyfile authentication and no
# user yet, only the localhost exception allows it. So run this ON the first member (the
# EC2 user-data of member 1 does), or from elsewhere with --ssh USER. A set that is already
# initiated is left alone (--direct checks that over the network, without ssh).
set -euo pipefail
# shellcheck source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

usage() {
  cat <<USAGE
usage: init-replset.sh --replset NAME --member HOST:PORT... [options]

  --replset NAME       replica set name (cfg, shard01, ...)
  --member HOST:PORT   a member, in order (repeat; the first one is initiated)
  --configsvr          this is the config server replica set
  --ssh USER           run mongosh on the first member over ssh as USER (sudo)
  --direct             connect to the first member's address instead of localhost (only
                       succeeds when the set is already initiated)
  --wait SECONDS       how long to wait for members and a primary (default $DEFAULT_WAIT_SECONDS)
$TLS_USAGE
  --dry-run            print the commands instead of running them
  -h, --help           this text
USAGE
}

main() {
  local replset="" configsvr=false ssh_user="" wait=$DEFAULT_WAIT_SECONDS members=() direct=0
  while (($#)); do
    common_option "$1" && { shift; continue; }
    case $1 in
      --configsvr | --direct)
        if [[ $1 == --direct ]]; then direct=1; else configsvr=true; fi
        shift
        continue
        ;;
    esac
    tls_option "$1" "${2-}" && { shift 2; continue; }
    case $1 in
      --replset) replset=$2 ;;
      --member) members+=("$2") ;;
      --ssh) ssh_user=$2 ;;
      --wait) wait=$2 ;;
      *) die "unknown option $1 (see --help)" ;;
    esac
    shift 2
  done
  check_name "$replset"
  ((${#members[@]})) || die "at least one --member is required"
  local member
  for member in "${members[@]}"; do check_member "$member"; done
  [[ $wait =~ ^[0-9]+$ ]] || die "--wait takes seconds"
  local js first=${members[0]}
  js=$(js_rs_initiate "$replset" "$configsvr" "$wait" "${members[@]}")
  if [[ -n $ssh_user ]]; then
    mongosh_eval_over_ssh "$ssh_user@${first%:*}" "$(direct_uri "localhost:${first##*:}")" "$js"
  elif ((direct)); then
    mongosh_eval "$(direct_uri "$first")" "$js"
  else
    mongosh_eval "$(direct_uri "localhost:${first##*:}")" "$js"
  fi
}

direct_uri() {
  echo "mongodb://$1/?directConnection=true"
}

main "$@"
