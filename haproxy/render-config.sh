#!/usr/bin/env bash
# Render haproxy/haproxy.cfg.tmpl for a list of cloudpacs app nodes; see --help.
set -euo pipefail
shopt -u patsub_replacement 2>/dev/null || true # bash 5.2: `&` in ${x//p/r} is literal

TEMPLATE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/haproxy.cfg.tmpl"

usage() {
  cat <<'EOF'
Usage: render-config.sh [OPTIONS] [HOST:PORT ...]

Render the HAProxy config for the cloudpacs app nodes given as HOST:PORT arguments and/or
in a file, to stdout or to a file (validated with `haproxy -c` before it replaces the old one).

Options:
  -n, --nodes-file FILE     app nodes, one HOST:PORT per line (blank lines, # comments ok);
                            '-' reads stdin
  -b, --bind ADDR:PORT      public listener (default *:443 with --cert, *:80 without)
  -c, --cert PATH           TLS certificate+key PEM (or a directory of them): HAProxy
                            terminates TLS; without it the listener is plain HTTP
  -s, --stats ADDR:PORT     stats page (/stats) and Prometheus exporter (/metrics); bind it
                            to a private address (default 127.0.0.1:8404)
      --admin-socket PATH   runtime API socket (default /run/haproxy/admin.sock)
      --maxconn N           global connection limit (default 20000)
      --frontend-maxconn N  public frontend limit (default 10000)
      --server-maxconn N    concurrent requests per app node; more wait in the queue
                            (default 200)
      --check-inter TIME    health check interval, e.g. 1s or 500ms (default 1s)
      --check-fall N        failed checks before a node is DOWN (default 2)
      --check-rise N        passed checks before a node is UP again (default 2)
      --check-timeout TIME  health check timeout (default 1s)
      --log TARGET          syslog target, or 'stdout' (default /dev/log)
      --unprivileged        no chroot/user/group (HAProxy started by a normal user, tests)
  -o, --output FILE         write to FILE (atomically) instead of stdout
      --no-check            do not validate with `haproxy -c`
      --dry-run             render and validate, print the config (or, with --output, the
                            diff against FILE) and write nothing
  -h, --help                this help

Example:
  render-config.sh --cert /etc/haproxy/certs/pacs.pem --stats 10.0.0.5:8404 \
    --output /etc/haproxy/haproxy.cfg 10.0.1.11:8080 10.0.1.12:8080 10.0.1.13:8080
EOF
}

die() {
  echo "render-config: $*" >&2
  exit 2
}

# HOST:PORT where HOST is a name, an IPv4 address or a bracketed IPv6 address.
valid_node() {
  [[ $1 =~ ^([A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?|\[[0-9A-Fa-f:.]+\]):([1-9][0-9]{0,4})$ ]] &&
    ((BASH_REMATCH[3] <= 65535))
}

# A bind address: like a node, but the host may be empty or '*' (all addresses).
valid_bind() {
  [[ $1 =~ ^(\*|[A-Za-z0-9.-]*|\[[0-9A-Fa-f:.]+\]):([1-9][0-9]{0,4})$ ]] &&
    ((BASH_REMATCH[2] <= 65535))
}

valid_time() { [[ $1 =~ ^[0-9]+(us|ms|s|m|h|d)?$ ]]; }
valid_count() { [[ $1 =~ ^[1-9][0-9]*$ ]]; }
# Paths go into the config verbatim: no whitespace or quotes that would split the line.
valid_path() { [[ -n $1 && ! $1 =~ [[:space:]\"\'#] ]]; }

need() {
  local check=$1 option=$2 value=$3
  "$check" "$value" || die "invalid value for $option: '$value'"
}

read_nodes_file() {
  local file=$1 line
  [[ $file == - || -r $file ]] || die "cannot read nodes file: $file"
  [[ $file != - ]] || file=/dev/stdin
  while IFS= read -r line || [[ -n $line ]]; do
    line=${line%%#*}
    line=${line//[[:space:]]/}
    [[ -z $line ]] || NODES+=("$line")
  done <"$file"
}

# One `server` line per node; the name is the address itself (stable across reloads and
# readable in the stats), with brackets replaced since names allow only [A-Za-z0-9_.:-].
server_lines() {
  local node
  for node in "${NODES[@]}"; do
    printf '    server %s %s\n' "${node//[\[\]]/}" "$node"
  done
}

check_nodes() {
  local node
  declare -A seen=()
  ((${#NODES[@]})) || die "no app nodes given (HOST:PORT arguments or --nodes-file)"
  for node in "${NODES[@]}"; do
    valid_node "$node" || die "not HOST:PORT: '$node'"
    [[ -z ${seen[$node]:-} ]] || die "node listed twice: $node"
    seen[$node]=1
  done
}

# Drop template comments; keep, untag or drop a line by its @IF_...@ tag; fill in @NAME@s.
render_line() {
  local line=$1 tag name
  [[ $line != "##"* ]] || return 0
  for tag in IF_TLS IF_PLAIN IF_PRIVDROP; do
    if [[ $line == "@$tag@"* ]]; then
      [[ ${ENABLED[$tag]} == yes ]] || return 0
      line=${line#"@$tag@"}
    fi
  done
  if [[ $line == @SERVERS@ ]]; then
    server_lines
    return 0
  fi
  for name in "${!VALUES[@]}"; do
    line=${line//"@$name@"/${VALUES[$name]}}
  done
  if [[ $line =~ @[A-Z_]+@ ]]; then
    die "template placeholder without a value: ${BASH_REMATCH[0]}"
  fi
  printf '%s\n' "$line"
}

render() {
  local line
  while IFS= read -r line || [[ -n $line ]]; do
    render_line "$line"
  done <"$TEMPLATE"
}

validate() {
  local file=$1
  if ! command -v haproxy >/dev/null; then
    echo "render-config: haproxy not installed, config not validated" >&2
    return 0
  fi
  local out
  out=$(haproxy -c -f "$file" 2>&1) || die "haproxy -c rejected the rendered config:"$'\n'"$out"
}

# Options with a value, by long name, with their defaults ("" = unset).
declare -A OPT=(
  [nodes-file]="" [bind]="" [cert]="" [stats]=127.0.0.1:8404
  [admin-socket]=/run/haproxy/admin.sock [maxconn]=20000 [frontend-maxconn]=10000
  [server-maxconn]=200 [check-inter]=1s [check-fall]=2 [check-rise]=2 [check-timeout]=1s
  [log]=/dev/log [output]=""
)
declare -A FLAG=([unprivileged]=no [no-check]=no [dry-run]=no)
NODES=()

parse_args() {
  local name
  while (($#)); do
    case $1 in
      -h | --help) usage; exit 0 ;;
      -n) set -- --nodes-file "${@:2}"; continue ;;
      -b) set -- --bind "${@:2}"; continue ;;
      -c) set -- --cert "${@:2}"; continue ;;
      -s) set -- --stats "${@:2}"; continue ;;
      -o) set -- --output "${@:2}"; continue ;;
      --) NODES+=("${@:2}"); break ;;
      --*)
        name=${1#--}
        if [[ -v "FLAG[$name]" ]]; then
          FLAG[$name]=yes
        elif [[ -v "OPT[$name]" ]]; then
          (($# >= 2)) || die "$1 needs a value"
          OPT[$name]=$2
          shift
        else
          die "unknown option: $1 (see --help)"
        fi
        ;;
      -*) die "unknown option: $1 (see --help)" ;;
      *) NODES+=("$1") ;;
    esac
    shift
  done
}

check_options() {
  local name
  if [[ -z ${OPT[bind]} ]]; then
    if [[ -n ${OPT[cert]} ]]; then OPT[bind]='*:443'; else OPT[bind]='*:80'; fi
  fi
  need valid_bind --bind "${OPT[bind]}"
  need valid_bind --stats "${OPT[stats]}"
  [[ -z ${OPT[cert]} ]] || need valid_path --cert "${OPT[cert]}"
  need valid_path --admin-socket "${OPT[admin-socket]}"
  need valid_path --log "${OPT[log]}"
  for name in maxconn frontend-maxconn server-maxconn check-fall check-rise; do
    need valid_count "--$name" "${OPT[$name]}"
  done
  for name in check-inter check-timeout; do
    need valid_time "--$name" "${OPT[$name]}"
  done
}

set_template_values() {
  local tls=no log=${OPT[log]}
  [[ -z ${OPT[cert]} ]] || tls=yes
  [[ $log != stdout ]] || log="stdout format raw"
  declare -gA ENABLED=([IF_TLS]=$tls [IF_PLAIN]=yes [IF_PRIVDROP]=yes)
  [[ $tls == no ]] || ENABLED[IF_PLAIN]=no
  [[ ${FLAG[unprivileged]} == no ]] || ENABLED[IF_PRIVDROP]=no
  declare -gA VALUES=(
    [BIND]=${OPT[bind]} [CERT]=${OPT[cert]} [STATS_BIND]=${OPT[stats]}
    [ADMIN_SOCKET]=${OPT[admin-socket]} [LOG_TARGET]=$log [MAXCONN]=${OPT[maxconn]}
    [FRONTEND_MAXCONN]=${OPT[frontend-maxconn]} [SERVER_MAXCONN]=${OPT[server-maxconn]}
    [CHECK_INTER]=${OPT[check-inter]} [CHECK_FALL]=${OPT[check-fall]}
    [CHECK_RISE]=${OPT[check-rise]} [CHECK_TIMEOUT]=${OPT[check-timeout]}
  )
}

# Print the rendered file $1, or (dry run) what would change, or move it into place.
deliver() {
  local rendered=$1 output=${OPT[output]}
  if [[ ${FLAG[dry-run]} == yes ]]; then
    if [[ -n $output && -e $output ]]; then
      echo "render-config: dry run, $output unchanged; the changes would be:" >&2
      diff -u -- "$output" "$rendered" || true
    else
      [[ -z $output ]] || echo "render-config: dry run, would write $output:" >&2
      cat -- "$rendered"
    fi
  elif [[ -n $output ]]; then
    chmod 0644 -- "$rendered"
    mv -f -- "$rendered" "$output"
    echo "render-config: wrote $output (${#NODES[@]} app nodes)" >&2
  else
    cat -- "$rendered"
  fi
}

main() {
  parse_args "$@"
  [[ -z ${OPT[nodes-file]} ]] || read_nodes_file "${OPT[nodes-file]}"
  check_nodes
  check_options
  set_template_values
  local tmp
  # Beside the output, so that the final rename is atomic.
  tmp=$(mktemp "${OPT[output]:-${TMPDIR:-/tmp}/haproxy.cfg}.XXXXXX")
  # shellcheck disable=SC2064 # $tmp is expanded now, on purpose: it is local
  trap "rm -f -- '$tmp'" EXIT
  render >"$tmp"
  [[ ${FLAG[no-check]} == yes ]] || validate "$tmp"
  deliver "$tmp"
}

main "$@"
