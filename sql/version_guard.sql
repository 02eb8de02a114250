-- idem_version_guard: a stale write raises 40001 naming both versions; a
-- current one bumps the version; misuse raises 39P01.
-- Races: specs/version-guard-race.spec.
SET client_min_messages = warning;
CREATE EXTENSION IF NOT EXISTS pg_idem;
RESET client_min_messages;
\i test/regress_helpers.sql

CREATE TABLE accounts (id int PRIMARY KEY, balance numeric, version int NOT NULL DEFAULT 1);
CREATE TRIGGER version_guard BEFORE UPDATE ON accounts FOR EACH ROW EXECUTE FUNCTION idem_version_guard();
INSERT INTO accounts VALUES (1, 100);
-- The update carries the version it read: accepted, version + 1.
UPDATE accounts SET balance = 90, version = 1 WHERE id = 1 RETURNING balance, version;
-- An update that does not mention the version carries the stored one: accepted too.
UPDATE accounts SET balance = 80 WHERE id = 1 RETURNING balance, version;
-- A stale version: 40001 naming both, nothing written.
SELECT pg_temp.error_of($$UPDATE accounts SET balance = 0, version = 1 WHERE id = 1$$);
SELECT balance, version FROM accounts;

-- Another column name, and other integer types.
CREATE TABLE docs (id int PRIMARY KEY, body text, rev bigint);
CREATE TRIGGER rev_guard BEFORE UPDATE ON docs FOR EACH ROW EXECUTE FUNCTION idem_version_guard('rev');
INSERT INTO docs VALUES (1, 'a', 41), (2, 'b', NULL);
UPDATE docs SET body = 'A', rev = 41 WHERE id = 1 RETURNING rev;
-- A NULL version starts at 1.
UPDATE docs SET body = 'B' WHERE id = 2 RETURNING rev;
SELECT pg_temp.error_of($$UPDATE docs SET body = 'x', rev = NULL WHERE id = 1$$);
CREATE TABLE tiny (id int PRIMARY KEY, v smallint);
CREATE TRIGGER v_guard BEFORE UPDATE ON tiny FOR EACH ROW EXECUTE FUNCTION idem_version_guard('v');
INSERT INTO tiny VALUES (1, 32767);
SELECT pg_temp.error_of($$UPDATE tiny SET v = 32767 WHERE id = 1$$);

-- A domain version column keeps its constraints: the guard checks them on
-- the version it writes (a CHECK (VALUE < 3) let version 3 be stored).
CREATE DOMAIN small_version AS int CHECK (VALUE < 3);
CREATE TABLE drafts (id int PRIMARY KEY, body text, version small_version NOT NULL);
CREATE TRIGGER version_guard BEFORE UPDATE ON drafts FOR EACH ROW EXECUTE FUNCTION idem_version_guard();
INSERT INTO drafts VALUES (1, 'a', 1);
UPDATE drafts SET body = 'b', version = 1 WHERE id = 1 RETURNING version;
SELECT pg_temp.error_of($$UPDATE drafts SET body = 'c', version = 2 WHERE id = 1$$);
SELECT body, version FROM drafts;

-- Misuse: 39P01.
CREATE TABLE misuse (id int PRIMARY KEY, version int, label text);
INSERT INTO misuse VALUES (1, 1, 'x');
CREATE TRIGGER after_guard AFTER UPDATE ON misuse FOR EACH ROW EXECUTE FUNCTION idem_version_guard();
SELECT pg_temp.error_of($$UPDATE misuse SET label = 'y'$$) AS after_trigger;
DROP TRIGGER after_guard ON misuse;
CREATE TRIGGER statement_guard BEFORE UPDATE ON misuse FOR EACH STATEMENT EXECUTE FUNCTION idem_version_guard();
SELECT pg_temp.error_of($$UPDATE misuse SET label = 'y'$$) AS statement_trigger;
DROP TRIGGER statement_guard ON misuse;
CREATE TRIGGER insert_guard BEFORE INSERT ON misuse FOR EACH ROW EXECUTE FUNCTION idem_version_guard();
SELECT pg_temp.error_of($$INSERT INTO misuse VALUES (2, 1, 'z')$$) AS insert_trigger;
DROP TRIGGER insert_guard ON misuse;
CREATE TRIGGER text_guard BEFORE UPDATE ON misuse FOR EACH ROW EXECUTE FUNCTION idem_version_guard('label');
SELECT pg_temp.error_of($$UPDATE misuse SET label = 'y'$$) AS text_column;
DROP TRIGGER text_guard ON misuse;
CREATE TRIGGER missing_guard BEFORE UPDATE ON misuse FOR EACH ROW EXECUTE FUNCTION idem_version_guard('nope');
SELECT pg_temp.error_of($$UPDATE misuse SET label = 'y'$$) AS missing_column;
DROP TRIGGER missing_guard ON misuse;
CREATE TRIGGER two_args BEFORE UPDATE ON misuse FOR EACH ROW EXECUTE FUNCTION idem_version_guard('version', 'extra');
SELECT pg_temp.error_of($$UPDATE misuse SET label = 'y'$$) AS two_arguments;
DROP TRIGGER two_args ON misuse;
SELECT pg_temp.error_of($$SELECT idem_version_guard()$$) AS called_directly;
-- A generated version column is computed after BEFORE triggers, so the
-- guard's version would be overwritten.
CREATE TABLE generated_version (id int PRIMARY KEY, n int, version int GENERATED ALWAYS AS (n * 2) STORED);
INSERT INTO generated_version (id, n) VALUES (1, 1);
CREATE TRIGGER generated_guard BEFORE UPDATE ON generated_version FOR EACH ROW EXECUTE FUNCTION idem_version_guard();
SELECT pg_temp.error_of($$UPDATE generated_version SET n = 2$$) AS generated_column;

DROP TABLE accounts, docs, tiny, drafts, misuse, generated_version;
DROP DOMAIN small_version;
