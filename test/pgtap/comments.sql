-- Every object of the extension carries a COMMENT, so that \df+ and \d+
-- explain it (SPEC "Observability"): every function (each overload), table,
-- view and sequence, and every column of a table or view. The objects are
-- found in the catalog, not listed here, so an object added later without a
-- COMMENT fails this suite, which names it.
\i settings.psql

BEGIN;
CREATE EXTENSION pg_idem;
SELECT plan(14);

-- The extension's members (pg_depend deptype 'e'), and the columns of its
-- tables and views.
CREATE TEMP VIEW idem_members AS
SELECT d.classid, d.objid, pg_catalog.pg_describe_object(d.classid, d.objid, 0) AS object,
       c.relkind,
       (SELECT description FROM pg_catalog.pg_description
        WHERE classoid = d.classid AND objoid = d.objid AND objsubid = 0) AS comment
FROM pg_catalog.pg_depend d
LEFT JOIN pg_catalog.pg_class c ON d.classid = 'pg_catalog.pg_class'::regclass AND c.oid = d.objid
WHERE d.refclassid = 'pg_catalog.pg_extension'::regclass
  AND d.refobjid = (SELECT oid FROM pg_catalog.pg_extension WHERE extname = 'pg_idem')
  AND d.deptype = 'e';
CREATE TEMP VIEW idem_member_columns AS
SELECT m.relkind, m.objid::regclass::text || '.' || a.attname AS object,
       pg_catalog.col_description(m.objid, a.attnum) AS comment
FROM idem_members m
JOIN pg_catalog.pg_attribute a ON a.attrelid = m.objid AND a.attnum > 0 AND NOT a.attisdropped
WHERE m.relkind IN ('r', 'p', 'v', 'm');

-- Not vacuous: the catalog query finds every kind of object.
SELECT ok((SELECT count(*) FILTER (WHERE classid = 'pg_catalog.pg_proc'::regclass) >= 20
              AND count(*) FILTER (WHERE relkind = 'r') >= 5
              AND count(*) FILTER (WHERE relkind = 'v') >= 3
              AND count(*) FILTER (WHERE relkind = 'S') >= 1
           FROM idem_members),
          'the extension''s functions, tables, views and sequence are found in pg_depend');
SELECT ok((SELECT count(*) FILTER (WHERE relkind = 'r') >= 20 AND count(*) FILTER (WHERE relkind = 'v') >= 20
           FROM idem_member_columns),
          'and the columns of its tables and views');

-- None lacks a COMMENT: on failure, the objects without one.
SELECT is((SELECT array_agg(objid::regprocedure::text ORDER BY 1) FROM idem_members
           WHERE classid = 'pg_catalog.pg_proc'::regclass AND comment IS NULL),
          NULL, 'every function (each overload) has a COMMENT');
SELECT is((SELECT array_agg(object ORDER BY 1) FROM idem_members
           WHERE relkind IN ('r', 'p') AND comment IS NULL),
          NULL, 'every table has a COMMENT');
SELECT is((SELECT array_agg(object ORDER BY 1) FROM idem_members
           WHERE relkind IN ('v', 'm') AND comment IS NULL),
          NULL, 'every view has a COMMENT');
SELECT is((SELECT array_agg(object ORDER BY 1) FROM idem_members
           WHERE relkind = 'S' AND comment IS NULL),
          NULL, 'every sequence has a COMMENT');
SELECT is((SELECT array_agg(object ORDER BY 1) FROM idem_member_columns
           WHERE relkind IN ('r', 'p') AND comment IS NULL),
          NULL, 'every column of every table has a COMMENT');
SELECT is((SELECT array_agg(object ORDER BY 1) FROM idem_member_columns
           WHERE relkind IN ('v', 'm') AND comment IS NULL),
          NULL, 'every column of every view has a COMMENT');
-- (A table's or view's row type and every array type are members too, made
-- implicitly: \dT does not list them, and they need none.)
SELECT is((SELECT array_agg(object ORDER BY 1) FROM idem_members m
           WHERE classid <> 'pg_catalog.pg_proc'::regclass
             AND (relkind IS NULL OR relkind NOT IN ('r', 'p', 'v', 'm', 'S'))
             AND NOT EXISTS (SELECT FROM pg_catalog.pg_type t
                             WHERE m.classid = 'pg_catalog.pg_type'::regclass AND t.oid = m.objid
                               AND (t.typrelid <> 0
                                    OR EXISTS (SELECT FROM pg_catalog.pg_type e WHERE e.typarray = t.oid)))
             AND comment IS NULL),
          NULL, 'every other member of the extension (a type, an operator, ...) has a COMMENT');

-- psql shows one line per object: no comment spans lines or runs long.
SELECT is((SELECT array_agg(object ORDER BY 1)
           FROM (SELECT object, comment FROM idem_members UNION ALL
                 SELECT object, comment FROM idem_member_columns) o
           WHERE comment ~ '\n' OR length(comment) > 120),
          NULL, 'every COMMENT is one line of at most 120 characters');

-- What \df+ and \d+ show (they read obj_description and col_description).
SELECT is(obj_description('idem_claim(text, text, interval)'::regprocedure, 'pg_proc'),
          'Claims (scope, key) for this transaction: true, do the business write in it; false, a duplicate: skip it',
          '\df+ idem_claim describes it');
SELECT matches(obj_description('idem_claims'::regclass, 'pg_class'), '^The dedup table',
               '\d+ shows what idem_claims is');
SELECT matches(col_description('idem_claims'::regclass,
                               (SELECT attnum FROM pg_attribute
                                WHERE attrelid = 'idem_claims'::regclass AND attname = 'expires_at')),
               'NULL: never expires', '\d+ idem_claims says what a NULL expires_at means');
SELECT matches(col_description('idem_stats'::regclass,
                               (SELECT attnum FROM pg_attribute
                                WHERE attrelid = 'idem_stats'::regclass AND attname = 'request_mismatches')),
               'IK001', '\d+ idem_stats explains each counter');

SELECT * FROM finish();
ROLLBACK;
