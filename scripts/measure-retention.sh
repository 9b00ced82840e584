#!/usr/bin/env bash
# Measures the two ways to prune old invocation records on this machine's Postgres, in a scratch
# database (dropped and made again): batched deletes of a plain table (what the pruner does,
# src/retention.rs) and native partitioning by range of the UUIDv7 id (dropping whole
# partitions). For each: the table's size, its dead tuples, autovacuum's work, and the latency
# of single-row inserts (each its own commit, as the hot path's records) while pruning runs
# beside them. psql only. The numbers are in docs/operations.md, "Retention".
#
#   scripts/measure-retention.sh [ROWS] [PAYLOAD_BYTES]
#
# ROWS (default 200000) records spread over 10 days; a retention of 5 days prunes half of them.
# Connects with the usual PG* variables (default: 127.0.0.1, user root); needs CREATE DATABASE.
set -euo pipefail

ROWS=${1:-200000}
PAYLOAD=${2:-1024}
INSERTS=${INSERTS:-3000}
DB=${DB:-granda_measure_retention}
export PGHOST=${PGHOST:-127.0.0.1} PGUSER=${PGUSER:-root}

psql -X -q -d postgres -c "DROP DATABASE IF EXISTS $DB" -c "CREATE DATABASE $DB" >/dev/null
p() { psql -X -q -v ON_ERROR_STOP=1 -d "$DB" "$@"; }

p <<SQL
-- The smallest UUIDv7 of a time, and a UUIDv7 of a time with random bits.
CREATE FUNCTION floor_v7(at timestamptz) RETURNS uuid LANGUAGE sql IMMUTABLE AS \$\$
  SELECT (lpad(to_hex((extract(epoch FROM at) * 1000)::bigint), 12, '0')
          || '7000' || '8000' || '000000000000')::uuid \$\$;
CREATE FUNCTION v7(at timestamptz) RETURNS uuid LANGUAGE sql VOLATILE AS \$\$
  SELECT (lpad(to_hex((extract(epoch FROM at) * 1000)::bigint), 12, '0') || '7'
          || substr(md5(random()::text), 1, 3) || '8' || substr(md5(random()::text), 1, 15))::uuid \$\$;

-- The invocations table's shape, as far as pruning goes (its indexes as they are today).
CREATE TABLE heap_inv (
    id uuid PRIMARY KEY, function text NOT NULL, status text NOT NULL,
    output bytea, queued_at timestamptz NOT NULL, finished_at timestamptz,
    namespace text NOT NULL DEFAULT 'default', idempotency_key text
) WITH (fillfactor = 80);
CREATE INDEX heap_inv_function_id ON heap_inv (function, id DESC);
CREATE INDEX heap_inv_namespace_id ON heap_inv (namespace, id DESC);
-- Partitioned: every unique index must hold the partition key, so the idempotency key's
-- uniqueness per function can't be kept by the database any more (one reason not to).
CREATE TABLE part_inv (LIKE heap_inv INCLUDING DEFAULTS) PARTITION BY RANGE (id);
ALTER TABLE part_inv ADD PRIMARY KEY (id);
CREATE INDEX part_inv_function_id ON part_inv (function, id DESC);
CREATE INDEX part_inv_namespace_id ON part_inv (namespace, id DESC);
DO \$\$
DECLARE d int;
BEGIN
  FOR d IN 0..11 LOOP
    EXECUTE format('CREATE TABLE part_inv_%s PARTITION OF part_inv FOR VALUES FROM (%L) TO (%L) WITH (fillfactor = 80)',
      d, floor_v7(date_trunc('day', now()) - make_interval(days => 10 - d)),
      floor_v7(date_trunc('day', now()) - make_interval(days => 9 - d)));
  END LOOP;
END \$\$;
CREATE TABLE part_inv_rest PARTITION OF part_inv DEFAULT;

-- Fills a table with ROWS records over the last 10 days.
CREATE PROCEDURE fill(tbl text, n int, payload int) LANGUAGE plpgsql AS \$\$
BEGIN
  EXECUTE format('INSERT INTO %I (id, function, status, output, queued_at, finished_at)
    SELECT v7(t), ''fn'' || (g %% 20), ''succeeded'', decode(repeat(md5(g::text), (\$2 / 32) + 1), ''hex''),
           t, t + interval ''50 ms''
    FROM generate_series(1, \$1) g, LATERAL (SELECT now() - interval ''10 days'' + (g * interval ''10 days'' / \$1) AS t) x',
    tbl) USING n, payload;
END \$\$;

