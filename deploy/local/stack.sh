#!/usr/bin/env bash
# The local stack used by tests, CI and the demo: a real Apache Kafka broker
# (KRaft, single node) and moto's Kinesis server, both on 127.0.0.1.
#
#   stack.sh up       start what is not running, wait until both answer
#   stack.sh down     stop what this script started (by PID)
#   stack.sh status   say what runs
#   stack.sh env      print KAFKA_BOOTSTRAP / KINESIS_ENDPOINT (and the secured
#                     listeners' KAFKA_SASL_BOOTSTRAP, KAFKA_SASL_SSL_BOOTSTRAP,
#                     KAFKA_SSL_BOOTSTRAP, KAFKA_TLS_DIR) as shell exports
#
# Besides PLAINTEXT (what tests and the demo use), the broker has three secured
# listeners to test the worker's kafka security settings: SASL_PLAINTEXT and
# SASL_SSL (PLAIN, SCRAM-SHA-256, SCRAM-SHA-512; SASL_SSL also OAUTHBEARER with
# Kafka's unsecured token validator) and SSL with client certificates. Their users, keys and certificates are TEST-ONLY, made at each
# broker start in the stack folder: SASL user `worker`, password `worker-secret`
# (jaas.conf for PLAIN, --add-scram for SCRAM); a throwaway CA, broker and
# client certificate under tls/ (make_tls.py). Never reuse them anywhere else.
#
# Settings (environment): KAFKA_PORT (9092), KAFKA_CONTROLLER_PORT (9093),
# KAFKA_SASL_PORT (9094, SASL_PLAINTEXT), KAFKA_SASL_SSL_PORT (9095, SASL_SSL),
# KAFKA_SSL_PORT (9096, SSL with client certificates),
# KINESIS_PORT (4567), STACK_DIR (runtime files, default <repo>/.stack),
# KINESIS_DESTINATION_CACHE (downloaded broker jars, default ~/.cache/kinesis-destination),
# PYTHON (the project's virtualenv python).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
KAFKA_PORT=${KAFKA_PORT:-9092}
KAFKA_CONTROLLER_PORT=${KAFKA_CONTROLLER_PORT:-9093}
KAFKA_SASL_PORT=${KAFKA_SASL_PORT:-9094}
KAFKA_SASL_SSL_PORT=${KAFKA_SASL_SSL_PORT:-9095}
KAFKA_SSL_PORT=${KAFKA_SSL_PORT:-9096}
KINESIS_PORT=${KINESIS_PORT:-4567}
STACK_DIR=${STACK_DIR:-$repo/.stack}
KINESIS_DESTINATION_CACHE=${KINESIS_DESTINATION_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/kinesis-destination}
PYTHON=${PYTHON:-$repo/.venv/bin/python}
KAFKA_VERSION=$(sed -n 's:.*<kafka.version>\(.*\)</kafka.version>.*:\1:p' "$here/kafka-pom.xml")
KAFKA_LIBS=$KINESIS_DESTINATION_CACHE/kafka-$KAFKA_VERSION/libs
# Test-only SASL credentials of the local broker (see the header).
SASL_TEST_USER=worker
SASL_TEST_PASSWORD=worker-secret

say() { printf 'stack: %s\n' "$*"; }
die() { printf 'stack: error: %s\n' "$*" >&2; exit 1; }

pid_alive() { [[ -f $1 ]] && kill -0 "$(cat "$1")" 2>/dev/null; }
port_in_use() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

require_tools() {
  command -v java >/dev/null || die "java not found: install a JDK 17 or newer (Debian: apt-get install openjdk-17-jre-headless)"
  command -v mvn >/dev/null || die "mvn not found: install Maven (Debian: apt-get install maven)"
  local major
  major=$(java -XshowSettings:properties -version 2>&1 | sed -n 's/.*java.specification.version = \([0-9]*\).*/\1/p')
  [[ -n $major && $major -ge 17 ]] || die "Kafka $KAFKA_VERSION needs Java 17 or newer; java here is version ${major:-unknown}"
  [[ -x $PYTHON ]] || die "no Python at $PYTHON: run 'make venv' first (or set PYTHON)"
}

