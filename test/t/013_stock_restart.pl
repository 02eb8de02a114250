# Hot stock survives the purge worker's fold and a restart: every unit added
# ends up in an item row (shared memory is rebuilt from the tables), also when
# a new item's first add rolled back or raced with another add; and the fold
# never deletes a ledger row it could not apply.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use IdemTest qw(blocked_or_done);

my $node = PostgreSQL::Test::Cluster->new('stock_restart');
$node->init;
$node->append_conf('postgresql.conf', qq{
shared_preload_libraries = 'pg_idem'
pg_idem.database = 'postgres'
pg_idem.purge_interval = '100ms'
});
$node->start;
$node->safe_psql('postgres', 'CREATE EXTENSION pg_idem');

# A new item whose first add rolled back; then real units.
$node->safe_psql('postgres', q{
	BEGIN; SELECT idem_stock_add('ghost', 1); ROLLBACK;
	SELECT idem_stock_add('ghost', 5);
	SELECT idem_stock_take('ghost', 2);
});

# Two sessions add a new item at once; the first rolls back.
my $first = $node->background_psql('postgres');
$first->query_safe(q{BEGIN; SELECT idem_stock_add('race', 1)});
my $second = $node->background_psql('postgres');
$second->query_until(qr/adding/, qq{\\echo adding\nSELECT idem_stock_add('race', 7);\n});
ok(blocked_or_done($node, q{idem_stock_add('race', 7)}), 'the second add has run or waits for the first one');
$first->query_safe('ROLLBACK');
$first->quit;
$second->quit;

# A ledger row without an item row (written by hand): the fold must keep it.
$node->safe_psql('postgres', q{INSERT INTO idem_stock_ledger VALUES ('orphan', 4)});

ok($node->poll_query_until('postgres', q{SELECT count(*) = 0 FROM idem_stock_ledger WHERE item <> 'orphan'}),
	'the worker folds the ledger');
is($node->safe_psql('postgres', q{SELECT string_agg(item || '=' || level, ',' ORDER BY item) FROM idem_stock_items}),
	'ghost=3,race=7', 'every unit added is in an item row');
is($node->safe_psql('postgres', q{SELECT string_agg(item || '=' || delta, ',') FROM idem_stock_ledger}),
	'orphan=4', 'the fold left the ledger row it could not apply');

$node->restart;
is($node->safe_psql('postgres', q{SELECT idem_stock_level('ghost'), idem_stock_level('race')}),
	'3|7', 'after a restart the levels are rebuilt from the tables');
is($node->safe_psql('postgres', q{SELECT idem_stock_take('race', 7), idem_stock_take('race', 1)}),
	't|f', 'all 7 units of the raced item can be sold, and no more');

$node->stop;
done_testing();
