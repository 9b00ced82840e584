#!/usr/bin/env python3
"""The floor under a recorded sync call: what RabbitMQ and Postgres alone cost per call for the
work the message contract and the records fix, driven by clients nobody here wrote (pika and
psycopg2), with no Granda in the way.

Per call, as Granda does it: a caller publishes a persistent 1 KiB message, with publisher
confirms, to a durable quorum queue, with `reply_to` = `amq.rabbitmq.reply-to`; a worker consumes
it (prefetch 1 per worker), writes the claim (an INSERT, committed asynchronously, as Granda
commits a sync call's claim), the final record (an UPDATE with the output, committed), publishes the reply to the caller's reply-to and acks. CLIENTS
closed-loop callers, as many workers. `--pg 1` writes one record per call instead of two (no
claim: a run could run twice), `--pg 0` none: the broker's part alone.

From /proc it reads the CPU time (user + system) RabbitMQ (the node on 5672), Postgres (the
postmaster and all its processes) and this benchmark's own processes spent during the load and
divides by the calls answered. Compare with `scripts/bench-cpu.sh` in the same session: the
machine is noisy, ratios count.

usage: scripts/bench-floor.py [--clients 8] [--seconds 10] [--body 1024] [--pg 2] [--rounds 1]
                             [--queue-type quorum|classic]
needs: pika and psycopg2 (`pip install pika psycopg2-binary`), psql, ss.
"""

import argparse
import multiprocessing as mp
import os
import re
import subprocess
import sys
import threading
import time
import uuid

try:
    import pika
    import psycopg2
except ImportError as e:  # pragma: no cover
    sys.exit(f"bench-floor: {e.name} is missing (pip install pika psycopg2-binary)")

AMQP = os.environ.get("GRANDA_TEST_AMQP", "amqp://guest:guest@127.0.0.1:5672/%2f")
PG = os.environ.get("GRANDA_TEST_POSTGRES", "postgres://root@127.0.0.1:5432")
TCK = os.sysconf("SC_CLK_TCK")


