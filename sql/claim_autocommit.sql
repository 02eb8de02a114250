-- A claim that would commit on its own (SPEC "Claims"): a client's own
-- statement outside a transaction block fails with 25P01 and its claim rolls
-- back, unless pg_idem.allow_autocommit = on. Calls from functions,
-- procedures, DO blocks and transaction blocks are unaffected.
-- (test/protocol/autocommit.cpp covers the extended protocol and pipelines.)
SET client_min_messages = warning;
CREATE EXTENSION IF NOT EXISTS pg_idem;
RESET client_min_messages;
-- The tests run with it on (Makefile): this one tests the default.
SET pg_idem.allow_autocommit = off;
CREATE TABLE ac_orders (key text PRIMARY KEY);

-- Alone in autocommit: refused, and nothing is left claimed.
SELECT idem_claim('ac-1');
SELECT * FROM idem_begin('ac-2');
SELECT * FROM idem_claim_many(ARRAY['ac-3', 'ac-4']);
SELECT count(*) AS left_claimed FROM idem_claims WHERE key LIKE 'ac-%';
-- A SQL function that only claims is inlined into the statement: the same.
CREATE FUNCTION ac_only_claim(k text) RETURNS boolean LANGUAGE sql AS $$ SELECT idem_claim(k) $$;
SELECT ac_only_claim('ac-5');

-- In a transaction block, or with the business write in one statement,
-- or in a multi-statement query string (one implicit transaction): fine.
BEGIN;
SELECT idem_claim('ac-6');
INSERT INTO ac_orders VALUES ('ac-6');
COMMIT;
WITH c AS (SELECT idem_claim('ac-7') AS new) INSERT INTO ac_orders SELECT 'ac-7' FROM c WHERE new;
SELECT idem_claim('ac-8') \; INSERT INTO ac_orders VALUES ('ac-8');

-- From a function, a procedure or a DO block: fine.
CREATE FUNCTION ac_place(k text) RETURNS boolean LANGUAGE plpgsql AS $$
BEGIN
    IF idem_claim(k) THEN
        INSERT INTO ac_orders VALUES (k);
        RETURN true;
    END IF;
    RETURN false;
END $$;
SELECT ac_place('ac-9');
SELECT ac_place('ac-9');
CREATE PROCEDURE ac_place_proc(k text) LANGUAGE plpgsql AS $$
BEGIN
    IF idem_claim(k) THEN
        INSERT INTO ac_orders VALUES (k);
    END IF;
END $$;
CALL ac_place_proc('ac-10');
DO $$ BEGIN PERFORM idem_claim('ac-11'); END $$;

-- With pg_idem.allow_autocommit = on the claim commits on its own.
SET pg_idem.allow_autocommit = on;
SELECT idem_claim('ac-12');
RESET pg_idem.allow_autocommit;

SELECT key FROM idem_claims WHERE key LIKE 'ac-%' ORDER BY key;
SELECT key FROM ac_orders ORDER BY key;
DROP TABLE ac_orders;
DROP FUNCTION ac_only_claim(text);
DROP FUNCTION ac_place(text);
DROP PROCEDURE ac_place_proc(text);
