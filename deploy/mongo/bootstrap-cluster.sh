#!/usr/bin/env bash
# Bring a freshly installed cluster to service, once its members run (safe to run again):
#   1. wait for mongos (and through it the config server replica set);
#   2. users: administrator (localhost exception), app, research, backup;
#   3. each initial shard: initiate its replica set if needed, sh.addShard;
#   4. `cloudpacs db init --sharded` as the administrator: collections, indexes, shard keys.
# Run on an app node as root (its mongos listens on 127.0.0.1), with the operator's secrets
# directory copied there for the duration (see deploy/README.md), or through an ssh tunnel.
set -euo pipefail
# shellcheck source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

usage() {
  cat <<USAGE
usage: bootstrap-cluster.sh --secrets DIR --shard NAME=HOST:PORT,HOST:PORT,HOST:PORT... [options]

  --secrets DIR        the operator's secrets (make-secrets.sh): *.password files
  --shard SPEC         an initial shard and its members (repeat)
  --uri URI            mongos (default mongodb://localhost:$MONGOS_PORT/)
  --database NAME      the archive database (default cloudpacs)
  --cloudpacs PATH     the cloudpacs command (default /opt/cloudpacs/.venv/bin/cloudpacs)
  --ssh USER           initiate shard replica sets over ssh (else they must be initiated)
  --wait SECONDS       for mongos, members and primaries (default $DEFAULT_WAIT_SECONDS)
$TLS_USAGE
  --dry-run            print the commands instead of running them
  -h, --help           this text
USAGE
}

main() {
  local secrets="" uri="mongodb://localhost:$MONGOS_PORT/" database=cloudpacs ssh_user=""
  local cloudpacs=/opt/cloudpacs/.venv/bin/cloudpacs wait=$DEFAULT_WAIT_SECONDS shards=()
  while (($#)); do
    common_option "$1" && { shift; continue; }
    tls_option "$1" "${2-}" && { shift 2; continue; }
    case $1 in
      --secrets) secrets=$2 ;;
      --shard) shards+=("$2") ;;
      --uri) uri=$2 ;;
      --database) database=$2 ;;
      --cloudpacs) cloudpacs=$2 ;;
      --ssh) ssh_user=$2 ;;
      --wait) wait=$2 ;;
      *) die "unknown option $1 (see --help)" ;;
    esac
    shift 2
  done
  [[ -n $secrets ]] || die "--secrets DIR is required"
  [[ $secrets == /* ]] || secrets=$PWD/$secrets
  ((${#shards[@]})) || die "at least one --shard is required"
  check_name "$database"
  local tls=(--ca "$MONGO_CA" --cert "$MONGO_CLIENT_CERT") dry_arg=()
  if dry; then dry_arg=(--dry-run); fi

  say "1/4 waiting for mongos at $uri"
  mongosh_eval "$uri" "$(js_wait_mongos "$wait")"

  say "2/4 users"
  "$DEPLOY_LIB_DIR/create-users.sh" --uri "$uri" --database "$database" "${tls[@]}" \
    --admin-password-file "$secrets/admin.password" \
    --app-password-file "$secrets/app.password" \
    --research-password-file "$secrets/research.password" \
    --backup-password-file "$secrets/backup.password" "${dry_arg[@]}"

  say "3/4 shards"
  local spec
  for spec in "${shards[@]}"; do
    add_shard "$spec" "$uri" "$secrets" "$ssh_user" "$wait" "${tls[@]}" "${dry_arg[@]}"
  done

  say "4/4 cloudpacs db init --sharded (as $ADMIN_USER)"
  # The URI is assembled inside the child shell so that the password stays out of argv.
  # shellcheck disable=SC2016  # expanded by that child shell
  run env CLOUDPACS_DATABASE="$database" bash -c \
    'CLOUDPACS_MONGO_URI="mongodb://$0:$(cat "$1")@$2/?authSource=admin&tls=true&tlsCAFile=$3" exec "$4" db init --sharded' \
    "$ADMIN_USER" "$secrets/admin.password" "$(uri_hosts "$uri")" "$MONGO_CA" "$cloudpacs"
}

# add_shard NAME=MEMBERS URI SECRETS SSH_USER WAIT TLS_AND_DRY_ARGS...
add_shard() {
  local spec=$1 uri=$2 secrets=$3 ssh_user=$4 wait=$5
  shift 5
  local name=${spec%%=*} member args members
  [[ $spec == *=* ]] || die "--shard must be NAME=HOST:PORT,HOST:PORT,..."
  args=(--shard "$name" --uri "$uri" --wait "$wait" --admin-password-file "$secrets/admin.password")
  IFS=, read -r -a members <<<"${spec#*=}"
  for member in "${members[@]}"; do args+=(--member "$member"); done
  if [[ -n $ssh_user ]]; then args+=(--ssh "$ssh_user"); fi
  "$DEPLOY_LIB_DIR/add-shard.sh" "${args[@]}" "$@"
}

# mongodb://h:p/?x -> h:p
uri_hosts() {
  local rest=${1#mongodb://}
  echo "${rest%%/*}"
}

main "$@"
