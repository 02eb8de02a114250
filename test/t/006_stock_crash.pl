# Hot stock across crashes: buyers take units of one item while the server
# is killed (kill -9 of the postmaster) at random moments. After each restart
# units sold + level = units added, nothing is left in flight, and the tables
# (item rows + ledger) agree with shared memory.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(usleep);
use IdemTest qw(crash_server);

my $node = PostgreSQL::Test::Cluster->new('stock_crash');
$node->init;
$node->append_conf('postgresql.conf', qq{
shared_preload_libraries = 'pg_idem'
pg_idem.database = 'postgres'
pg_idem.purge_interval = '200ms'
pg_idem.purge_batch_size = 500
max_connections = 40
});
$node->start;
my $added = 200000;
$node->safe_psql('postgres', qq{
	CREATE EXTENSION pg_idem;
	CREATE EXTENSION amcheck;
	CREATE TABLE sales (units int NOT NULL);
	SELECT idem_stock_add('hot', $added);
});

# A sale and its record commit together: one statement, one transaction.
my $script = PostgreSQL::Test::Utils::tempdir . '/buy.pgbench';
open my $fh, '>', $script or die $!;
print $fh "\\set n random(1, 5)\nINSERT INTO sales SELECT :n WHERE idem_stock_take('hot', :n);\n";
close $fh;

my $check = q{
	SELECT (SELECT coalesce(sum(units), 0) FROM sales) + idem_stock_level('hot'),
	       (SELECT in_flight FROM idem_stock WHERE item = 'hot'),
	       (SELECT i.level + coalesce((SELECT sum(delta) FROM idem_stock_ledger), 0) FROM idem_stock_items i WHERE item = 'hot')
	         = idem_stock_level('hot'),
	       (SELECT count(*) FROM sales) > 0};

srand(42);
for my $round (1 .. 3)
{
	my ($out, $err) = ('', '');
	my $bench = IPC::Run::start(
		[ 'pgbench', '-n', '-c', '16', '-j', '2', '-T', '60', '-f', $script, '-d', $node->connstr('postgres') ],
		'>', \$out, '2>', \$err);
	usleep(1_000_000 + int(rand(2_000_000)));
	ok(crash_server($node), "round $round: kill -9 took the server down");
	$bench->finish;
	$node->start;
	is($node->safe_psql('postgres', $check), "$added|0|t|t",
		"round $round: units sold + level = units added, none in flight, tables agree");
}

# The purge worker folds the ledger into the item row without changing the level.
ok($node->poll_query_until('postgres', q{SELECT count(*) = 0 FROM idem_stock_ledger}),
	'the worker folds the whole ledger');
is($node->safe_psql('postgres', $check), "$added|0|t|t", 'and the books still balance');
is($node->safe_psql('postgres', q{SELECT bt_index_check('idem_stock_items_pkey', true)::text}), '', 'amcheck: the item index is sound');

$node->stop;
done_testing();

