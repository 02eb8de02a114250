"""Runs examples/python/orders.py the way production would, and checks it.

8 workers send every request key at least twice: the two copies of a key
side by side, so two workers send them at the same moment, and some keys a
third time at the end (a redelivery). Meanwhile a chaos thread terminates
workers' connections in the middle of requests (pg_terminate_backend) and
cancels some of their statements (pg_cancel_backend), a first attempt hangs
on two keys for a while (the retries behind it get 55P03), and half the
workers run at SERIALIZABLE, where a duplicate racing the first attempt gets
40001. At the end: exactly one order per key, every copy of a request got
the first answer, and a key reused with a different request fails with
IK001 without being retried. Exits 1 if any check fails.

Connects with libpq's PG* environment variables (examples/run sets them).
"""

import logging
import os
import random
import sys
import threading
import time

import psycopg
from psycopg.types.json import Jsonb

from orders import OrderService

WORKERS = 8
KEYS = int(os.environ.get("KEYS", "200"))
APP = "orders-example"  # the workers' application_name: what the chaos thread kills
LOCK_TIMEOUT = "1s"  # how long a retry waits behind an attempt still running

# psycopg logs a warning when the ROLLBACK of a killed connection fails: here
# that is the point.
logging.getLogger("psycopg").setLevel(logging.ERROR)

random.seed(1)
run = f"py-{os.getpid()}"
keys = [f"{run}-{i}" for i in range(KEYS)]
orders = {k: {"customer": i % 50, "product": f"sku-{i % 17}", "qty": 1 + i % 3} for i, k in enumerate(keys)}
# Every key twice, side by side (sent at once by two workers), a quarter of
# them a third time at the end (a late redelivery).
sends = [k for k in keys for _ in range(2)] + random.sample(keys, KEYS // 4)

answers = {}  # key -> [(response, replayed), ...]
errors = []
lock = threading.Lock()
next_send = 0
done = threading.Event()
services = []


def worker(n):
    global next_send
    options = f"-c lock_timeout={LOCK_TIMEOUT}"
    if n % 2:
        options += " -c default_transaction_isolation=serializable"
    service = OrderService("", application_name=APP, options=options)
    with lock:
        services.append(service)
    while True:
        with lock:
            if next_send >= len(sends) or errors:
                return
            key = sends[next_send]
            next_send += 1
        try:
            answer = service.place_order(key, orders[key])
        except Exception as e:  # noqa: BLE001: any failure fails the run
            with lock:
                errors.append(f"{key}: {type(e).__name__}: {getattr(e, 'sqlstate', None)} {e}")
            return
        with lock:
            answers.setdefault(key, []).append(answer)


def chaos(counts):
    """Terminates or cancels a random worker backend that is in a request:
    running a statement (COMMIT too) or between two statements of its
    transaction; not one that waits for a lock, so that the waits behind the
    hung first attempt run into lock_timeout."""
    with psycopg.connect("", autocommit=True, application_name="orders-example-chaos") as conn:
        while not done.wait(0.03):
            cancel = random.random() < 0.25  # a cancel interrupts only a running statement
            action = "pg_cancel_backend" if cancel else "pg_terminate_backend"
            states = "'active'" if cancel else "'active', 'idle in transaction'"
            row = conn.execute(
                f"SELECT {action}(pid) FROM pg_stat_activity"
                f" WHERE application_name = %s AND state IN ({states})"
                " AND wait_event_type IS DISTINCT FROM 'Lock'"
                " ORDER BY random() LIMIT 1",
                (APP,),
            ).fetchone()
            if row and row[0]:
                counts[action] += 1


def hang(key_list, seconds):
    """A first attempt that claims keys and hangs before it rolls back."""
    conn = psycopg.connect("", autocommit=True, application_name="orders-example-hang")
    conn.execute("BEGIN")
    for k in key_list:
        conn.execute("SELECT idem_begin(%s, 'orders', request => %s)", (k, Jsonb(orders[k])))
    return conn, threading.Timer(seconds, conn.execute, ("ROLLBACK",))


def main():
    start = time.monotonic()
    kills = {"pg_terminate_backend": 0, "pg_cancel_backend": 0}
    hung, rollback = hang(keys[:2], 2.5)
    rollback.start()
    threads = [threading.Thread(target=worker, args=(n,)) for n in range(WORKERS)]
    monkey = threading.Thread(target=chaos, args=(kills,))
    for t in threads + [monkey]:
        t.start()
    for t in threads:
        t.join()
    done.set()
    monkey.join()
    rollback.join()
    hung.close()
    seconds = time.monotonic() - start

    retries = {}
    for s in services:
        for cause, n in s.retries.items():
            retries[cause] = retries.get(cause, 0) + n
    failures = list(errors)

    with psycopg.connect("", autocommit=True) as conn:
        placed = {k: (n, i) for k, n, i in conn.execute("SELECT request_key, count(*), min(id) FROM orders GROUP BY 1")}
        for k in keys:
            got = answers.get(k, [])
            n, order_id = placed.get(k, (0, None))
            if n != 1:
                failures.append(f"{k}: {n} orders placed, not 1")
            if len(got) != sends.count(k):
                failures.append(f"{k}: {len(got)} answers for {sends.count(k)} sends")
            if any(r != got[0][0] for r, _ in got):
                failures.append(f"{k}: copies got different answers: {[r for r, _ in got]}")
            answered = (got[0][0] or {}).get("order_id") if got else order_id  # a NULL response: None
            if answered != order_id:
                failures.append(f"{k}: answered order {answered}, placed {order_id}")
            if sum(1 for _, replayed in got if not replayed) > 1:
                failures.append(f"{k}: more than one send placed the order")
        strangers = set(placed) - set(keys)
        if strangers:
            failures.append(f"orders for keys never sent: {sorted(strangers)[:5]}")

        # A key reused with a different request: IK001, raised at once.
        service = OrderService("")
        try:
            service.place_order(keys[0], {"customer": -1, "product": "other", "qty": 9})
            failures.append("a reused key with a different request was accepted")
        except psycopg.DatabaseError as e:
            if e.sqlstate != "IK001" or service.retries:
                failures.append(f"reused key: {e.sqlstate} after {service.retries} retries, not IK001 at once")
        (n,) = conn.execute("SELECT count(*) FROM orders WHERE request_key = %s", (keys[0],)).fetchone()
        if n != 1:
            failures.append(f"the reused key placed {n} orders")

    if kills["pg_terminate_backend"] == 0 or retries.get("connection lost", 0) == 0:
        failures.append("no connection was lost mid-request: the run proved nothing about retries")
    if retries.get("55P03", 0) == 0:
        failures.append("no retry waited behind the hung first attempt (55P03)")

    replays = sum(1 for got in answers.values() for _, r in got if r)
    print(
        f"  psycopg {psycopg.__version__}: {WORKERS} workers sent {len(sends)} requests for {KEYS} keys in {seconds:.1f} s:"
        f" {sum(n for n, _ in placed.values())} orders placed for {len(placed)} keys, {replays} answers replayed"
    )
    print(
        f"  {kills['pg_terminate_backend']} connections killed, {kills['pg_cancel_backend']} statements cancelled;"
        f" retries: " + ", ".join(f"{n} {c}" for c, n in sorted(retries.items()))
    )
    if failures:
        for f in failures[:20]:
            print(f"  FAILED {f}")
        print(f"  {len(failures)} checks failed")
        return 1
    print("  OK   one order per key, every copy got the first answer, a reused key got IK001 (not retried)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