def ticks(pids):
    total = 0
    for p in pids:
        try:
            with open(f"/proc/{p}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])
    return total


def listener(port, name):
    out = subprocess.run(["ss", "-ltnpH", f"sport = :{port}"], capture_output=True, text=True).stdout
    m = re.search(rf'"{name}",pid=(\d+)', out)
    return int(m.group(1)) if m else None


def postgres_pids():
    master = listener(5432, "postgres")
    if master is None:
        return []
    kids = subprocess.run(["pgrep", "-P", str(master)], capture_output=True, text=True).stdout.split()
    return [master] + [int(k) for k in kids]


def worker(queue, db, table, pg, stop, ready):
    conn = pika.BlockingConnection(pika.URLParameters(AMQP))
    ch = conn.channel()
    ch.basic_qos(prefetch_count=1)
    # As Granda writes them: a sync call's claim commits asynchronously (a Postgres crash may lose
    # it; the final record then writes the whole row), the final record synchronously.
    cur = claims = None
    if pg:
        sql = psycopg2.connect(f"{PG}/{db}")
        sql.autocommit = True
        cur = sql.cursor()
        quick = psycopg2.connect(f"{PG}/{db}", options="-c synchronous_commit=off")
        quick.autocommit = True
        claims = quick.cursor()
    name = f"floor-{os.getpid()}-{threading.get_ident()}"

    def on_message(ch, method, props, body):
        call = uuid.UUID(props.correlation_id)
        if pg == 2:
            claims.execute(
                f"INSERT INTO {table} (id, status, input, worker, started_at) VALUES (%s, 'running', %s, %s, now())",
                (str(call), body, name),
            )
            cur.execute(
                f"UPDATE {table} SET status = 'succeeded', output = %s, finished_at = now() WHERE id = %s",
                (body, str(call)),
            )
        elif pg == 1:
            cur.execute(
                f"INSERT INTO {table} (id, status, input, output, worker, started_at, finished_at)"
                " VALUES (%s, 'succeeded', %s, %s, %s, now(), now())",
                (str(call), body, body, name),
            )
        ch.basic_publish("", props.reply_to, body, pika.BasicProperties(correlation_id=props.correlation_id))
        ch.basic_ack(method.delivery_tag)

    ch.basic_consume(queue, on_message)
    ready.release()
    while not stop.is_set():
        conn.process_data_events(time_limit=0.2)
    conn.close()


def caller(queue, body, stop, counts, i, ready):
    conn = pika.BlockingConnection(pika.URLParameters(AMQP))
    ch = conn.channel()
    ch.confirm_delivery()
    got = {}

    def on_reply(ch, method, props, body):
        got[props.correlation_id] = body

    ch.basic_consume("amq.rabbitmq.reply-to", on_reply, auto_ack=True)
    ready.release()
    n = 0
    while not stop.is_set():
        cid = str(uuid.uuid4())
        ch.basic_publish(
            "",
            queue,
            body,
            pika.BasicProperties(delivery_mode=2, reply_to="amq.rabbitmq.reply-to", correlation_id=cid),
            mandatory=True,
        )
        while cid not in got and not stop.is_set():
            conn.process_data_events(time_limit=0.2)
        if got.pop(cid, None) is not None:
            n += 1
            counts[i] = n
    conn.close()


def side(role, n, args, queue, db, table, stop, counts, ready):
    threads = []
    for i in range(n):
        if role == "workers":
            t = threading.Thread(target=worker, args=(queue, db, table, args.pg, stop, ready))
        else:
            t = threading.Thread(target=caller, args=(queue, b"x" * args.body, stop, counts, i, ready))
        t.start()
        threads.append(t)
    for t in threads:
        t.join()


def one_round(args):
    tag = uuid.uuid4().hex[:8]
    db, table, queue = f"granda_floor_{tag}", "calls", f"granda-floor-{tag}"
    subprocess.run(["psql", f"{PG}/postgres", "-qc", f"CREATE DATABASE {db}"], check=True)
    subprocess.run(
        [
            "psql",
            f"{PG}/{db}",
            "-qc",
            "CREATE TABLE calls (id uuid PRIMARY KEY, status text NOT NULL, input bytea, output bytea,"
            " worker text, started_at timestamptz, finished_at timestamptz)",
        ],
        check=True,
    )
    conn = pika.BlockingConnection(pika.URLParameters(AMQP))
    conn.channel().queue_declare(queue, durable=True, arguments={"x-queue-type": args.queue_type})
    stop, ready = mp.Event(), mp.Semaphore(0)
    counts = mp.Array("q", args.clients)
    procs = [
        mp.Process(target=side, args=(role, args.clients, args, queue, db, table, stop, counts, ready))
        for role in ("workers", "callers")
    ]
    for p in procs:
        p.start()
    for _ in range(2 * args.clients):
        ready.acquire()
    time.sleep(2)  # warm up
    rabbit, pg = listener(5672, "beam.smp"), postgres_pids()
    ours = [p.pid for p in procs]
    n0, t0 = sum(counts), time.monotonic()
    r0, p0, o0 = ticks([rabbit]), ticks(pg), ticks(ours)
    time.sleep(args.seconds)
    r1, p1, o1 = ticks([rabbit]), ticks(postgres_pids()), ticks(ours)
    n1, t1 = sum(counts), time.monotonic()
    stop.set()
    for p in procs:
        p.join()
    conn.channel().queue_delete(queue)
    conn.close()
    subprocess.run(["psql", f"{PG}/postgres", "-qc", f"DROP DATABASE {db}"], check=True)
    n = n1 - n0
    ms = 1000 / TCK
    return n / (t1 - t0), (r1 - r0) * ms / n, (p1 - p0) * ms / n, (o1 - o0) * ms / n


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--seconds", type=float, default=10)
    ap.add_argument("--body", type=int, default=1024)
    ap.add_argument("--pg", type=int, choices=(0, 1, 2), default=2)
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--queue-type", choices=("quorum", "classic"), default="quorum",
                    help="the contract's is quorum; classic shows what the queue type costs")
    ap.add_argument("--bare", action="store_true",
                    help="print each round as 'calls/s rabbit_ms postgres_ms ours_ms' (for bench-cpu.sh)")
    args = ap.parse_args()
    if args.bare:
        for _ in range(args.rounds):
            rate, rabbit, pg, ours = one_round(args)
            print(f"{rate:.0f} {rabbit:.3f} {pg:.3f} {ours:.3f}", flush=True)
        return
    print(f"| floor ({args.queue_type} queue, {args.pg} Postgres transactions per call, {args.clients} callers) | calls/s | RabbitMQ ms/call | Postgres ms/call | RabbitMQ + Postgres ms/call | pika + psycopg2 ms/call |")
    print("|---|---:|---:|---:|---:|---:|")
    for r in range(args.rounds):
        rate, rabbit, pg, ours = one_round(args)
        print(f"| round {r + 1} | {rate:.0f} | {rabbit:.3f} | {pg:.3f} | {rabbit + pg:.3f} | {ours:.3f} |", flush=True)


if __name__ == "__main__":
    main()
