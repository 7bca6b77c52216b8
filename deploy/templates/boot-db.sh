# shellcheck shell=bash  # a fragment: appended to boot-common.sh by deploy/userdata.py
# ---- config server / shard member: mongod, then member 1 initiates the replica set ----

# The data volume: the disk without partitions nor mount point (the root disk has both).
data_device() {
  local disk
  for disk in $(lsblk -dnpo NAME -e 7,11); do
    if [[ $(lsblk -npo NAME "$disk" | wc -l) == 1 && -z $(lsblk -npo MOUNTPOINT "$disk" | tr -d '[:space:]') ]]; then
      echo "$disk"
      return 0
    fi
  done
  return 1
}

main() {
  fetch_bundle
  fetch_secrets common/keyfile=keyfile common/ca.pem=ca.pem db/member.pem=member.pem
  local args=(--role "$ROLE" --replset "$REPLSET" --secrets "$SECRETS"
    --bind-ip "127.0.0.1,$(imds local-ipv4)") device
  if device=$(data_device); then args+=(--data-device "$device"); fi
  "$PREFIX/deploy/mongo/install-mongod.sh" "${args[@]}"
  forget_secrets
  if [[ $MEMBER == 1 ]]; then
    local init=(--replset "$REPLSET" --wait "$INIT_WAIT_SECONDS") host
    if [[ $ROLE == config ]]; then init+=(--configsvr); fi
    for host in $MEMBERS; do init+=(--member "$host"); done
    "$PREFIX/deploy/mongo/init-replset.sh" "${init[@]}"
  fi
}

main
