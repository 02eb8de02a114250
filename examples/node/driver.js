// Runs examples/node/orders.js the way production would, and checks it.
//
// 8 workers send every request key at least twice: the two copies of a key
// side by side, so two workers send them at the same moment, and some keys
// a third time at the end (a redelivery). Meanwhile a chaos loop terminates
// workers' connections in the middle of requests (pg_terminate_backend) and
// cancels some of their statements (pg_cancel_backend), a first attempt
// hangs on two keys for a while (the retries behind it get 55P03), and half
// the workers run at SERIALIZABLE, where a duplicate racing the first
// attempt gets 40001. At the end: exactly one order per key, every copy of a
// request got the first answer, and a key reused with a different request
// fails with IK001 without being retried. Exits 1 if any check fails.
//
// Connects with libpq's PG* environment variables (examples/run sets them).
'use strict';

const { Client } = require('pg');
const { OrderService } = require('./orders');

const WORKERS = 8;
const KEYS = Number(process.env.KEYS || 200);
const APP = 'orders-example'; // the workers' application_name: what the chaos loop kills
const LOCK_TIMEOUT = '1s'; // how long a retry waits behind an attempt still running

// A seeded generator (mulberry32), so that every run sends the same stream.
let seed = 1;
function random() {
  seed = (seed + 0x6d2b79f5) | 0;
  let t = Math.imul(seed ^ (seed >>> 15), 1 | seed);
  t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
  return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
}
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
// JSON with every object's keys sorted: the response a first attempt built
// and the one a replay parsed from jsonb list the same keys in another order.
const canonical = (v) => JSON.stringify(v, (_, x) =>
  x && typeof x === 'object' && !Array.isArray(x) ? Object.fromEntries(Object.entries(x).sort()) : x);

const run = `js-${process.pid}`;
const keys = Array.from({ length: KEYS }, (_, i) => `${run}-${i}`);
const orders = new Map(keys.map((k, i) => [k, { customer: i % 50, product: `sku-${i % 17}`, qty: 1 + (i % 3) }]));
// Every key twice, side by side (sent at once by two workers), a quarter of
// them a third time at the end (a late redelivery).
const sends = keys.flatMap((k) => [k, k]);
for (const k of [...keys].sort(() => random() - 0.5).slice(0, KEYS >> 2)) sends.push(k);

const answers = new Map(); // key -> [{ response, replayed }, ...]
const errors = [];
const services = [];
let nextSend = 0;
let done = false;

async function worker(n) {
  let options = `-c lock_timeout=${LOCK_TIMEOUT}`;
  if (n % 2) options += ' -c default_transaction_isolation=serializable';
  const service = new OrderService({ application_name: APP, options });
  services.push(service);
  while (nextSend < sends.length && errors.length === 0) {
    const key = sends[nextSend++];
    try {
      const answer = await service.placeOrder(key, orders.get(key));
      if (!answers.has(key)) answers.set(key, []);
      answers.get(key).push(answer);
    } catch (err) {
      errors.push(`${key}: ${err.code} ${err.message}`);
    }
  }
  await service.close();
}

// Terminates or cancels a random worker backend that is in a request:
// running a statement (COMMIT too) or between two statements of its
// transaction; not one that waits for a lock, so that the waits behind the
// hung first attempt run into lock_timeout.
async function chaos(counts) {
  const client = new Client({ application_name: 'orders-example-chaos' });
  await client.connect();
  while (!done) {
    await sleep(30);
    const cancel = random() < 0.25; // a cancel interrupts only a running statement
    const action = cancel ? 'pg_cancel_backend' : 'pg_terminate_backend';
    const result = await client.query(
      `SELECT ${action}(pid) AS ok FROM pg_stat_activity
       WHERE application_name = $1 AND state IN ('active' ${cancel ? '' : ", 'idle in transaction'"})
         AND wait_event_type IS DISTINCT FROM 'Lock'
       ORDER BY random() LIMIT 1`, [APP]);
    if (result.rows.length && result.rows[0].ok) counts[action]++;
  }
  await client.end();
}

// A first attempt that claims keys and hangs before it rolls back: resolves
// once the keys are claimed, to { over }, which resolves after the rollback.
async function hang(keyList, ms) {
  const client = new Client({ application_name: 'orders-example-hang' });
  await client.connect();
  await client.query('BEGIN');
  for (const k of keyList) await client.query("SELECT idem_begin($1, 'orders', request => $2)", [k, orders.get(k)]);
  const over = sleep(ms).then(() => client.query('ROLLBACK')).then(() => client.end());
  return { over };
}

