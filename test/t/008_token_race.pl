# 200 tokens raced by 8 clients that each try tokens at random, recording a
# success in the same transaction as the consumption: every token is consumed
# exactly once, and none is left.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

my $node = PostgreSQL::Test::Cluster->new('token_race');
$node->init;
$node->start;
$node->safe_psql('postgres', q{
	CREATE EXTENSION pg_idem;
	CREATE TABLE pool AS SELECT i, idem_token_issue('race') AS token FROM generate_series(1, 200) i;
	CREATE TABLE consumed (i int NOT NULL, by_pid int NOT NULL DEFAULT pg_backend_pid());
});

my $script = PostgreSQL::Test::Utils::tempdir . '/consume.pgbench';
open my $fh, '>', $script or die $!;
print $fh "\\set i random(1, 200)\n"
  . "INSERT INTO consumed (i) SELECT :i WHERE idem_token_consume((SELECT token FROM pool WHERE i = :i), 'race');\n";
close $fh;

$node->command_ok([ 'pgbench', '-n', '-c', '8', '-j', '2', '-t', '400', '-f', $script, '-d', $node->connstr('postgres') ],
	'8 clients x 400 random consumptions of 200 tokens');
my ($successes, $distinct, $left, $clients) = split /\|/, $node->safe_psql('postgres',
	q{SELECT count(*), count(DISTINCT i), (SELECT count(*) FROM idem_tokens), count(DISTINCT by_pid) FROM consumed});
is($successes, $distinct, "no token was consumed twice ($successes successes)");
is($distinct, 200, 'every token was consumed');
is($left, 0, 'no token is left');
cmp_ok($clients, '>', 1, "the successes are spread over the clients ($clients)");

$node->stop;
done_testing();
