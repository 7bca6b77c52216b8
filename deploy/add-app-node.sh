#!/usr/bin/env bash
# Add an app node, from the operator's machine, over ssh:
#   1. copy a bundle of this checkout (git archive HEAD) and the node's secrets (keyfile,
#      ca.pem, mongos.pem, app.password) to the node;
#   2. run deploy/install-app-node.sh there: cloudpacs, its mongos, env file, systemd units;
#   3. register HOST:PORT in HAProxy on the balancer (deploy/register-app-node.sh there: the
#      list /etc/cloudpacs/app-servers, haproxy/render-config.sh, a reload).
# EC2 nodes from `deploy/ec2.py scale-app` install themselves: use --register-only for them.
set -euo pipefail
# shellcheck source=mongo/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/mongo/lib.sh"

readonly REGISTER=/opt/cloudpacs/deploy/register-app-node.sh
readonly STAGING=cloudpacs-install
readonly APP_SECRETS=(keyfile ca.pem mongos.pem app.password)

usage() {
  cat <<'USAGE'
usage: add-app-node.sh --host HOST [--configdb SPEC --secrets DIR] [options]

  --host HOST          the new app node (reachable over ssh; its private address is what
                       the balancer uses unless --address says otherwise)
  --address ADDR       address the balancer connects to (default: HOST)
  --configdb SPEC      config server replica set for its mongos (RS/HOST:PORT,...)
  --secrets DIR        the operator's secrets directory (make-secrets.sh)
  --balancer HOST      register the node in HAProxy there
  --ssh-user USER      ssh user with sudo on the nodes (default admin, Debian's AMI user)
  --http-port PORT     default 8080
  --bundle FILE        tar.gz of the cloudpacs tree (default: git archive HEAD)
  --sqs-queue URL      passed to install-app-node.sh (repeat)
  --aws-region REGION  passed to install-app-node.sh
  --trusted-proxy CIDR passed to install-app-node.sh (repeat; the HAProxy nodes)
  --allowed-network CIDR  passed to install-app-node.sh (repeat; the client networks)
  --register-only      skip steps 1-2 (the node installed itself)
  --remove             unregister HOST from HAProxy instead (scale in)
  --dry-run            print the commands instead of running them
  -h, --help           this text
USAGE
}

main() {
  local host="" address="" configdb="" secrets="" balancer="" user=admin port=8080 bundle=""
  local region="" mode=install install_args=()
  while (($#)); do
    common_option "$1" && { shift; continue; }
    case $1 in
      --register-only | --remove)
        mode=${1#--}
        shift
        continue
        ;;
      --host) host=$2 ;;
      --address) address=$2 ;;
      --configdb) configdb=$2 ;;
      --secrets) secrets=$2 ;;
      --balancer) balancer=$2 ;;
      --ssh-user) user=$2 ;;
      --http-port) port=$2 ;;
      --bundle) bundle=$2 ;;
      --sqs-queue | --trusted-proxy | --allowed-network) install_args+=("$1" "$2") ;;
      --aws-region) region=$2 ;;
      *) die "unknown option $1 (see --help)" ;;
    esac
    shift 2
  done
  [[ -n $host ]] || die "--host is required"
  check_member "${address:-$host}:$port"
  if [[ -n $region ]]; then install_args+=(--aws-region "$region"); fi
  case $mode in
    install)
      [[ -n $configdb && -n $secrets ]] || die "--configdb and --secrets are required"
      install_remote "$user@$host" "$configdb" "$secrets" "$port" "$bundle" "${install_args[@]}"
      register "$user" "$balancer" "${address:-$host}:$port" add
      ;;
    register-only) register "$user" "$balancer" "${address:-$host}:$port" add ;;
    remove) register "$user" "$balancer" "${address:-$host}:$port" remove ;;
  esac
}

# install_remote USER@HOST CONFIGDB SECRETS PORT BUNDLE INSTALL_ARGS...
install_remote() {
  local target=$1 configdb=$2 secrets=$3 port=$4 bundle=$5
  shift 5
  if [[ -z $bundle ]]; then
    bundle=${TMPDIR:-/tmp}/cloudpacs.tar.gz
    if ! dry; then bundle=$(mktemp -d)/cloudpacs.tar.gz; fi
    run git -C "$(cd "$DEPLOY_LIB_DIR/../.." && pwd)" archive --format=tar.gz -o "$bundle" HEAD
  fi
  local files=("$bundle") name
  for name in "${APP_SECRETS[@]}"; do files+=("$secrets/$name"); done
  run ssh -o BatchMode=yes "$target" "umask 077 && mkdir -p $STAGING"
  run scp -q -o BatchMode=yes "${files[@]}" "$target:$STAGING/"
  local install=(/opt/cloudpacs/deploy/install-app-node.sh --source /opt/cloudpacs
    --secrets "\$HOME/$STAGING" --configdb "$configdb" --http-port "$port" "$@")
  # the staged secrets are removed whatever happens
  run ssh -o BatchMode=yes "$target" "trap 'rm -rf \$HOME/$STAGING' EXIT; sudo install -d /opt/cloudpacs && sudo tar -xzf \$HOME/$STAGING/$(basename "$bundle") -C /opt/cloudpacs && sudo ${install[*]}"
}

# register USER BALANCER HOST:PORT add|remove
register() {
  local user=$1 balancer=$2 server=$3 action=$4
  if [[ -z $balancer ]]; then
    say "no --balancer: add $server to the HAProxy backend yourself"
    return 0
  fi
  run ssh -o BatchMode=yes "$user@$balancer" "sudo $REGISTER --$action $server"
}

main "$@"