async function main() {
  const start = Date.now();
  const kills = { pg_terminate_backend: 0, pg_cancel_backend: 0 };
  const hung = await hang(keys.slice(0, 2), 2500);
  const monkey = chaos(kills);
  await Promise.all(Array.from({ length: WORKERS }, (_, n) => worker(n)));
  done = true;
  await Promise.all([monkey, hung.over]);
  const seconds = (Date.now() - start) / 1000;

  const retries = {};
  for (const s of services) for (const [cause, n] of Object.entries(s.retries)) retries[cause] = (retries[cause] || 0) + n;
  const failures = [...errors];

  const client = new Client({});
  await client.connect();
  const placed = new Map();
  for (const row of (await client.query('SELECT request_key, count(*)::int AS n, min(id)::int AS id FROM orders GROUP BY 1')).rows)
    placed.set(row.request_key, row);
  const sent = new Map();
  for (const k of sends) sent.set(k, (sent.get(k) || 0) + 1);
  for (const k of keys) {
    const got = answers.get(k) || [];
    const { n, id } = placed.get(k) || { n: 0, id: null };
    if (n !== 1) failures.push(`${k}: ${n} orders placed, not 1`);
    if (got.length !== sent.get(k)) failures.push(`${k}: ${got.length} answers for ${sent.get(k)} sends`);
    const first = got.length ? canonical(got[0].response) : null;
    if (got.some((a) => canonical(a.response) !== first)) failures.push(`${k}: copies got different answers: ${got.map((a) => canonical(a.response))}`);
    const answered = got.length ? got[0].response?.order_id : id; // a NULL response: undefined
    if (answered !== id) failures.push(`${k}: answered order ${answered}, placed ${id}`);
    if (got.filter((a) => !a.replayed).length > 1) failures.push(`${k}: more than one send placed the order`);
  }
  const strangers = [...placed.keys()].filter((k) => !orders.has(k));
  if (strangers.length) failures.push(`orders for keys never sent: ${strangers.slice(0, 5)}`);

  // A key reused with a different request: IK001, thrown at once.
  const service = new OrderService({});
  try {
    await service.placeOrder(keys[0], { customer: -1, product: 'other', qty: 9 });
    failures.push('a reused key with a different request was accepted');
  } catch (err) {
    if (err.code !== 'IK001' || Object.keys(service.retries).length)
      failures.push(`reused key: ${err.code} after ${JSON.stringify(service.retries)} retries, not IK001 at once`);
  }
  await service.close();
  const reused = await client.query('SELECT count(*)::int AS n FROM orders WHERE request_key = $1', [keys[0]]);
  if (reused.rows[0].n !== 1) failures.push(`the reused key placed ${reused.rows[0].n} orders`);
  await client.end();

  if (kills.pg_terminate_backend === 0 || !retries['connection lost'])
    failures.push('no connection was lost mid-request: the run proved nothing about retries');
  if (!retries['55P03']) failures.push('no retry waited behind the hung first attempt (55P03)');

  const replays = [...answers.values()].flat().filter((a) => a.replayed).length;
  const version = require('pg/package.json').version;
  console.log(`  node-postgres ${version} (node ${process.version}): ${WORKERS} workers sent ${sends.length} requests` +
    ` for ${KEYS} keys in ${seconds.toFixed(1)} s: ${[...placed.values()].reduce((sum, row) => sum + row.n, 0)} orders placed for ${placed.size} keys, ${replays} answers replayed`);
  console.log(`  ${kills.pg_terminate_backend} connections killed, ${kills.pg_cancel_backend} statements cancelled;` +
    ` retries: ${Object.entries(retries).sort().map(([c, n]) => `${n} ${c}`).join(', ')}`);
  if (failures.length) {
    for (const f of failures.slice(0, 20)) console.log(`  FAILED ${f}`);
    console.log(`  ${failures.length} checks failed`);
    return 1;
  }
  console.log('  OK   one order per key, every copy got the first answer, a reused key got IK001 (not retried)');
  return 0;
}

main().then((status) => { process.exitCode = status; }, (err) => { console.error(err); process.exitCode = 1; });
