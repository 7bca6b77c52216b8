# shellcheck shell=bash  # a fragment: appended to boot-common.sh by deploy/userdata.py
# ---- app node: cloudpacs, its mongos, the systemd units ----

# The CIDR blocks of this node's VPC, one per line (where the balancer is).
vpc_cidrs() {
  local mac
  mac=$(imds mac)
  imds "network/interfaces/macs/$mac/vpc-ipv4-cidr-blocks"
}

main() {
  fetch_bundle
  fetch_secrets common/keyfile=keyfile common/ca.pem=ca.pem app/mongos.pem=mongos.pem \
    app/app.password=app.password
  local args=(--source "$PREFIX" --secrets "$SECRETS" --configdb "$CONFIGDB"
    --database "$DATABASE" --http-port "$HTTP_PORT" --aws-region "$REGION") queue network vpc
  for queue in $SQS_QUEUES; do args+=(--sqs-queue "$queue"); done
  # X-Forwarded-For is believed from this VPC only (the app security group admits the
  # balancer alone); clients are the spec's allowed_cidrs (and the monitoring host)
  vpc=$(vpc_cidrs)
  for network in $vpc; do args+=(--trusted-proxy "$network"); done
  for network in $ALLOWED_NETWORKS; do args+=(--allowed-network "$network"); done
  "$PREFIX/deploy/install-app-node.sh" "${args[@]}"
  forget_secrets
}

main
