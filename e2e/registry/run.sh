#!/usr/bin/env bash
# Runs a local OCI registry (distribution, from e2e/registry/build.sh) as a
# host process on 127.0.0.1 (or --host), for tests that read image configs
# from a real registry. One registry per DIR; several can run at once (each gets its own
# port, storage and credentials).
#
#   e2e/registry/run.sh start DIR [--tls] [--auth] [--port N] [--host IP]
#   e2e/registry/run.sh stop DIR
#
# start: storage in DIR/data (kept across restarts, so pushed images survive a
#   stop/start), plain HTTP unless --tls (a CA and a serving certificate for
#   127.0.0.1 and localhost, made once per DIR with openssl), anonymous unless
#   --auth (htpasswd basic auth, bcrypt, one user with a random password, made
#   once per DIR). The port is picked by the registry itself (it listens on
#   127.0.0.1:0 and logs the port it got, so two starts never race for a port)
#   unless --port N. --host IP listens on another of the host's IPv4 addresses
#   instead of 127.0.0.1 (one that pods reach, e.g. a node bridge's; plain
#   HTTP only, as the certificate names 127.0.0.1). Waits until GET /v2/
#   answers 200 (with the credentials),
#   then writes DIR/env (see README.md) and prints its path as the last line of
#   stdout. Progress and errors go to stderr.
# stop: TERM (then KILL after 15 s) to the registry started from DIR; data,
#   certificates, credentials and logs stay, so a test can still read the logs.
#   Stopping a registry that is not running is not an error.
#
# Needs bash, curl, openssl, python3 and Go (through build.sh, which reuses a
# cached build at once). For --auth: Apache's `htpasswd` (apache2-utils).
set -euo pipefail

REGISTRY_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

