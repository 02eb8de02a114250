# Eight connections decrement one item concurrently: the amount never drops
# below zero and every unit sold is accounted for (the units recorded in the
# same transactions as the successful decrements equal the amount's drop).
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

my $node = PostgreSQL::Test::Cluster->new('oversell');
$node->init;
$node->start;
my $initial = 500;
$node->safe_psql('postgres', qq{
	CREATE EXTENSION pg_idem;
	CREATE TABLE stock (sku int PRIMARY KEY, amount int NOT NULL);
	INSERT INTO stock VALUES (1, $initial);
	CREATE TABLE sales (units int NOT NULL);
	CREATE TABLE amounts_seen (amount numeric);
});

# A sale and its record commit together: one statement, so the record
# exists exactly when the decrement succeeded.
my $script = PostgreSQL::Test::Utils::tempdir . '/decrement.pgbench';
open my $fh, '>', $script or die $!;
print $fh "\\set n random(1, 3)\nINSERT INTO sales SELECT :n FROM (SELECT idem_decrement('stock', 'sku', 1, 'amount', :n) AS left_after) d WHERE left_after IS NOT NULL;\n";
close $fh;

$node->command_ok([ 'pgbench', '-n', '-c', '8', '-j', '2', '-t', '150', '-f', $script, '-d', $node->connstr('postgres') ],
	'8 connections x 150 decrements of one item');
my ($amount, $sold, $sales) = split /\|/, $node->safe_psql('postgres',
	q{SELECT (SELECT amount FROM stock), (SELECT coalesce(sum(units), 0) FROM sales), (SELECT count(*) FROM sales)});
cmp_ok($amount, '>=', 0, "the amount never went below zero (left: $amount)");
is($initial - $amount, $sold, "every unit sold is accounted for ($sold units in $sales sales)");
cmp_ok($amount, '<', 3, 'the item sold out: 1200 tries for 500 units');

$node->stop;
done_testing();
