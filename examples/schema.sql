-- The database the client examples run against (examples/run creates one
-- database per example and loads this into it).
CREATE EXTENSION IF NOT EXISTS pg_idem;

-- The business table: one row per order placed. request_key records which
-- request placed it; it has no unique index on purpose, so that the
-- examples' check sees an order placed twice for one key instead of a
-- unique violation hiding it.
CREATE TABLE orders (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    request_key text NOT NULL,
    customer    int NOT NULL,
    product     text NOT NULL,
    qty         int NOT NULL,
    placed_at   timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE INDEX ON orders (request_key);

-- For the examples' drivers: each order takes a few milliseconds to write,
-- as a business write with more to do would, so that the connections the
-- drivers kill and the statements they cancel are often in the middle of
-- one.
CREATE FUNCTION orders_slow_write() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_sleep(0.005);
    RETURN NEW;
END
$$;
CREATE TRIGGER orders_slow_write BEFORE INSERT ON orders FOR EACH ROW EXECUTE FUNCTION orders_slow_write();
