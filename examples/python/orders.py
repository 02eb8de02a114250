"""An order request handler that uses pg_idem with psycopg 3.

place_order() places an order exactly once per request key, however often
the same request arrives (a client retrying after a timeout, a double click,
a redelivered message), and answers every copy with the first answer.

    service = OrderService("")          # libpq's connection string; "" reads PG*
    response, replayed = service.place_order("req-1", {"customer": 7, "product": "book", "qty": 2})

examples/python/driver.py runs it with 8 workers, duplicates and dropped
connections, and checks that every key placed one order.
"""

import random
import time

import psycopg
from psycopg.types.json import Jsonb

# What the client does on each error (README: "Calling pg_idem from an application").
# Retried at once, with a short pause: the whole transaction runs again from
# BEGIN, so everything it read is read again (a 40001 from idem_version_guard
# means "the row you read is stale": resending the same UPDATE would fail again).
RETRY_NOW = {
    "40001",  # serialization failure: a claim committed after this transaction's snapshot, a stale version
    "40P01",  # deadlock detected
    "57014",  # statement timeout, or the statement was cancelled
}
# Retried after a longer pause: another transaction holds the key and has not
# ended (the first attempt is still running, or hangs).
RETRY_LATER = {"55P03"}  # lock_timeout (or pg_idem's own wait limit) ran out
# Everything else is raised to the caller, never retried: IK001 (the key was
# reused with a different request: a client bug), IK002, IK003, and the
# argument errors (22xxx, 42xxx) fail the same way every time.

MAX_ATTEMPTS = 30


class OrderService:
    """One connection, used by one thread at a time."""

    def __init__(self, conninfo="", **connect_args):
        self.conninfo = conninfo
        self.connect_args = connect_args
        self.conn = None
        self.retries = {}  # cause -> count, for the driver's report

    def _connection(self):
        if self.conn is None or self.conn.closed:
            # autocommit: psycopg sends nothing on its own; conn.transaction()
            # below sends BEGIN and COMMIT.
            self.conn = psycopg.connect(self.conninfo, autocommit=True, **self.connect_args)
        return self.conn

    def place_order(self, key, order):
        """Returns (response, replayed): the stored response, and whether it
        came from an earlier attempt of this request rather than this call."""
        for attempt in range(1, MAX_ATTEMPTS + 1):
            try:
                conn = self._connection()
                # One transaction: the claim, the order and the stored response
                # commit together or not at all. Never call idem_begin in
                # autocommit: the claim would commit alone, before the order.
                with conn.transaction():
                    status, response = conn.execute(
                        "SELECT status, response FROM idem_begin(%s, 'orders', request => %s)",
                        (key, Jsonb(order)),
                    ).fetchone()
                    if status == "replay":
                        return response, True
                    # 'new' (idem_begin waits for a first attempt still running,
                    # so 'in_progress' comes only with wait => false).
                    (order_id,) = conn.execute(
                        "INSERT INTO orders (request_key, customer, product, qty)"
                        " VALUES (%s, %s, %s, %s) RETURNING id",
                        (key, order["customer"], order["product"], order["qty"]),
                    ).fetchone()
                    response = {"order_id": order_id, "status": "placed"}
                    conn.execute("SELECT idem_finish(%s, 'orders', %s)", (key, Jsonb(response)))
                return response, False  # COMMIT succeeded
            except (psycopg.Error, AssertionError) as e:
                if isinstance(e, AssertionError):
                    # psycopg 3.1 can fail an internal assertion in its
                    # transaction block when the server ends the connection
                    # under it (pg_terminate_backend during COMMIT or
                    # ROLLBACK): the connection's state is unknown, so drop
                    # it and treat this as a lost connection.
                    if self.conn is not None:
                        self.conn.close()
                if self.conn is None or self.conn.closed:
                    # Connection lost (killed, server restarted, network), also
                    # during COMMIT, when nobody knows whether it committed:
                    # reconnect and send the same key; the retry finds out.
                    cause, pause = "connection lost", 0.01
                elif e.sqlstate in RETRY_NOW:
                    cause, pause = e.sqlstate, 0.01
                elif e.sqlstate in RETRY_LATER:
                    cause, pause = e.sqlstate, 0.2
                else:
                    raise  # IK001, IK002, IK003, ...: never retried
                self.retries[cause] = self.retries.get(cause, 0) + 1
                if attempt == MAX_ATTEMPTS:
                    raise
            # Back off, with jitter, so that retries do not arrive in step.
            time.sleep(min(1.0, pause * 2 ** min(attempt, 6)) * random.uniform(0.5, 1.5))