resolve_kafka() {
  [[ -f $KAFKA_LIBS/.complete ]] && return 0
  say "resolving Apache Kafka $KAFKA_VERSION from Maven Central into $KAFKA_LIBS (once)"
  local tmp=$KAFKA_LIBS.partial
  rm -rf "$tmp"; mkdir -p "$tmp"
  mkdir -p "$STACK_DIR"
  if ! timeout 900 mvn -B -q -f "$here/kafka-pom.xml" dependency:copy-dependencies \
      -DincludeScope=runtime -DoutputDirectory="$tmp" > "$STACK_DIR/mvn.log" 2>&1; then
    tail -n 30 "$STACK_DIR/mvn.log" >&2
    die "mvn could not resolve org.apache.kafka:kafka_2.13:$KAFKA_VERSION (full log: $STACK_DIR/mvn.log)"
  fi
  ls "$tmp"/kafka_2.13-*.jar >/dev/null 2>&1 || die "mvn finished but no kafka_2.13 jar in $tmp"
  touch "$tmp/.complete"
  rm -rf "$KAFKA_LIBS"; mv "$tmp" "$KAFKA_LIBS"
}

# The port of the running broker's listener $1 (from its server.properties), or nothing:
# a broker started by an older stack.sh has no secured listeners.
listener_port() {
  { grep -m1 '^listeners=' "$STACK_DIR/server.properties" 2>/dev/null || true; } \
    | sed 's/^listeners=//' | tr ',' '\n' | sed -n "s|^$1://[^:]*:\([0-9]*\)\$|\1|p"
}

start_kafka() {
  local pidfile=$STACK_DIR/kafka.pid
  if pid_alive "$pidfile"; then
    say "kafka already running (pid $(cat "$pidfile")) on 127.0.0.1:$KAFKA_PORT"
    if [[ -z $(listener_port SASL_PLAINTEXT) ]]; then
      say "note: this broker was started without the SASL/TLS test listeners (an older stack.sh);"
      say "      KAFKA_SASL_BOOTSTRAP is not set. Restart the stack to get them: $0 down && $0 up"
    fi
    return 0
  fi
  local port name
  for name in KAFKA_PORT KAFKA_CONTROLLER_PORT KAFKA_SASL_PORT KAFKA_SASL_SSL_PORT KAFKA_SSL_PORT; do
    port=${!name}
    port_in_use "$port" && die "port $port is already in use by another process: stop it or set $name"
  done
  resolve_kafka
  local data=$STACK_DIR/kafka-data config=$STACK_DIR/server.properties
  local tls=$STACK_DIR/tls jaas=$STACK_DIR/jaas.conf
  rm -rf "$data" "$tls"; mkdir -p "$data"
  # Test-only TLS material and SASL users (see the header).
  "$PYTHON" "$here/make_tls.py" "$tls" || die "could not make the test TLS certificates in $tls"
  (umask 077; cat > "$jaas" <<EOT
// TEST-ONLY users of the local stack's SASL listeners, written by deploy/local/stack.sh.
// PLAIN users are the user_NAME entries; SCRAM users are stored by 'kafka-storage format --add-scram'.
KafkaServer {
    org.apache.kafka.common.security.plain.PlainLoginModule required
    user_$SASL_TEST_USER="$SASL_TEST_PASSWORD";
    org.apache.kafka.common.security.scram.ScramLoginModule required;
};
EOT
  )
  sed -e "s|@KAFKA_PORT@|$KAFKA_PORT|g" -e "s|@CONTROLLER_PORT@|$KAFKA_CONTROLLER_PORT|g" \
      -e "s|@SASL_PORT@|$KAFKA_SASL_PORT|g" -e "s|@SASL_SSL_PORT@|$KAFKA_SASL_SSL_PORT|g" \
      -e "s|@SSL_PORT@|$KAFKA_SSL_PORT|g" -e "s|@TLS_DIR@|$tls|g" \
      -e "s|@DATA_DIR@|$data|g" "$here/server.properties.in" > "$config"
  local java_opts=(-Xms256m -Xmx1g -XX:+UseG1GC -Djava.awt.headless=true
                   "-Dlog4j2.configurationFile=$here/log4j2.properties"
                   "-Djava.security.auth.login.config=$jaas" -cp "$KAFKA_LIBS/*")
  local cluster_id scram=()
  for mechanism in SCRAM-SHA-256 SCRAM-SHA-512; do
    scram+=(--add-scram "$mechanism=[name=$SASL_TEST_USER,password=$SASL_TEST_PASSWORD]")
  done
  cluster_id=$("$PYTHON" -c 'import base64,uuid;print(base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("="))')
  java "${java_opts[@]}" kafka.tools.StorageTool format -t "$cluster_id" -c "$config" "${scram[@]}" \
      > "$STACK_DIR/kafka-format.log" 2>&1 || { cat "$STACK_DIR/kafka-format.log" >&2; die "formatting Kafka storage failed"; }
  say "starting kafka $KAFKA_VERSION on 127.0.0.1:$KAFKA_PORT (SASL_PLAINTEXT :$KAFKA_SASL_PORT, SASL_SSL :$KAFKA_SASL_SSL_PORT, SSL :$KAFKA_SSL_PORT)"
  setsid nohup java "${java_opts[@]}" kafka.Kafka "$config" > "$STACK_DIR/kafka.log" 2>&1 < /dev/null &
  echo $! > "$pidfile"
}

