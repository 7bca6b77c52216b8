# shellcheck shell=bash
# shellcheck disable=SC2034  # the constants are used by the scripts that source this
# Shared by deploy/mongo/*.sh and deploy/*-app-node.sh (sourced, never run).
#
# - run / write_file / install_copy: execute, or with --dry-run print what would be done;
# - render_template: @@NAME@@ placeholders, refusing to leave one unfilled;
# - js_*: pure functions printing the JavaScript sent to mongosh (tested by
#   tests/deploy/test_mongo_scripts.py). Strings in it are double-quoted and passwords are
#   read from files by mongosh itself, so neither argv nor a dry run ever shows a secret.

# Default ports (MongoDB's own defaults for mongos, --shardsvr and --configsvr).
readonly MONGOS_PORT=27017
readonly SHARD_PORT=27018
readonly CONFIG_PORT=27019
# MongoDB release series of the apt repository (the README asks for MongoDB 7+).
readonly MONGODB_SERIES=${MONGODB_SERIES:-7.0}
readonly MONGO_ETC=/etc/mongodb
readonly MONGO_TLS_DIR=$MONGO_ETC/tls
readonly MONGO_KEYFILE=$MONGO_ETC/keyfile
# Users: the names are fixed so that every script and the README agree.
readonly ADMIN_USER=cloudpacs_admin
readonly APP_USER=cloudpacs_app
readonly RESEARCH_USER=cloudpacs_research
readonly BACKUP_USER=cloudpacs_backup
# Seconds to wait for replica set members (a fresh EC2 node needs minutes to boot).
readonly DEFAULT_WAIT_SECONDS=900

DEPLOY_LIB_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
readonly DEPLOY_LIB_DIR
readonly MONGO_TEMPLATES=$DEPLOY_LIB_DIR/templates
DRY_RUN=${DRY_RUN:-0}
FILE_CHANGED=0

die() {
  echo "error: $*" >&2
  exit 1
}

say() {
  echo "# $*" >&2
}

dry() {
  [[ $DRY_RUN == 1 ]]
}

# Print arguments as a shell would need them: bare when safe, single-quoted otherwise.
quote_args() {
  local arg quoted=()
  for arg in "$@"; do
    if [[ $arg =~ ^[A-Za-z0-9_./:=@,+%-]+$ ]]; then
      quoted+=("$arg")
    else
      quoted+=("'${arg//\'/\'\\\'\'}'")
    fi
  done
  printf '%s\n' "${quoted[*]}"
}

run() {
  if dry; then
    printf '+ %s\n' "$(quote_args "$@")"
  else
    "$@"
  fi
}

# write_file PATH MODE OWNER:GROUP < content. Sets FILE_CHANGED=1 when the file changed.
write_file() {
  local path=$1 mode=$2 owner=$3 content
  content=$(cat)
  FILE_CHANGED=0
  if dry; then
    printf '+ write %s (mode %s, owner %s) <<EOF\n%s\nEOF\n' "$path" "$mode" "$owner" "$content"
    FILE_CHANGED=1
    return 0
  fi
  if [[ -f $path ]] && [[ $(cat "$path") == "$content" ]]; then
    chmod "$mode" "$path"
    chown "$owner" "$path"
    return 0
  fi
  local tmp
  tmp=$(mktemp "$(dirname "$path")/.tmp.XXXXXX")
  printf '%s\n' "$content" >"$tmp"
  chmod "$mode" "$tmp"
  chown "$owner" "$tmp"
  mv -f "$tmp" "$path"
  FILE_CHANGED=1
}

# install_copy SRC DEST MODE OWNER:GROUP: copy a file (a key: its content is never printed).
install_copy() {
  local src=$1 dest=$2 mode=$3 owner=$4
  if ! dry && [[ ! -s $src ]]; then
    die "missing file $src"
  fi
  FILE_CHANGED=0
  if ! dry && [[ -f $dest ]] && cmp -s "$src" "$dest"; then
    return 0
  fi
  run install -m "$mode" -o "${owner%%:*}" -g "${owner##*:}" "$src" "$dest"
  FILE_CHANGED=1
}

