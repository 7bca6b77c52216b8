# shellcheck shell=bash  # a fragment: appended to boot-common.sh by deploy/userdata.py
# ---- app node: cloudpacs, its mongos, the systemd units ----

main() {
  fetch_bundle
  fetch_secrets common/keyfile=keyfile common/ca.pem=ca.pem app/mongos.pem=mongos.pem \
    app/app.password=app.password
  local args=(--source "$PREFIX" --secrets "$SECRETS" --configdb "$CONFIGDB"
    --database "$DATABASE" --http-port "$HTTP_PORT" --aws-region "$REGION") queue
  for queue in $SQS_QUEUES; do args+=(--sqs-queue "$queue"); done
  "$PREFIX/deploy/install-app-node.sh" "${args[@]}"
  forget_secrets
}

main
