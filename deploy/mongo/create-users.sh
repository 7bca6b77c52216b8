#!/usr/bin/env bash
# Create (or converge) the MongoDB users of cloudpacs through mongos, least privilege:
#   cloudpacs_admin     root                        operators only, never on app nodes' disks
#   cloudpacs_app       role cloudpacsApp: its collections; audit find+insert only
#   cloudpacs_research  read on the archive         research queries, read-only
#   cloudpacs_backup    backup                      mongodump jobs (restores: the admin)
# The administrator is created through the localhost exception when no user exists yet (run
# this on an app node, or through an ssh tunnel to its mongos). Existing users get exactly
# these roles again; their passwords change only with --update-passwords (rotation).
set -euo pipefail
# shellcheck source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

usage() {
  cat <<USAGE
usage: create-users.sh --admin-password-file FILE [options]

  --uri URI                    mongos (default mongodb://localhost:$MONGOS_PORT/)
  --database NAME              the archive database (default cloudpacs)
  --admin-password-file F      password of $ADMIN_USER (created if no user exists)
  --app-password-file F        create/converge $APP_USER
  --research-password-file F   create/converge $RESEARCH_USER
  --backup-password-file F     create/converge $BACKUP_USER
  --update-passwords           also set the given users' passwords from their files
$TLS_USAGE
  --dry-run                    print the commands instead of running them
  -h, --help                   this text

Password files are read by mongosh on the machine it runs on; they never appear in argv.
USAGE
}

main() {
  local uri="mongodb://localhost:$MONGOS_PORT/" database=cloudpacs update=false admin_file=""
  local -A files=()
  while (($#)); do
    common_option "$1" && { shift; continue; }
    if [[ $1 == --update-passwords ]]; then
      update=true
      shift
      continue
    fi
    tls_option "$1" "${2-}" && { shift 2; continue; }
    case $1 in
      --uri) uri=$2 ;;
      --database) database=$2 ;;
      --admin-password-file) admin_file=$2 ;;
      --app-password-file) files[app]=$2 ;;
      --research-password-file) files[research]=$2 ;;
      --backup-password-file) files[backup]=$2 ;;
      *) die "unknown option $1 (see --help)" ;;
    esac
    shift 2
  done
  [[ -n $admin_file ]] || die "--admin-password-file is required"
  check_name "$database"
  local js kind
  js=$(js_admin_login "$(absolute "$admin_file")")
  if [[ $update == true ]]; then
    js+=$'\n'$(js_ensure_user "$ADMIN_USER" "$(absolute "$admin_file")" "$(js_roles admin "$database")" true)
  fi
  if [[ -n ${files[app]:-} ]]; then
    js+=$'\n'$(js_ensure_app_role "$database")
  fi
  for kind in app research backup; do
    if [[ -n ${files[$kind]:-} ]]; then
      js+=$'\n'$(js_ensure_user "$(user_of "$kind")" "$(absolute "${files[$kind]}")" \
        "$(js_roles "$kind" "$database")" "$update")
    fi
  done
  mongosh_eval "$uri" "$js"
}

user_of() {
  case $1 in
    app) echo "$APP_USER" ;;
    research) echo "$RESEARCH_USER" ;;
    backup) echo "$BACKUP_USER" ;;
  esac
}

# mongosh resolves relative paths against its own working directory: make them absolute.
absolute() {
  if [[ $1 == /* ]]; then echo "$1"; else echo "$PWD/$1"; fi
}

main "$@"
