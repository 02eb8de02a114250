// An order request handler that uses pg_idem with node-postgres (npm's pg).
//
// placeOrder() places an order exactly once per request key, however often
// the same request arrives (a client retrying after a timeout, a double
// click, a redelivered message), and answers every copy with the first answer.
//
//   const service = new OrderService({});   // pg.Client's config; {} reads PG*
//   const { response, replayed } = await service.placeOrder('req-1', { customer: 7, product: 'book', qty: 2 });
//
// examples/node/driver.js runs it with 8 workers, duplicates and dropped
// connections, and checks that every key placed one order.
'use strict';

const { Client } = require('pg');

// What the client does on each error (README: "Calling pg_idem from an
// application"); node-postgres puts the SQLSTATE in err.code.
// Retried at once, with a short pause: the whole transaction runs again from
// BEGIN, so everything it read is read again (a 40001 from idem_version_guard
// means "the row you read is stale": resending the same UPDATE would fail again).
const RETRY_NOW = new Set([
  '40001', // serialization failure: a claim committed after this transaction's snapshot, a stale version
  '40P01', // deadlock detected
  '57014', // statement timeout, or the statement was cancelled
]);
// Retried after a longer pause: another transaction holds the key and has not
// ended (the first attempt is still running, or hangs).
const RETRY_LATER = new Set(['55P03']); // lock_timeout (or pg_idem's own wait limit) ran out
// Everything else is thrown to the caller, never retried: IK001 (the key was
// reused with a different request: a client bug), IK002, IK003, and the
// argument errors (22xxx, 42xxx) fail the same way every time.

// The session is gone: the server ended it (57P01 admin_shutdown, 57P02
// crash_shutdown) or cannot be reached (08xxx). A socket error or a closed
// client sets `broken` (below) instead.
const CONNECTION_LOST = /^(08|57P0[12])/;

const MAX_ATTEMPTS = 30;

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

class OrderService {
  // One connection, used by one request at a time.
  constructor(config) {
    this.config = config;
    this.client = null;
    this.broken = false;
    this.retries = {}; // cause -> count, for the driver's report
  }

  async connection() {
    if (this.client && !this.broken) return this.client;
    if (this.client) this.client.end().catch(() => {});
    const client = new Client(this.config);
    this.broken = false;
    // A connection that dies emits 'error' (unhandled, it would end the
    // process) whether or not a query was running: mark it for reconnecting.
    client.on('error', () => { if (this.client === client) this.broken = true; });
    client.on('end', () => { if (this.client === client) this.broken = true; });
    this.client = client;
    try {
      await client.connect();
    } catch (err) {
      this.broken = true; // not up (yet): the retry connects again
      throw err;
    }
    return client;
  }

  // Resolves to { response, replayed }: the stored response, and whether it
  // came from an earlier attempt of this request rather than this call.
  async placeOrder(key, order) {
    for (let attempt = 1; ; attempt++) {
      let pause;
      try {
        return await this.attempt(key, order);
      } catch (err) {
        if (this.broken || CONNECTION_LOST.test(err.code)) {
          this.broken = true;
          // Connection lost (killed, server restarted, network), also during
          // COMMIT, when nobody knows whether it committed: reconnect and
          // send the same key; the retry finds out.
          this.count('connection lost');
          pause = 10;
        } else if (RETRY_NOW.has(err.code)) {
          this.count(err.code);
          pause = 10;
        } else if (RETRY_LATER.has(err.code)) {
          this.count(err.code);
          pause = 200;
        } else {
          throw err; // IK001, IK002, IK003, ...: never retried
        }
        if (attempt === MAX_ATTEMPTS) throw err;
      }
      // Back off, with jitter, so that retries do not arrive in step.
      await sleep(Math.min(1000, pause * 2 ** Math.min(attempt, 6)) * (0.5 + Math.random()));
    }
  }

  async attempt(key, order) {
    const client = await this.connection();
    // One transaction: the claim, the order and the stored response commit
    // together or not at all. node-postgres runs every statement in
    // autocommit unless BEGIN is sent: never call idem_begin without it, the
    // claim would commit alone, before the order.
    await client.query('BEGIN');
    try {
      const claim = await client.query(
        "SELECT status, response FROM idem_begin($1, 'orders', request => $2)", [key, order]);
      const { status, response } = claim.rows[0];
      if (status === 'replay') {
        await client.query('COMMIT');
        return { response, replayed: true };
      }
      // 'new' (idem_begin waits for a first attempt still running, so
      // 'in_progress' comes only with wait => false).
      const placed = await client.query(
        'INSERT INTO orders (request_key, customer, product, qty) VALUES ($1, $2, $3, $4) RETURNING id',
        [key, order.customer, order.product, order.qty]);
      const stored = { order_id: Number(placed.rows[0].id), status: 'placed' };
      await client.query("SELECT idem_finish($1, 'orders', $2)", [key, stored]);
      await client.query('COMMIT');
      return { response: stored, replayed: false };
    } catch (err) {
      if (!this.broken) await client.query('ROLLBACK').catch(() => {});
      throw err;
    }
  }

  count(cause) {
    this.retries[cause] = (this.retries[cause] || 0) + 1;
  }

  async close() {
    if (this.client) await this.client.end().catch(() => {});
  }
}

module.exports = { OrderService };
