-- The demo shop: stock, orders, and the stored procedure that places an
-- order exactly once however often the request is retried.
CREATE EXTENSION IF NOT EXISTS pg_idem;
CREATE SCHEMA shop;

CREATE TABLE shop.stock (
    product int PRIMARY KEY,
    units   int NOT NULL CHECK (units >= 0)
);
INSERT INTO shop.stock SELECT p, 10000 FROM generate_series(1, 5) p;
CREATE TABLE shop.initial_stock AS SELECT * FROM shop.stock;

-- No unique constraint on request_key, on purpose: only pg_idem keeps a
-- retried request from ordering twice.
CREATE TABLE shop.orders (
    order_id    bigserial PRIMARY KEY,
    request_key text NOT NULL,
    product     int  NOT NULL,
    qty         int  NOT NULL
);

-- What the shoppers' clients sent and got back (the demo's own bookkeeping).
CREATE TABLE shop.requests_sent (
    request_key text  NOT NULL,
    answer      jsonb NOT NULL
);

-- One round trip places an order: claim the request's key, take the stock,
-- write the order and store the answer, all in the caller's transaction.
-- A retry of the same request gets the first attempt's answer back.
CREATE FUNCTION shop.place_order(request_key text, product int, qty int) RETURNS jsonb
LANGUAGE plpgsql AS $$
DECLARE
    claim  record;
    answer jsonb;
    new_id bigint;
BEGIN
    SELECT * INTO claim
    FROM idem_begin(request_key, 'shop.orders', '1 day',
                    jsonb_build_object('product', product, 'qty', qty));
    IF claim.status = 'replay' THEN
        RETURN claim.response;
    END IF;

    UPDATE shop.stock s SET units = s.units - qty
    WHERE s.product = place_order.product AND s.units >= qty;
    IF NOT FOUND THEN
        answer := jsonb_build_object('status', 'sold_out');
    ELSE
        INSERT INTO shop.orders (request_key, product, qty)
        VALUES (request_key, product, qty)
        RETURNING order_id INTO new_id;
        answer := jsonb_build_object('status', 'ordered', 'order_id', new_id);
    END IF;

    PERFORM idem_finish(request_key, 'shop.orders', answer);
    RETURN answer;
END
$$;