log() { printf '[registry] %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }
usage() {
  echo "usage: $0 start DIR [--tls] [--auth] [--port N] [--host IP]" >&2
  echo "       $0 stop DIR" >&2
  exit 2
}

[[ $# -ge 2 ]] || usage
CMD="$1" DIR="$2"
shift 2
[[ -n "$DIR" ]] || usage

# Is <pid> still a registry binary? Guards against signalling an unrelated
# process that reused a stale pid. (A rebuild swaps the cache directory, which
# leaves a running binary "(deleted)", so only the file name is compared.)
is_registry() { # <pid>
  local exe
  exe="$(readlink "/proc/$1/exe" 2>/dev/null)" || return 1
  exe="${exe% (deleted)}"
  [[ "${exe##*/}" == registry ]]
}

cmd_stop() {
  [[ $# -eq 0 ]] || usage
  local pid i
  if [[ ! -f "$DIR/pid" ]]; then
    log "no registry running from $DIR (no $DIR/pid)"
    return 0
  fi
  pid="$(cat "$DIR/pid")"
  if [[ "$pid" =~ ^[0-9]+$ ]] && is_registry "$pid"; then
    log "stopping the registry (pid $pid)"
    # start ran it under setsid: signal its whole process group.
    kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < 150; i++)); do
      is_registry "$pid" || break
      sleep 0.1
    done
    if is_registry "$pid"; then
      log "killing the registry (still running 15s after TERM)"
      kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null || true
    fi
  else
    log "the registry from $DIR (pid $pid) is not running"
  fi
  rm -f "$DIR/pid"
}

# --- start helpers --------------------------------------------------------------

# A CA and a serving certificate for 127.0.0.1/localhost, made once per DIR and
# reused while valid for another day, so a restarted registry keeps the CA its
# clients already trust. ECDSA P-256 and the extensions rustls/webpki insist on
# (CA:TRUE on the CA, CA:FALSE + serverAuth + SANs on the leaf), as
# e2e/cluster.sh does for the apiserver.
make_tls() {
  local tls="$DIR/tls"
  if [[ -f "$tls/ca.crt" && -f "$tls/server.crt" && -f "$tls/server.key" ]] &&
    openssl x509 -checkend 86400 -noout -in "$tls/server.crt" >/dev/null 2>&1 &&
    openssl x509 -checkend 86400 -noout -in "$tls/ca.crt" >/dev/null 2>&1; then
    return
  fi
  log "making a CA and a serving certificate for 127.0.0.1 in $tls"
  rm -rf "$tls"
  mkdir -p "$tls"
  chmod 700 "$tls"
  openssl ecparam -name prime256v1 -genkey -noout -out "$tls/ca.key" 2>/dev/null
  openssl req -x509 -new -key "$tls/ca.key" -subj "/CN=secure-defaults-e2e-registry-ca" \
    -days 30 -sha256 -out "$tls/ca.crt" \
    -addext "basicConstraints=critical,CA:TRUE" \
    -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null ||
    die "openssl could not make the CA in $tls"
  openssl ecparam -name prime256v1 -genkey -noout -out "$tls/server.key" 2>/dev/null
  openssl req -new -key "$tls/server.key" -subj "/CN=127.0.0.1" -out "$tls/server.csr" 2>/dev/null
  printf '%s\n' \
    "basicConstraints=critical,CA:FALSE" \
    "keyUsage=critical,digitalSignature" \
    "extendedKeyUsage=serverAuth" \
    "subjectKeyIdentifier=hash" \
    "authorityKeyIdentifier=keyid" \
    "subjectAltName=IP:127.0.0.1,DNS:localhost" >"$tls/server.ext"
  openssl x509 -req -in "$tls/server.csr" -CA "$tls/ca.crt" -CAkey "$tls/ca.key" \
    -set_serial "0x$(openssl rand -hex 16)" -days 30 -sha256 \
    -extfile "$tls/server.ext" -out "$tls/server.crt" 2>/dev/null ||
    die "openssl could not sign the serving certificate in $tls"
  rm -f "$tls/server.csr" "$tls/server.ext"
  openssl verify -CAfile "$tls/ca.crt" "$tls/server.crt" >/dev/null ||
    die "the serving certificate in $tls does not verify against its CA"
}

# A bcrypt htpasswd line for <user>, password on stdin. bcrypt because it is
# the only hash the registry's htpasswd auth accepts.
htpasswd_line() { # <user>
  command -v htpasswd >/dev/null 2>&1 || die "--auth needs htpasswd (apt-get install apache2-utils)"
  # -i: password from stdin (never on a command line), -n: print, -B: bcrypt.
  htpasswd -niB "$1"
}

# One user with a random password, made once per DIR (kept across restarts,
# like the certificates).
make_auth() {
  local auth="$DIR/auth"
  if [[ -s "$auth/htpasswd" && -s "$auth/user" && -s "$auth/password" ]]; then
    return
  fi
  log "making an htpasswd user in $auth"
  rm -rf "$auth"
  mkdir -p "$auth"
  chmod 700 "$auth"
  echo e2e >"$auth/user"
  openssl rand -hex 16 >"$auth/password"
  htpasswd_line "$(cat "$auth/user")" <"$auth/password" >"$auth/htpasswd.tmp" ||
    die "could not make $auth/htpasswd"
  # shellcheck disable=SC2016 # a literal $ in the pattern
  grep -q '^e2e:\$2[aby]\$' "$auth/htpasswd.tmp" || die "$auth/htpasswd is not a bcrypt entry: $(cat "$auth/htpasswd.tmp")"
  mv "$auth/htpasswd.tmp" "$auth/htpasswd"
}

# A YAML double-quoted string: paths may hold spaces, colons, '#'. (Only
# backslash and double quote need escaping there; a path with a newline is
# refused below.)
yq() {
  local s="${1//\\/\\\\}"
  s="${s//\"/\\\"}"
  printf '"%s"' "$s"
}

write_config() { # <addr>
  {
    echo "# Written by e2e/registry/run.sh start; rewritten on every start."
    echo "version: 0.1"
    echo "log:"
    # info: one 'response completed' line per request with method, URI, status
    # and (with --auth) the user. The access log proper (Apache combined
    # format) goes to stdout, i.e. DIR/access.log.
    echo "  level: info"
    echo "  formatter: text"
    echo "  fields: {service: registry, instance: $(yq "$DIR")}"
    echo "  accesslog: {disabled: false}"
    echo "storage:"
    echo "  filesystem: {rootdirectory: $(yq "$DIR/data")}"
    echo "  delete: {enabled: true}"
    # Upload purging walks the storage in the background; nothing for a test.
    echo "  maintenance: {uploadpurging: {enabled: false}}"
    echo "http:"
    echo "  addr: $(yq "$1")"
    # A fixed secret avoids the "no HTTP secret" warning; it only signs upload
    # state between requests of one registry.
    echo "  secret: $(yq "$(openssl rand -hex 16)")"
    echo "  headers: {X-Content-Type-Options: [nosniff]}"
    if ((TLS)); then
      echo "  tls: {certificate: $(yq "$DIR/tls/server.crt"), key: $(yq "$DIR/tls/server.key")}"
    fi
    if ((AUTH)); then
      echo "auth:"
      echo "  htpasswd: {realm: secure-defaults-e2e, path: $(yq "$DIR/auth/htpasswd")}"
    fi
  } >"$DIR/config.yml"
}

cmd_start() {
  TLS=0 AUTH=0 PORT=0 HOST=127.0.0.1
  while [[ $# -gt 0 ]]; do
    case "$1" in
      --tls) TLS=1 ;;
      --auth) AUTH=1 ;;
      --port)
        [[ $# -ge 2 && "$2" =~ ^[0-9]+$ ]] || usage
        PORT="$2"
        shift
        ;;
      --host)
        [[ $# -ge 2 && "$2" =~ ^[0-9]+(\.[0-9]+){3}$ ]] || usage
        HOST="$2"
        shift
        ;;
      *) usage ;;
    esac
    shift
  done
  if ((TLS)) && [[ "$HOST" != 127.0.0.1 ]]; then
    die "--tls serves a certificate for 127.0.0.1 only; it cannot go with --host $HOST"
  fi
  local c
  for c in curl openssl python3 setsid; do
    command -v "$c" >/dev/null 2>&1 || die "$c is required"
  done

  mkdir -p "$DIR"
  DIR="$(cd "$DIR" && pwd)"
  [[ "$DIR" != *$'\n'* ]] || die "DIR must not contain a newline"

  # One registry per DIR: a second start would orphan the first process.
  if [[ -f "$DIR/pid" ]]; then
    local old
    old="$(cat "$DIR/pid")"
    if [[ "$old" =~ ^[0-9]+$ ]] && is_registry "$old"; then
      die "a registry is already running from $DIR (pid $old); run: $0 stop $DIR"
    fi
    rm -f "$DIR/pid"
  fi
  rm -f "$DIR/env"

  local bin
  bin="$("$REGISTRY_DIR/build.sh" | tail -n 1)" || die "e2e/registry/build.sh failed"
  bin="$bin/registry"
  [[ -x "$bin" ]] || die "no registry binary at $bin"

  mkdir -p "$DIR/data"
  if ((TLS)); then make_tls; fi
  if ((AUTH)); then make_auth; fi
  write_config "$HOST:$PORT"

  # The registry takes any REGISTRY_* variable as a configuration override
  # (REGISTRY_HTTP_ADDR=...), and the env file this script writes uses that
  # prefix: a caller that exported one registry's env file must not
  # reconfigure the next one, so the child gets none of them.
  local unset_env=() v
  while IFS= read -r v; do unset_env+=(-u "$v"); done < <(compgen -e | grep '^REGISTRY_' || true)
  # OTEL_TRACES_EXPORTER=none: the registry sets up OpenTelemetry and would
  # otherwise export spans over OTLP to localhost:4318 and log every failure.
  : >"$DIR/access.log"
  : >"$DIR/registry.log"
  # setsid: the registry outlives this script in its own process group, which
  # `stop` signals as a whole.
  setsid env "${unset_env[@]}" OTEL_TRACES_EXPORTER=none \
    "$bin" serve "$DIR/config.yml" >"$DIR/access.log" 2>"$DIR/registry.log" </dev/null &
  local pid=$!
  echo "$pid" >"$DIR/pid"

  # The port the registry got, from its "listening on HOST:N" line.
  local i addr=""
  for ((i = 0; i < 300; i++)); do
    addr="$(grep -o "listening on ${HOST//./\\.}:[0-9]*" "$DIR/registry.log" | head -n 1 | sed 's/^listening on //')" || true
    [[ -n "$addr" ]] && break
    if ! kill -0 "$pid" 2>/dev/null; then
      rm -f "$DIR/pid"
      tail -n 20 "$DIR/registry.log" >&2
      die "the registry exited while starting (log above, in $DIR/registry.log)"
    fi
    sleep 0.1
  done
  if [[ -z "$addr" ]]; then
    tail -n 20 "$DIR/registry.log" >&2
    cmd_stop
    die "the registry did not report a listening address within 30s (log above)"
  fi

  local scheme=http ca="" cert_dir="" user="" password=""
  local curl_args=(--silent --show-error --max-time 5 --output /dev/null --write-out '%{http_code}')
  if ((TLS)); then
    scheme=https
    ca="$DIR/tls/ca.crt"
    # A directory holding only the CA, for `podman --cert-dir` / containerd's
    # certs.d: beside server.key it would be read as a client key without its
    # certificate, which podman refuses.
    cert_dir="$DIR/certs"
    mkdir -p "$cert_dir"
    cp "$ca" "$cert_dir/ca.crt"
    curl_args+=(--cacert "$ca")
  fi
  if ((AUTH)); then
    user="$(cat "$DIR/auth/user")"
    password="$(cat "$DIR/auth/password")"
  fi
  local url="$scheme://$addr"

  # Ready when /v2/ answers 200 with the credentials (and, with --auth, 401
  # without them, proving auth is really on).
  local code=""
  for ((i = 0; i < 300; i++)); do
    if ((AUTH)); then
      code="$(curl "${curl_args[@]}" --config - "$url/v2/" <<<"user = \"$user:$password\"" 2>/dev/null)" || code=""
    else
      code="$(curl "${curl_args[@]}" "$url/v2/" 2>/dev/null)" || code=""
    fi
    [[ "$code" == 200 ]] && break
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  if [[ "$code" != 200 ]]; then
    tail -n 20 "$DIR/registry.log" >&2
    cmd_stop
    die "GET $url/v2/ did not answer 200 within 30s (last: ${code:-no answer}; log above)"
  fi
  if ((AUTH)); then
    code="$(curl "${curl_args[@]}" "$url/v2/")" || code=""
    if [[ "$code" != 401 ]]; then
      cmd_stop
      die "GET $url/v2/ without credentials answered ${code:-nothing}, expected 401"
    fi
  fi

  # A docker/podman auth file for this registry (podman --authfile, or the
  # .dockerconfigjson of a Kubernetes image pull secret).
  local auth_json=""
  if ((AUTH)); then
    auth_json="$DIR/auth/auth.json"
    python3 - "$addr" "$user" "$password" >"$auth_json" <<'PY'
import base64, json, sys
addr, user, password = sys.argv[1:4]
token = base64.b64encode(f"{user}:{password}".encode()).decode()
print(json.dumps({"auths": {addr: {"auth": token}}}, indent=2))
PY
  fi

  # KEY=value lines, shell-quoted (printf %q), written atomically so a reader
  # never sees half a file.
  {
    printf '%s=%q\n' \
      REGISTRY_ADDR "$addr" \
      REGISTRY_HOST 127.0.0.1 \
      REGISTRY_PORT "${addr##*:}" \
      REGISTRY_URL "$url" \
      REGISTRY_SCHEME "$scheme" \
      REGISTRY_TLS "$TLS" \
      REGISTRY_CA "$ca" \
      REGISTRY_CERT_DIR "$cert_dir" \
      REGISTRY_AUTH "$AUTH" \
      REGISTRY_USER "$user" \
      REGISTRY_PASSWORD "$password" \
      REGISTRY_AUTH_FILE "$auth_json" \
      REGISTRY_PID "$pid" \
      REGISTRY_LOG "$DIR/registry.log" \
      REGISTRY_ACCESS_LOG "$DIR/access.log" \
      REGISTRY_DATA "$DIR/data" \
      REGISTRY_CONFIG "$DIR/config.yml" \
      REGISTRY_BIN "$bin"
  } >"$DIR/env.tmp"
  mv "$DIR/env.tmp" "$DIR/env"

  log "registry running at $url (pid $pid$( ((TLS)) && echo ", TLS")$( ((AUTH)) && echo ", auth as $user")), storage $DIR/data"
  echo "$DIR/env"
}

case "$CMD" in
  start) cmd_start "$@" ;;
  stop) cmd_stop "$@" ;;
  *) usage ;;
esac