-- Inserts n records one a commit, then writes their latencies (ms) under label.
CREATE UNLOGGED TABLE latency (label text, ms double precision);
CREATE PROCEDURE load(tbl text, n int, label text, payload int) LANGUAGE plpgsql AS \$\$
DECLARE i int; t0 timestamptz; lat double precision[] := '{}';
BEGIN
  FOR i IN 1..n LOOP
    t0 := clock_timestamp();
    EXECUTE format('INSERT INTO %I (id, function, status, output, queued_at, finished_at)
                    VALUES (v7(now()), ''fn1'', ''succeeded'', decode(repeat(''ab'', \$1), ''hex''), now(), now())', tbl)
      USING payload;
    COMMIT;
    lat := lat || extract(epoch FROM clock_timestamp() - t0) * 1000;
  END LOOP;
  INSERT INTO latency SELECT label, unnest(lat);
  COMMIT;
END \$\$;

-- What the pruner does: the oldest first, 1000 ids per statement, each its own transaction.
CREATE PROCEDURE prune_batched(below uuid) LANGUAGE plpgsql AS \$\$
DECLARE n int;
BEGIN
  LOOP
    DELETE FROM heap_inv WHERE id IN (SELECT id FROM heap_inv WHERE id < below ORDER BY id LIMIT 1000);
    GET DIAGNOSTICS n = ROW_COUNT;
    COMMIT;
    EXIT WHEN n < 1000;
  END LOOP;
END \$\$;
SQL

report() { # table label
  p -At -F ' | ' <<SQL
SELECT '$2', pg_size_pretty(pg_total_relation_size('$1')),
       (SELECT count(*) FROM $1),
       (SELECT coalesce(sum(n_dead_tup), 0) FROM pg_stat_user_tables WHERE relname LIKE '$1%'),
       (SELECT coalesce(sum(autovacuum_count), 0) FROM pg_stat_user_tables WHERE relname LIKE '$1%');
SQL
}
sizes() { # table
  p -At -c "SELECT pg_size_pretty(sum(pg_total_relation_size(c.oid))) FROM pg_class c WHERE c.relname LIKE '$1%' AND c.relkind IN ('r','p')" 
}
latencies() { # label
  p -At -F ' | ' -c "SELECT '$1', count(*), round(percentile_cont(0.5) WITHIN GROUP (ORDER BY ms)::numeric, 3),
     round(percentile_cont(0.99) WITHIN GROUP (ORDER BY ms)::numeric, 3), round(max(ms)::numeric, 3)
     FROM latency WHERE label = '$1'"
}

echo "rows $ROWS, payload $PAYLOAD B, $INSERTS single-row inserts per latency run; Postgres $(p -At -c 'SHOW server_version')"
echo "== filling"
p -c "CALL fill('heap_inv', $ROWS, $PAYLOAD)" -c "CALL fill('part_inv', $ROWS, $PAYLOAD)" -c "ANALYZE"
echo "state | size | live | dead | autovacuums"
report heap_inv "heap: filled"
echo "part: filled | $(sizes part_inv)"

echo "== inserts with no pruning (latency ms: label | n | p50 | p99 | max)"
p -c "CALL load('heap_inv', $INSERTS, 'heap idle', $PAYLOAD)"
p -c "CALL load('part_inv', $INSERTS, 'part idle', $PAYLOAD)"
latencies "heap idle"
latencies "part idle"

echo "== batched deletes of the older half, inserts beside them"
BELOW="floor_v7(now() - interval '5 days')"
start=$(date +%s%N)
p -c "CALL load('heap_inv', $INSERTS, 'heap pruning', $PAYLOAD)" &
loader=$!
p -c "CALL prune_batched($BELOW)"
pruned_ms=$(( ($(date +%s%N) - start) / 1000000 ))
wait $loader
echo "batched delete took ${pruned_ms} ms"
latencies "heap pruning"
report heap_inv "heap: after delete"
sleep "${SETTLE_S:-75}"
report heap_inv "heap: after ${SETTLE_S:-75} s (autovacuum)"
start=$(date +%s%N)
p -c "VACUUM heap_inv"
echo "VACUUM took $(( ($(date +%s%N) - start) / 1000000 )) ms (autovacuum on this server: $(p -At -c 'SHOW autovacuum'))"
report heap_inv "heap: after VACUUM"
p -c "CALL fill('heap_inv', $((ROWS / 2)), $PAYLOAD)"
report heap_inv "heap: refilled by half (reuses freed space)"

echo "== dropping the older partitions, inserts beside them"
start=$(date +%s%N)
p -c "CALL load('part_inv', $INSERTS, 'part dropping', $PAYLOAD)" &
loader=$!
p <<SQL
DO \$\$
DECLARE d int;
BEGIN
  FOR d IN 0..4 LOOP
    EXECUTE format('ALTER TABLE part_inv DETACH PARTITION part_inv_%s', d);
    EXECUTE format('DROP TABLE part_inv_%s', d);
  END LOOP;
END \$\$;
SQL
dropped_ms=$(( ($(date +%s%N) - start) / 1000000 ))
wait $loader
echo "dropping 5 partitions took ${dropped_ms} ms"
latencies "part dropping"
echo "part: after drop | $(sizes part_inv)"

[ -n "${KEEP:-}" ] || psql -X -q -d postgres -c "DROP DATABASE $DB"