start_kinesis() {
  local pidfile=$STACK_DIR/kinesis.pid
  if pid_alive "$pidfile"; then say "kinesis endpoint already running (pid $(cat "$pidfile")) on 127.0.0.1:$KINESIS_PORT"; return 0; fi
  port_in_use "$KINESIS_PORT" && die "port $KINESIS_PORT is already in use by another process: stop it or set KINESIS_PORT"
  say "starting moto's Kinesis endpoint on 127.0.0.1:$KINESIS_PORT"
  setsid nohup "$PYTHON" "$here/kinesis_server.py" -H 127.0.0.1 -p "$KINESIS_PORT" \
      > "$STACK_DIR/kinesis.log" 2>&1 < /dev/null &
  echo $! > "$pidfile"
}

wait_ready() {  # kind address pidfile log
  if ! "$PYTHON" "$here/probe.py" "$1" "$2" --timeout 90; then
    pid_alive "$3" || say "$1 process exited; last lines of $4:"
    tail -n 20 "$4" >&2 || true
    die "$1 did not become ready"
  fi
}

write_env() {
  cat > "$STACK_DIR/env" <<EOT
export KAFKA_BOOTSTRAP=127.0.0.1:$KAFKA_PORT
export KINESIS_ENDPOINT=http://127.0.0.1:$KINESIS_PORT
EOT
  # The secured listeners, from the running broker's own configuration.
  local sasl sasl_ssl ssl
  sasl=$(listener_port SASL_PLAINTEXT); sasl_ssl=$(listener_port SASL_SSL); ssl=$(listener_port SSL)
  if [[ -n $sasl && -n $sasl_ssl && -n $ssl ]]; then
    cat >> "$STACK_DIR/env" <<EOT
export KAFKA_SASL_BOOTSTRAP=127.0.0.1:$sasl
export KAFKA_SASL_SSL_BOOTSTRAP=127.0.0.1:$sasl_ssl
export KAFKA_SSL_BOOTSTRAP=127.0.0.1:$ssl
export KAFKA_TLS_DIR=$STACK_DIR/tls
EOT
  fi
}

stop_one() {  # name pidfile
  local pidfile=$2
  [[ -f $pidfile ]] || return 1
  local pid; pid=$(cat "$pidfile")
  if kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 60); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
    if kill -0 "$pid" 2>/dev/null; then say "$1 (pid $pid) ignored SIGTERM for 30s: killing it"; kill -KILL "$pid" 2>/dev/null || true; fi
    say "stopped $1 (pid $pid)"
  else
    say "$1 was not running (stale pid file removed)"
  fi
  rm -f "$pidfile"
}

cmd=${1:-}
case $cmd in
  up)
    require_tools
    mkdir -p "$STACK_DIR"
    start_kafka
    start_kinesis
    wait_ready kafka "127.0.0.1:$KAFKA_PORT" "$STACK_DIR/kafka.pid" "$STACK_DIR/kafka.log"
    wait_ready kinesis "http://127.0.0.1:$KINESIS_PORT" "$STACK_DIR/kinesis.pid" "$STACK_DIR/kinesis.log"
    write_env
    say "up: KAFKA_BOOTSTRAP=127.0.0.1:$KAFKA_PORT KINESIS_ENDPOINT=http://127.0.0.1:$KINESIS_PORT"
    ;;
  down)
    stopped=0
    stop_one kinesis "$STACK_DIR/kinesis.pid" && stopped=1
    stop_one kafka "$STACK_DIR/kafka.pid" && stopped=1
    [[ $stopped == 1 ]] || say "nothing to stop: the stack is not running"
    rm -f "$STACK_DIR/env"
    ;;
  status)
    for name in kafka kinesis; do
      if pid_alive "$STACK_DIR/$name.pid"; then say "$name running (pid $(cat "$STACK_DIR/$name.pid"))"; else say "$name not running"; fi
    done
    ;;
  env)
    [[ -f $STACK_DIR/env ]] || die "the stack is not up: run 'make stack-up'"
    cat "$STACK_DIR/env"
    ;;
  *)
    echo "usage: $0 up|down|status|env" >&2; exit 2 ;;
esac
