-- Tables and functions the benchmark workloads use (bench/run).
CREATE EXTENSION IF NOT EXISTS pg_idem;

-- (a) The hand-written dedup table and the one-statement TTL-aware upsert
-- an expert writes instead of idem_claim.
CREATE TABLE expert_dedup (
    key        text PRIMARY KEY,
    claimed_at timestamptz NOT NULL DEFAULT now(),
    expires_at timestamptz
);

-- (b) The same logic as idem_claim, written in PL/pgSQL.
CREATE TABLE plpgsql_dedup (LIKE expert_dedup INCLUDING ALL);
CREATE FUNCTION plpgsql_claim(k text, ttl interval) RETURNS boolean LANGUAGE plpgsql AS $$
DECLARE
    t timestamptz := clock_timestamp();
    e timestamptz;
BEGIN
    INSERT INTO plpgsql_dedup (key, claimed_at, expires_at) VALUES (k, t, t + ttl) ON CONFLICT DO NOTHING;
    IF FOUND THEN RETURN true; END IF;
    SELECT expires_at INTO e FROM plpgsql_dedup WHERE key = k;
    IF e IS NULL OR e > t THEN RETURN false; END IF;
    UPDATE plpgsql_dedup SET claimed_at = t, expires_at = t + ttl WHERE key = k AND expires_at <= t;
    RETURN FOUND;
END $$;

-- Duplicates: 100,000 keys claimed once beforehand, in each design.
SELECT count(idem_claim('dup-' || g, 'bench', '1 day')) FROM generate_series(1, 100000) g;
INSERT INTO expert_dedup (key, expires_at) SELECT 'dup-' || g, now() + interval '1 day' FROM generate_series(1, 100000) g;

-- An order system: stock spread over 1,000 products, orders appended.
CREATE TABLE stock (sku int PRIMARY KEY, amount bigint NOT NULL);
INSERT INTO stock SELECT g, 1000000000 FROM generate_series(1, 1000) g;
CREATE TABLE orders (id bigserial PRIMARY KEY, request_key text, sku int, qty int);
CREATE FUNCTION place_order_plain(k text, p_sku int, p_qty int) RETURNS boolean LANGUAGE plpgsql AS $$
BEGIN
    UPDATE stock SET amount = amount - p_qty WHERE sku = p_sku AND amount >= p_qty;
    INSERT INTO orders (request_key, sku, qty) VALUES (k, p_sku, p_qty);
    RETURN true;
END $$;
CREATE FUNCTION place_order_claimed(k text, p_sku int, p_qty int) RETURNS boolean LANGUAGE plpgsql AS $$
BEGIN
    IF NOT idem_claim(k, 'orders', '1 day') THEN
        RETURN false;
    END IF;
    UPDATE stock SET amount = amount - p_qty WHERE sku = p_sku AND amount >= p_qty;
    INSERT INTO orders (request_key, sku, qty) VALUES (k, p_sku, p_qty);
    RETURN true;
END $$;

-- Hot stock: one item, as one row and as a pg_idem hot-stock item.
CREATE TABLE hot_row (sku int PRIMARY KEY, amount bigint NOT NULL);
INSERT INTO hot_row VALUES (1, 1000000000);
SELECT idem_stock_add('hot', 1000000000);
VACUUM ANALYZE;

-- Multi-step requests: 100,000 keys completed beforehand, replayed through
-- idem_hold and through idem_begin.
SELECT count(*) FROM (
    SELECT idem_complete(k, 'bench', fence, '{"ok": true}')
    FROM (SELECT k, (SELECT fence FROM idem_hold(k, 'bench', ttl => '1 day')) AS fence
          FROM (SELECT 'done-' || g AS k FROM generate_series(1, 100000) g) keys) held) completed;
