# Sixteen buyers race for the last 100 units of an item; a third of them roll
# back after taking. Takes short of units held in flight wait and are woken
# by whichever holder ends: every run ends (no take sleeps forever), nothing
# is oversold, and every sale is a committed unit.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

my $node = PostgreSQL::Test::Cluster->new('stock_sellout');
$node->init;
$node->append_conf('postgresql.conf', qq{
shared_preload_libraries = 'pg_idem'
max_connections = 40
});
$node->start;
$node->safe_psql('postgres', q{
	CREATE EXTENSION pg_idem;
	CREATE TABLE sales (buyer int NOT NULL);
	SELECT idem_stock_add('last', 100);
});

my $script = PostgreSQL::Test::Utils::tempdir . '/buy.pgbench';
open my $fh, '>', $script or die $!;
print $fh <<'PGBENCH';
\set undo random(1, 3)
BEGIN;
INSERT INTO sales SELECT :client_id WHERE idem_stock_take('last', 1);
\if :undo = 1
ROLLBACK;
\else
COMMIT;
\endif
PGBENCH
close $fh;

my ($out, $err) = ('', '');
IPC::Run::run([ 'pgbench', '-n', '-c', '16', '-j', '4', '-t', '30', '-f', $script, '-d', $node->connstr('postgres') ],
	'>', \$out, '2>', \$err, IPC::Run::timeout($PostgreSQL::Test::Utils::timeout_default));
like($out, qr/number of transactions actually processed: 480\/480/, 'every buyer finished') or diag($err);
is($node->safe_psql('postgres', q{SELECT count(*) FROM sales}), '100', 'exactly the 100 units were sold');
is($node->safe_psql('postgres', q{SELECT level, in_flight FROM idem_stock WHERE item = 'last'}), '0|0',
	'none left, none in flight');
is($node->safe_psql('postgres',
		q{SELECT i.level + coalesce((SELECT sum(delta) FROM idem_stock_ledger), 0) FROM idem_stock_items i}),
	'0', 'the tables agree');

$node->stop;
done_testing();
