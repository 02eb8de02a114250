# Hot stock across a promotion: shared memory is rebuilt from the tables on
# first use, and it must be rebuilt from what is committed, not from what the
# first caller's snapshot saw. A REPEATABLE READ transaction opened on the
# standby before a sale, still open after the promotion, must not bring back
# units that were sold (that oversold the item: the tables went negative).
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

my $primary = PostgreSQL::Test::Cluster->new('stock_primary');
$primary->init(allows_streaming => 1);
$primary->append_conf('postgresql.conf', "shared_preload_libraries = 'pg_idem'\n");
$primary->start;
$primary->safe_psql('postgres', q{CREATE EXTENSION pg_idem; SELECT idem_stock_add('console', 10)});
$primary->backup('base');

my $standby = PostgreSQL::Test::Cluster->new('stock_standby');
$standby->init_from_backup($primary, 'base', has_streaming => 1);
$standby->start;

my $old_snapshot = $standby->background_psql('postgres');
$old_snapshot->query_safe('BEGIN ISOLATION LEVEL REPEATABLE READ');
is($old_snapshot->query_safe(q{SELECT idem_stock_level('console')}), '10',
	'the standby reads the level from the tables');

is($primary->safe_psql('postgres', q{SELECT idem_stock_take('console', 6)}), 't', 'the primary sells 6');
$primary->wait_for_catchup($standby);
$primary->stop;
$standby->promote;

is($old_snapshot->query_safe(q{SELECT idem_stock_level('console')}), '4',
	'after the promotion the old snapshot sees the committed level, not the one it saw');
$old_snapshot->query_safe('COMMIT');
$old_snapshot->quit;

is($standby->safe_psql('postgres', q{SELECT idem_stock_take('console', 10)}), 'f',
	'10 units cannot be taken: only 4 are left');
is($standby->safe_psql('postgres', q{SELECT idem_stock_take('console', 4)}), 't', 'the last 4 can');
is($standby->safe_psql('postgres',
		q{SELECT i.level + coalesce((SELECT sum(delta) FROM idem_stock_ledger), 0) FROM idem_stock_items i}),
	'0', 'the tables agree: nothing left, nothing oversold');

$standby->stop;
done_testing();
