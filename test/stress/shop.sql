-- The shop the stress client (idem_stress) and the demo run against: stock,
-- orders, and the stored procedure that places an order exactly once
-- however often its request is retried. idem_stress --setup runs this file,
-- then stocks the 50 products.
DROP SCHEMA IF EXISTS shop CASCADE;
CREATE EXTENSION IF NOT EXISTS pg_idem;
DELETE FROM idem_claims WHERE scope = 'shop.orders';  -- an earlier run's requests
CREATE SCHEMA shop;

-- No CHECK (amount >= 0), on purpose: only idem_decrement keeps the stock
-- from going below zero, and the stress client checks that it did.
CREATE TABLE shop.stock (
    sku    int    PRIMARY KEY,
    amount bigint NOT NULL
);
CREATE TABLE shop.initial_stock (LIKE shop.stock);

-- No unique constraint on request_key, on purpose: only pg_idem keeps a
-- retried request from ordering twice.
CREATE TABLE shop.orders (
    order_id    bigserial PRIMARY KEY,
    request_key text NOT NULL,
    sku         int  NOT NULL,
    qty         int  NOT NULL
);

-- One round trip, one transaction: claim the request's key, take the stock,
-- write the order, store the answer with the claim. A retry of a request
-- that committed gets the first attempt's answer back and writes nothing;
-- a retry of one that rolled back (a crash, a dropped connection) does it.
-- "Sold out" is an answer too: it commits with the claim, so a retry hears
-- it again instead of buying what a restock brought in meanwhile.
CREATE FUNCTION shop.place_order(request_key text, p_sku int, p_qty int,
                                 OUT status text, OUT order_id bigint, OUT replayed boolean)
LANGUAGE plpgsql AS $$
DECLARE
    claim record;
BEGIN
    SELECT * INTO claim FROM idem_begin(request_key, 'shop.orders', '1 day',
                                        jsonb_build_object('sku', p_sku, 'qty', p_qty));
    replayed := claim.status = 'replay';
    IF replayed THEN
        status := claim.response ->> 'status';
        order_id := (claim.response ->> 'order_id')::bigint;
        RETURN;
    END IF;

    IF idem_decrement('shop.stock', 'sku', p_sku, 'amount', p_qty) IS NULL THEN
        status := 'sold out';
    ELSE
        INSERT INTO shop.orders (request_key, sku, qty) VALUES (request_key, p_sku, p_qty)
        RETURNING orders.order_id INTO order_id;
        status := 'ordered';
    END IF;
    PERFORM idem_finish(request_key, 'shop.orders',
                        jsonb_build_object('status', status, 'order_id', order_id));
END
$$;
