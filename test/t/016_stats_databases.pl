# Statistics per database, in a small scope table (pg_idem.max_scopes = 10):
# each database's views show its own counters only and idem_stats_reset()
# resets only its own; a flood of one-event scopes, rolled back or committed,
# never pushes a busier scope out of idem_scope_stats, a busy scope started
# after a flood shows, and idem_stats says how many scopes (and how many of
# their events) were dropped.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

my $node = PostgreSQL::Test::Cluster->new('stats_databases');
$node->init;
$node->append_conf('postgresql.conf', qq{
shared_preload_libraries = 'pg_idem'
pg_idem.max_scopes = 10
pg_idem.database = ''
});
$node->start;
$node->safe_psql('postgres', 'CREATE EXTENSION pg_idem; CREATE DATABASE shop');
$node->safe_psql('shop', 'CREATE EXTENSION pg_idem');

# Counters per database.
$node->safe_psql('postgres', q{SELECT idem_claim('o-' || g, 'orders') FROM generate_series(1, 3) g; SELECT idem_claim('o-1', 'orders')});
$node->safe_psql('shop', q{SELECT idem_claim('c-' || g, 'carts') FROM generate_series(1, 5) g; SELECT idem_token_issue('carts')});
is($node->safe_psql('postgres', q{SELECT new_claims, duplicates, tokens_issued FROM idem_stats}),
	'3|1|0', 'idem_stats shows the counters of its own database');
is($node->safe_psql('shop', q{SELECT new_claims, duplicates, tokens_issued FROM idem_stats}),
	'5|0|1', 'and of the other database there');
is($node->safe_psql('postgres', q{SELECT string_agg(scope || '=' || new_claims, ',' ORDER BY scope) FROM idem_scope_stats}),
	'orders=3', 'idem_scope_stats shows only the scopes of its own database');
is($node->safe_psql('shop', q{SELECT string_agg(scope || '=' || new_claims || '/' || tokens_issued, ',' ORDER BY scope) FROM idem_scope_stats}),
	'carts=5/1', 'in each database');
# The same scope name in two databases is two scopes.
$node->safe_psql('shop', q{SELECT idem_claim('x', 'orders')});
is($node->safe_psql('postgres', q{SELECT new_claims FROM idem_scope_stats WHERE scope = 'orders'}),
	'3', 'a scope of the same name in another database counts apart');
$node->safe_psql('shop', q{SELECT idem_stats_reset()});
is($node->safe_psql('shop', q{SELECT new_claims, tokens_issued, (SELECT count(*) FROM idem_scope_stats) FROM idem_stats}),
	'0|0|0', 'idem_stats_reset() resets its own database');
is($node->safe_psql('postgres', q{SELECT new_claims, duplicates, (SELECT count(*) FROM idem_scope_stats) FROM idem_stats}),
	'3|1|1', 'and leaves the other database alone');
$node->safe_psql('shop', q{SELECT idem_claim('c-' || g, 'carts') FROM generate_series(6, 10) g});

# A busy scope, then a flood of one-event scopes: 1,000 rolled back, 1,000
# committed, in a table of 10 scopes shared by both databases.
$node->safe_psql('postgres', q{SELECT idem_claim('b-' || g, 'busy') FROM generate_series(1, 20) g});
$node->safe_psql('postgres', q{BEGIN; SELECT count(idem_claim('k-' || g, 'junk-' || g)) FROM generate_series(1, 1000) g; ROLLBACK});
$node->safe_psql('postgres', q{SELECT count(idem_claim('k-' || g, 'junk-' || g)) FROM generate_series(1001, 2000) g});
is($node->safe_psql('postgres', q{SELECT new_claims FROM idem_scope_stats WHERE scope = 'busy'}),
	'20', 'a busy scope survives a flood of 2,000 scopes, rolled back and committed');
is($node->safe_psql('postgres', q{SELECT new_claims, duplicates FROM idem_scope_stats WHERE scope = 'orders'}),
	'3|1', 'so does a scope with four events');
