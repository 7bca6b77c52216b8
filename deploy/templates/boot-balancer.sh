# shellcheck shell=bash  # a fragment: appended to boot-common.sh by deploy/userdata.py
# ---- balancer: HAProxy in front of the app nodes ----
# The list of app nodes is /etc/cloudpacs/app-servers (deploy/register-app-node.sh keeps it,
# deploy/add-app-node.sh calls that over ssh); haproxy/render-config.sh turns it into the
# HAProxy configuration. The public certificate, when stored, is $SSM_PREFIX/balancer/tls.pem.

main() {
  fetch_bundle
  install -d -m 0700 /etc/haproxy/certs
  if ATTEMPTS=3 fetch_secrets balancer/tls.pem=tls.pem; then
    install -m 0600 "$SECRETS/tls.pem" /etc/haproxy/certs/cloudpacs.pem
  else
    echo "no $SSM_PREFIX/balancer/tls.pem: HAProxy serves plain HTTP until there is one"
  fi
  forget_secrets
  local server args=()
  if [[ -n $HAPROXY_STATS_PORT ]]; then  # for Prometheus (monitoring_cidr)
    args+=(--stats "$(imds local-ipv4):$HAPROXY_STATS_PORT")
  fi
  for server in $APP_SERVERS; do
    "$PREFIX/deploy/register-app-node.sh" --add "$server" "${args[@]}"
  done
}

main
