#!/usr/bin/env bash
# On the balancer (root): keep the list of app nodes (/etc/cloudpacs/app-servers, one
# HOST:PORT a line), render the HAProxy configuration from it with haproxy/render-config.sh
# (validated by `haproxy -c` before it replaces the old one) and reload HAProxy (hitless).
# deploy/add-app-node.sh calls this over ssh; the balancer's boot calls it once.
set -euo pipefail
# shellcheck source=mongo/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/mongo/lib.sh"

readonly SERVERS_FILE=/etc/cloudpacs/app-servers
readonly HAPROXY_CFG=/etc/haproxy/haproxy.cfg
# Where the public certificate goes (PEM: certificate, chain, key), as haproxy/README.md says.
readonly CERT=/etc/haproxy/certs/cloudpacs.pem
readonly STATS_FILE=/etc/cloudpacs/haproxy-stats

usage() {
  cat <<'USAGE'
usage: register-app-node.sh [--add HOST:PORT | --remove HOST:PORT] [options]

  --add HOST:PORT      put an app node in the list (once)
  --remove HOST:PORT   take it out (scale in)
                       (neither: render and reload from the list as it is)
  --servers-file FILE  the list (default /etc/cloudpacs/app-servers)
  --stats ADDR:PORT    HAProxy stats and Prometheus exporter (default: render-config.sh's,
                       127.0.0.1:8404); remembered in /etc/cloudpacs/haproxy-stats
  --dry-run            print the commands instead of running them
  -h, --help           this text

HTTPS needs the certificate in /etc/haproxy/certs/cloudpacs.pem; without it HAProxy serves
plain HTTP (see haproxy/README.md).
USAGE
}

main() {
  local action="" server="" file=$SERVERS_FILE stats=""
  while (($#)); do
    common_option "$1" && { shift; continue; }
    case $1 in
      --add | --remove)
        action=${1#--}
        server=$2
        ;;
      --servers-file) file=$2 ;;
      --stats) stats=$2 ;;
      *) die "unknown option $1 (see --help)" ;;
    esac
    shift 2
  done
  if [[ -n $action ]]; then
    check_member "$server"
    edit_list "$file" "$action" "$server"
  fi
  if [[ -n $stats ]]; then
    check_member "$stats"
    write_file "$STATS_FILE" 0644 root:root <<<"$stats"
  elif [[ -s $STATS_FILE ]]; then
    stats=$(<"$STATS_FILE")
  fi
  render "$file" "$stats"
}

# edit_list FILE add|remove HOST:PORT
edit_list() {
  local file=$1 action=$2 server=$3 servers=() line
  if [[ -f $file ]]; then
    while IFS= read -r line; do
      if [[ -n $line && $line != "$server" ]]; then servers+=("$line"); fi
    done <"$file"
  fi
  if [[ $action == add ]]; then servers+=("$server"); fi
  run install -d -m 0755 "$(dirname "$file")"
  if ((${#servers[@]})); then
    printf '%s\n' "${servers[@]}" | write_file "$file" 0644 root:root
  else
    write_file "$file" 0644 root:root </dev/null
  fi
}

render() {
  local file=$1 stats=$2 renderer
  renderer=$(cd "$DEPLOY_LIB_DIR/../.." && pwd)/haproxy/render-config.sh
  if ! dry && [[ ! -x $renderer ]]; then
    say "no $renderer: configure HAProxy from $file yourself"
    return 0
  fi
  if ! dry && ! grep -q . "$file" 2>/dev/null; then
    say "$file lists no app node yet: HAProxy left as it is"
    return 0
  fi
  local args=(--nodes-file "$file" --output "$HAPROXY_CFG")
  if dry || [[ -f $CERT ]]; then args+=(--cert "$CERT"); fi
  if [[ -n $stats ]]; then args+=(--stats "$stats"); fi
  run "$renderer" "${args[@]}"
  run systemctl reload-or-restart haproxy
}

main "$@"