is($node->safe_psql('shop', q{SELECT new_claims FROM idem_scope_stats WHERE scope = 'carts'}),
	'5', q{and the other database's scope});
is($node->safe_psql('postgres', q{SELECT count(*) FROM idem_scope_stats}), '9',
	'the table stays at its size: 10 scopes in both databases');
# 10 slots: carts (shop), orders, busy and 7 junk scopes: 1,993 junk scopes
# (one event each) made room for the next.
is($node->safe_psql('postgres', q{SELECT new_claims, scopes_dropped, scope_events_dropped FROM idem_stats}),
	'2023|1993|1993', 'idem_stats counts the scopes dropped and their events');
is($node->safe_psql('shop', q{SELECT scopes_dropped, scope_events_dropped FROM idem_stats}),
	'0|0', 'in the database they belonged to');
# Every per-scope event is in idem_scope_stats or in scope_events_dropped.
is($node->safe_psql('postgres', q{
	SELECT (SELECT new_claims + duplicates + waits + in_progress + request_mismatches + tokens_issued + tokens_consumed + tokens_refused FROM idem_stats)
	     = (SELECT sum(new_claims + duplicates + waits + in_progress + request_mismatches + tokens_issued + tokens_consumed + tokens_refused) FROM idem_scope_stats)
	     + (SELECT scope_events_dropped FROM idem_stats)}),
	't', 'no per-scope event is lost from the sums');

# A busy scope that starts after the flood shows, and stays through the next.
$node->safe_psql('postgres', q{SELECT idem_claim('l-' || g, 'late') FROM generate_series(1, 5) g});
is($node->safe_psql('postgres', q{SELECT new_claims, counted_since <= now() FROM idem_scope_stats WHERE scope = 'late'}),
	'5|t', 'a busy scope started after the flood shows');
$node->safe_psql('postgres', q{BEGIN; SELECT count(idem_claim('k-' || g, 'junk-' || g)) FROM generate_series(3001, 4000) g; ROLLBACK});
is($node->safe_psql('postgres', q{SELECT string_agg(scope || '=' || new_claims, ',' ORDER BY scope) FROM idem_scope_stats WHERE scope NOT LIKE 'junk-%'}),
	'busy=20,late=5,orders=3', 'and stays through the next flood');

# Another database's flood does not push this one's busy scopes out either.
$node->safe_psql('shop', q{BEGIN; SELECT count(idem_claim('k-' || g, 'junk-' || g)) FROM generate_series(1, 1000) g; ROLLBACK});
is($node->safe_psql('postgres', q{SELECT string_agg(scope || '=' || new_claims, ',' ORDER BY scope) FROM idem_scope_stats WHERE scope NOT LIKE 'junk-%'}),
	'busy=20,late=5,orders=3', 'nor does a flood in the other database');
is($node->safe_psql('shop', q{SELECT new_claims FROM idem_scope_stats WHERE scope = 'carts'}), '5', 'whose own busy scope stays too');

# Reset empties this database's scopes and dropped counts; the slots are free again.
$node->safe_psql('postgres', q{SELECT idem_stats_reset()});
is($node->safe_psql('postgres', q{SELECT new_claims, scopes_dropped, scope_events_dropped, (SELECT count(*) FROM idem_scope_stats) FROM idem_stats}),
	'0|0|0|0', 'reset clears the dropped counts and the scopes');
$node->safe_psql('postgres', q{SELECT idem_claim('n-' || g, 'scope-' || g) FROM generate_series(1, 8) g});
is($node->safe_psql('postgres', q{SELECT count(*), (SELECT scopes_dropped FROM idem_stats) FROM idem_scope_stats}),
	'8|0', 'and their slots are free for new scopes');

$node->stop;
unlike(slurp_file($node->logfile), qr/terminated by signal|TRAP:/, 'no backend crashed');
done_testing();
