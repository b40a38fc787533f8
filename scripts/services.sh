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
