#!/usr/bin/env bash
# cloudpacs node boot: run once per instance by cloud-init (runcmd); log in
# /var/log/cloudpacs-boot.log. Settings in /etc/cloudpacs/node.env (from the user-data);
# secrets from SSM Parameter Store through the instance role, kept in /run (tmpfs) only
# until the install scripts have put them in place.
set -euo pipefail
# shellcheck source=/dev/null
source /etc/cloudpacs/node.env
exec > >(tee -a /var/log/cloudpacs-boot.log) 2>&1
readonly SECRETS=/run/cloudpacs-secrets
readonly PREFIX=/opt/cloudpacs
# IAM instance profiles take a while to be usable after creation: retry that long.
readonly SSM_ATTEMPTS=30
readonly SSM_RETRY_SECONDS=10

imds() {
  local token
  token=$(curl -fsS -X PUT -H "X-aws-ec2-metadata-token-ttl-seconds: 60" \
    http://169.254.169.254/latest/api/token)
  curl -fsS -H "X-aws-ec2-metadata-token: $token" "http://169.254.169.254/latest/meta-data/$1"
}

fetch_bundle() {
  install -d -m 0755 "$PREFIX"
  curl -fsSL --retry 10 --retry-connrefused -o /tmp/cloudpacs.tar.gz "$BUNDLE_URL"
  tar -xzf /tmp/cloudpacs.tar.gz -C "$PREFIX"
  rm -f /tmp/cloudpacs.tar.gz
}

# fetch_secrets PARAMETER=FILE...: $SSM_PREFIX/PARAMETER (SecureString) into $SECRETS/FILE,
# trying ATTEMPTS (default SSM_ATTEMPTS) times.
fetch_secrets() {
  local pair attempt
  install -d -m 0700 "$SECRETS"
  for pair in "$@"; do
    for ((attempt = 1; ; attempt++)); do
      if aws ssm get-parameter --region "$REGION" --with-decryption \
        --name "$SSM_PREFIX/${pair%%=*}" --query Parameter.Value --output text \
        >"$SECRETS/${pair#*=}"; then
        break
      fi
      ((attempt < ${ATTEMPTS:-$SSM_ATTEMPTS})) || return 1
      sleep "$SSM_RETRY_SECONDS"
    done
  done
}

forget_secrets() {
  rm -rf "$SECRETS"
}