# render_template FILE NAME=VALUE... : replace every @@NAME@@, refuse leftovers.
render_template() {
  local template=$1 pair text
  shift
  [[ -f $template ]] || die "no template $template"
  text=$(<"$template")
  for pair in "$@"; do
    text=${text//"@@${pair%%=*}@@"/"${pair#*=}"}
  done
  if [[ $text =~ @@[A-Z_]+@@ ]]; then
    die "$template: placeholder ${BASH_REMATCH[0]} has no value"
  fi
  printf '%s\n' "$text"
}

# A member is host:port; the host must be a DNS name or an IPv4 address.
check_member() {
  [[ $1 =~ ^[A-Za-z0-9.-]+:[0-9]{2,5}$ ]] || die "member '$1' is not host:port"
}

check_name() {
  [[ $1 =~ ^[A-Za-z0-9_-]{1,64}$ ]] || die "name '$1' must be letters, digits, - or _"
}

# ---------------------------------------------------------------- mongosh ---

# TLS files of mongosh: the cluster CA and a client certificate (members require one, mongos
# does not); on the nodes, the node's own. --ca / --cert (or these variables) override them.
MONGO_CA=${MONGO_CA:-$MONGO_TLS_DIR/ca.pem}
MONGO_CLIENT_CERT=${MONGO_CLIENT_CERT-$MONGO_TLS_DIR/node.pem}

# mongosh_command URI JAVASCRIPT -> the argv (one per line is not needed: an array in MONGOSH)
mongosh_command() {
  MONGOSH=(mongosh --quiet --tls --tlsCAFile "$MONGO_CA")
  if [[ -n $MONGO_CLIENT_CERT ]]; then
    MONGOSH+=(--tlsCertificateKeyFile "$MONGO_CLIENT_CERT")
  fi
  MONGOSH+=("$1" --eval "$2")
}

# mongosh_eval URI JAVASCRIPT: run JavaScript here.
mongosh_eval() {
  mongosh_command "$1" "$2"
  run "${MONGOSH[@]}"
}

# mongosh_eval_over_ssh USER@HOST URI JAVASCRIPT: run it on another host (as the mongodb user,
# who can read the node's certificate), e.g. to use that host's localhost exception.
mongosh_eval_over_ssh() {
  mongosh_command "$2" "$3"
  run ssh -o BatchMode=yes "$1" "sudo -u mongodb $(quote_args "${MONGOSH[@]}")"
}

# members_list MEMBER... -> "h1:p,h2:p,h3:p"
members_list() {
  local IFS=,
  printf '%s\n' "$*"
}

# js_rs_config NAME CONFIGSVR(true|false) MEMBER... -> the replica set configuration document
js_rs_config() {
  local name=$1 configsvr=$2 i=0 member list="" extra=""
  shift 2
  for member in "$@"; do
    if ((i > 0)); then list+=", "; fi
    list+="{_id: $i, host: \"$member\"}"
    i=$((i + 1))
  done
  if [[ $configsvr == true ]]; then extra=", configsvr: true"; fi
  printf '{_id: "%s"%s, members: [%s]}\n' "$name" "$extra" "$list"
}

# js_rs_initiate NAME CONFIGSVR WAIT_SECONDS MEMBER...: initiate once (a member that already
# belongs to NAME is left alone, one of another set is an error), retrying while members are
# still unreachable, then wait for a primary.
js_rs_initiate() {
  local name=$1 configsvr=$2 wait=$3
  shift 3
  cat <<JS
const config = $(js_rs_config "$name" "$configsvr" "$@");
const deadline = Date.now() + $wait * 1000;
const setName = db.adminCommand({hello: 1}).setName;
if (setName === config._id) {
  print("replica set " + config._id + " already initiated");
} else if (setName !== undefined) {
  throw new Error("this member belongs to replica set " + setName + ", not " + config._id);
} else {
  for (;;) {
    try {
      rs.initiate(config);
      print("replica set " + config._id + " initiated");
      break;
    } catch (e) {
      if (e.codeName === "AlreadyInitialized") break;
      if (Date.now() > deadline) throw e;
      print("waiting for the members: " + e.message);
      sleep(5000);
    }
  }
}
while (db.adminCommand({hello: 1}).primary === undefined) {
  if (Date.now() > deadline) throw new Error("no primary in " + config._id);
  sleep(1000);
}
print("primary: " + db.adminCommand({hello: 1}).primary);
JS
}

# js_secret_reader: the helper every authenticated script starts with.
js_secret_reader() {
  cat <<'JS'
const fs = require("fs");
function secret(path) { return fs.readFileSync(path, "utf8").trim(); }
const admin = db.getSiblingDB("admin");
JS
}

# js_admin_login PASSWORD_FILE: authenticate as the administrator; on a cluster without any
# user yet (the localhost exception), create the administrator first.
js_admin_login() {
  local file=$1
  js_secret_reader
  cat <<JS
try {
  admin.auth("$ADMIN_USER", secret("$file"));
} catch (e) {
  // With no user at all (localhost exception) the first user may be created: the admin.
  try {
    admin.createUser({user: "$ADMIN_USER", pwd: secret("$file"), roles: [{role: "root", db: "admin"}]});
    print("created user $ADMIN_USER (localhost exception)");
  } catch (e2) {
    throw new Error("cannot log in as $ADMIN_USER (" + e.message + ") nor create it (" + e2.message + ")");
  }
  admin.auth("$ADMIN_USER", secret("$file"));
}
JS
}

# The application's collections (cloudpacs/storage/schema.py APP_READ_WRITE and
# APP_APPEND_ONLY; tests/deploy check they agree): full use of its working collections, but
# only find and insert on the audit trail, which it can therefore never change or delete.
APP_COLLECTIONS=(instances instance_reads kept_metadata series studies series_members study_lookup study_search fs.files fs.chunks rejections
  locks checkpoints uploads study_projects tokens)
APP_APPEND_ONLY_COLLECTIONS=(audit)
APP_ROLE=cloudpacsApp

# js_ensure_app_role DATABASE: create the application's role, or set it back to exactly this.
js_ensure_app_role() {
  local database=$1 name privileges
  local rw='["find", "insert", "update", "remove", "createCollection", "createIndex", "listIndexes"]'
  local append='["find", "insert", "createCollection", "createIndex", "listIndexes"]'
  privileges="{resource: {db: \"$database\", collection: \"\"}, actions: [\"listCollections\"]}"
  for name in "${APP_COLLECTIONS[@]}"; do
    privileges+=", {resource: {db: \"$database\", collection: \"$name\"}, actions: $rw}"
  done
  for name in "${APP_APPEND_ONLY_COLLECTIONS[@]}"; do
    privileges+=", {resource: {db: \"$database\", collection: \"$name\"}, actions: $append}"
  done
  cat <<JS
const archive = db.getSiblingDB("$database");
const appRole = {privileges: [$privileges], roles: []};
if (archive.getRole("$APP_ROLE") === null) {
  archive.createRole({role: "$APP_ROLE", ...appRole});
  print("created role $APP_ROLE");
} else {
  archive.updateRole("$APP_ROLE", appRole);
  print("updated role $APP_ROLE");
}
JS
}

# js_roles KIND DATABASE -> the exact roles of each user kind (least privilege).
js_roles() {
  local kind=$1 database=$2
  case $kind in
    admin) echo '[{role: "root", db: "admin"}]' ;;
    app) echo "[{role: \"$APP_ROLE\", db: \"$database\"}]" ;;
    research) echo "[{role: \"read\", db: \"$database\"}]" ;;
    backup) echo '[{role: "backup", db: "admin"}]' ;;
    *) die "unknown user kind $kind" ;;
  esac
}

