#!/usr/bin/env bash
# Makes sure PostgreSQL and RabbitMQ are up on this machine, starting them if they are down.
# Sourced by scripts/dev.sh and scripts/test.sh.

ensure_postgres() {
  if pg_isready -q -h 127.0.0.1 -p 5432 2>/dev/null; then return 0; fi
  if ! command -v pg_ctlcluster >/dev/null 2>&1; then
    echo "PostgreSQL is not installed. Install it with: apt-get install -y postgresql" >&2
    return 1
  fi
  echo "starting PostgreSQL"
  pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | sort -V | tail -n 1)" main start
  for _ in $(seq 1 60); do
    pg_isready -q -h 127.0.0.1 -p 5432 && return 0
    sleep 0.5
  done
  echo "PostgreSQL did not start on 127.0.0.1:5432" >&2
  return 1
}

ensure_rabbitmq() {
  if (exec 3<>/dev/tcp/127.0.0.1/5672) 2>/dev/null; then return 0; fi
  if ! command -v rabbitmq-server >/dev/null 2>&1; then
    echo "RabbitMQ is not installed. Install it with: apt-get install -y rabbitmq-server" >&2
    return 1
  fi
  echo "starting RabbitMQ"
  rabbitmq-server -detached
  timeout 120 rabbitmqctl await_startup >/dev/null 2>&1 || true
  for _ in $(seq 1 120); do
    (exec 3<>/dev/tcp/127.0.0.1/5672) 2>/dev/null && return 0
    sleep 0.5
  done
  echo "RabbitMQ did not start on 127.0.0.1:5672" >&2
  return 1
}

# Creates database $1 if it does not exist.
ensure_database() {
  local name=$1
  if ! psql -h 127.0.0.1 -U postgres -d postgres -Atc "SELECT 1 FROM pg_database WHERE datname = '$name'" | grep -q 1; then
    psql -h 127.0.0.1 -U postgres -d postgres -qc "CREATE DATABASE \"$name\""
  fi
}

# PgBouncer in transaction pooling mode on 127.0.0.1:6432, the local stand-in for RDS Proxy:
# every database of the local server, any user the server knows, each transaction on
# whichever server connection is free. Installed from Debian's packages when missing; our
# own instance (not the package's service), run as `postgres` because PgBouncer refuses
# root. Exports POOLER_URL.
POOLER_PORT=6432
POOLER_DIR=/tmp/oms-pgbouncer
ensure_pgbouncer() {
  export POOLER_URL="postgres://oms_app@127.0.0.1:${POOLER_PORT}/postgres?sslmode=disable"
  if (exec 3<>/dev/tcp/127.0.0.1/${POOLER_PORT}) 2>/dev/null; then return 0; fi
  if ! command -v pgbouncer >/dev/null 2>&1 && [[ ! -x /usr/sbin/pgbouncer ]]; then
    echo "installing pgbouncer"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq pgbouncer >/dev/null \
      || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq pgbouncer >/dev/null; }
  fi
  local binary
  binary=$(command -v pgbouncer || echo /usr/sbin/pgbouncer)
  mkdir -p "$POOLER_DIR"
  # Trust, as the local server does; PgBouncer still wants every user listed.
  printf '"postgres" ""\n"oms_app" ""\n' > "$POOLER_DIR/userlist.txt"
  cat > "$POOLER_DIR/pgbouncer.ini" <<INI
[databases]
* = host=127.0.0.1 port=5432

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = ${POOLER_PORT}
unix_socket_dir =
auth_type = trust
auth_file = ${POOLER_DIR}/userlist.txt
pool_mode = transaction
; Tests open many pools of 16 in parallel; the server keeps its 100 connections.
max_client_conn = 4000
default_pool_size = 16
max_user_connections = 70
server_idle_timeout = 10
; A statement waits at most 5 s for a server connection (then 08P01, a 503), as RDS
; Proxy's ConnectionBorrowTimeout bounds it in AWS.
query_wait_timeout = 5
; After a failed login (the server restarting) try again within a second, not 15 s: the
; clients queued meanwhile get a server well within their function's time.
server_login_retry = 1
server_reset_query =
ignore_startup_parameters = extra_float_digits
logfile = ${POOLER_DIR}/pgbouncer.log
pidfile = ${POOLER_DIR}/pgbouncer.pid
INI
  chown -R postgres "$POOLER_DIR" 2>/dev/null || true
  echo "starting pgbouncer on 127.0.0.1:${POOLER_PORT}"
  if [[ $(id -u) -eq 0 ]]; then
    runuser -u postgres -- "$binary" -d "$POOLER_DIR/pgbouncer.ini"
  else
    "$binary" -d "$POOLER_DIR/pgbouncer.ini"
  fi
  for _ in $(seq 1 40); do
    (exec 3<>/dev/tcp/127.0.0.1/${POOLER_PORT}) 2>/dev/null && return 0
    sleep 0.25
  done
  echo "pgbouncer did not start on 127.0.0.1:${POOLER_PORT} (see $POOLER_DIR/pgbouncer.log)" >&2
  return 1
}
