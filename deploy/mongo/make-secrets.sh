#!/usr/bin/env bash
# Make the cluster's secrets on the operator's machine, once: the internal-authentication
# keyfile, a private CA (EC P-256, kept offline: ca.key is never uploaded), the members'
# certificate (wildcard for the cluster's private DNS zone), the mongos certificate (loopback)
# and the passwords of the MongoDB users. Existing files are kept (rerun-safe);
# --renew-certs issues new member and mongos certificates from the same CA (rotation).
set -euo pipefail
# shellcheck source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

# Certificate lifetimes (days). Browsers cap leaf certificates at 398 days; this is a private
# CA for MongoDB only, still a yearly rotation keeps the procedure practised.
readonly CA_DAYS=3650
readonly LEAF_DAYS=397
# MongoDB keyfiles: 6 to 1024 base64 characters; 756 random bytes are 1008 characters.
readonly KEYFILE_BYTES=756
# 24 random bytes as hex: 48 URI-safe characters (no percent-encoding in mongodb:// URIs).
readonly PASSWORD_BYTES=24
readonly PASSWORDS=(admin app research backup)

usage() {
  cat <<'USAGE'
usage: make-secrets.sh --cluster NAME --out DIR [options]

  --cluster NAME   cluster name (as given to deploy/ec2.py)
  --out DIR        where the files go (mode 0700); keep it out of git and backed up offline
  --domain D       private DNS zone of the database nodes (default NAME.cloudpacs.internal)
  --renew-certs    issue new member.pem and mongos.pem (same CA)
  --dry-run        print the commands instead of running them
  -h, --help       this text

Files: keyfile, ca.key, ca.pem, member.pem, mongos.pem, {admin,app,research,backup}.password
USAGE
}

main() {
  local cluster="" out="" domain="" renew=0
  while (($#)); do
    common_option "$1" && { shift; continue; }
    case $1 in
      --renew-certs)
        renew=1
        shift
        continue
        ;;
      --cluster) cluster=$2 ;;
      --out) out=$2 ;;
      --domain) domain=$2 ;;
      *) die "unknown option $1 (see --help)" ;;
    esac
    shift 2
  done
  check_name "$cluster"
  [[ -n $out ]] || die "--out DIR is required"
  domain=${domain:-$cluster.cloudpacs.internal}
  umask 077
  run install -d -m 0700 "$out"
  if missing "$out/keyfile"; then
    run bash -c "openssl rand -base64 $KEYFILE_BYTES > $out/keyfile"
  fi
  local name
  for name in "${PASSWORDS[@]}"; do
    if missing "$out/$name.password"; then
      run bash -c "openssl rand -hex $PASSWORD_BYTES > $out/$name.password"
    fi
  done
  if missing "$out/ca.pem"; then
    run openssl req -x509 -new -nodes -newkey ec -pkeyopt ec_paramgen_curve:P-256 \
      -keyout "$out/ca.key" -out "$out/ca.pem" -days "$CA_DAYS" \
      -subj "/O=cloudpacs/OU=$cluster/CN=cloudpacs $cluster CA" \
      -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign
  fi
  if ((renew)) || missing "$out/member.pem"; then
    issue "$out" member "/O=cloudpacs/OU=$cluster-members/CN=*.$domain" \
      "DNS:*.$domain,DNS:localhost,IP:127.0.0.1"
  fi
  if ((renew)) || missing "$out/mongos.pem"; then
    issue "$out" mongos "/O=cloudpacs/OU=$cluster-routers/CN=localhost" "DNS:localhost,IP:127.0.0.1"
  fi
}

missing() {
  dry || [[ ! -s $1 ]]
}

# issue DIR NAME SUBJECT SANS: NAME.pem = private key + certificate signed by the CA, valid
# for TLS servers and clients (members and mongos are both).
issue() {
  local dir=$1 name=$2 subject=$3 sans=$4
  write_file "$dir/$name.ext" 0600 "$(id -un):$(id -gn)" <<EXT
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature, keyEncipherment
extendedKeyUsage = serverAuth, clientAuth
subjectAltName = $sans
EXT
  run openssl req -new -nodes -newkey ec -pkeyopt ec_paramgen_curve:P-256 \
    -keyout "$dir/$name.key" -out "$dir/$name.csr" -subj "$subject"
  run openssl x509 -req -in "$dir/$name.csr" -CA "$dir/ca.pem" -CAkey "$dir/ca.key" \
    -set_serial "0x$(openssl rand -hex 16)" -days "$LEAF_DAYS" -extfile "$dir/$name.ext" \
    -out "$dir/$name.crt"
  run bash -c "cat $dir/$name.key $dir/$name.crt > $dir/$name.pem"
  run rm -f "$dir/$name.key" "$dir/$name.csr" "$dir/$name.crt" "$dir/$name.ext"
}

main "$@"