# js_ensure_user USER PASSWORD_FILE ROLES UPDATE_PASSWORD(true|false): create the user, or set
# its roles to exactly ROLES (and its password from the file when asked: rotation).
js_ensure_user() {
  local user=$1 file=$2 roles=$3 update_password=$4 pwd_update=""
  if [[ $update_password == true ]]; then pwd_update=", pwd: secret(\"$file\")"; fi
  cat <<JS
if (admin.getUser("$user") === null) {
  admin.createUser({user: "$user", pwd: secret("$file"), roles: $roles});
  print("created user $user");
} else {
  admin.updateUser("$user", {roles: $roles$pwd_update});
  print("updated user $user");
}
JS
}

# js_add_shard NAME MEMBER...: sh.addShard once (listShards tells whether it is there).
js_add_shard() {
  local name=$1
  shift
  cat <<JS
const shards = db.adminCommand({listShards: 1}).shards.map((s) => s._id);
if (shards.includes("$name")) {
  print("shard $name already in the cluster");
} else {
  sh.addShard("$name/$(members_list "$@")");
  print("added shard $name");
}
JS
}

# js_wait_mongos WAIT_SECONDS: wait until mongos answers and sees the config servers.
js_wait_mongos() {
  cat <<JS
const until = Date.now() + $1 * 1000;
for (;;) {
  try {
    if (db.adminCommand({hello: 1}).msg === "isdbgrid") break;
    throw new Error("not a mongos");
  } catch (e) {
    if (Date.now() > until) throw e;
    sleep(2000);
  }
}
JS
}

# -------------------------------------------------------------- packages ---

# The MongoDB apt repository (signed-by its own key) for Debian 12; idempotent.
ensure_mongodb_repo() {
  local keyring=/usr/share/keyrings/mongodb-server-$MONGODB_SERIES.gpg
  local list=/etc/apt/sources.list.d/mongodb-org-$MONGODB_SERIES.list
  if dry || [[ ! -s $keyring ]]; then
    run bash -c "curl -fsSL https://pgp.mongodb.com/server-$MONGODB_SERIES.asc | gpg --dearmor --yes -o $keyring"
  fi
  write_file "$list" 0644 root:root <<LIST
deb [ signed-by=$keyring ] https://repo.mongodb.org/apt/debian bookworm/mongodb-org/$MONGODB_SERIES main
LIST
  if [[ $FILE_CHANGED == 1 ]]; then
    run apt-get update -qq
  fi
}

apt_install() {
  local pkg missing=()
  for pkg in "$@"; do
    if dry || ! dpkg -s "$pkg" >/dev/null 2>&1; then missing+=("$pkg"); fi
  done
  if ((${#missing[@]})); then
    run env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"
  fi
}

# The mongodb system user (the server package makes it; a mongos-only node may not have it).
ensure_mongodb_user() {
  if dry || ! getent passwd mongodb >/dev/null; then
    run bash -c "getent passwd mongodb >/dev/null || useradd --system --home-dir /var/lib/mongodb --shell /usr/sbin/nologin mongodb"
  fi
}

# Keyfile, CA and this node's certificate+key (node.pem) from a secrets directory.
install_mongo_secrets() {
  local secrets=$1 node_pem=$2
  ensure_mongodb_user
  run install -d -m 0750 -o root -g mongodb "$MONGO_ETC" "$MONGO_TLS_DIR"
  install_copy "$secrets/keyfile" "$MONGO_KEYFILE" 0400 mongodb:mongodb
  local changed=$FILE_CHANGED
  install_copy "$secrets/ca.pem" "$MONGO_TLS_DIR/ca.pem" 0444 mongodb:mongodb
  changed=$((changed | FILE_CHANGED))
  install_copy "$secrets/$node_pem" "$MONGO_TLS_DIR/node.pem" 0400 mongodb:mongodb
  FILE_CHANGED=$((changed | FILE_CHANGED))
}

# Parse the flags every script shares (returns 1 for others: the caller's parser takes them).
common_option() {
  case $1 in
    --dry-run) DRY_RUN=1 ;;
    -h | --help)
      usage
      exit 0
      ;;
    *) return 1 ;;
  esac
}

# Options with a value that every mongosh-using script shares; prints nothing, returns 1 if
# the option is not one of them.
tls_option() {
  case $1 in
    --ca) MONGO_CA=$2 ;;
    --cert) MONGO_CLIENT_CERT=$2 ;;
    *) return 1 ;;
  esac
}

readonly TLS_USAGE="  --ca FILE            cluster CA certificate (default /etc/mongodb/tls/ca.pem)
  --cert FILE          client certificate+key (default /etc/mongodb/tls/node.pem; '' for none)"
