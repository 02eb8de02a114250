# 200 tokens raced by 8 clients: tickets from a sequence send 8 tries at each
# token in a row, so the clients race for every token. Each try records its
# success in the same transaction as the consumption, and the first try at
# every token rolls back, which must give the token back. Every
# token is consumed exactly once by a committed try, and none is left.
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
	CREATE SEQUENCE ticket;
	CREATE TABLE rolled_back (i int NOT NULL);
});

my $script = PostgreSQL::Test::Utils::tempdir . '/consume.pgbench';
open my $fh, '>', $script or die $!;
print $fh <<'SCRIPT';
SELECT (n - 1) / 8 + 1 AS i, (n % 8 = 1)::int AS gives_back FROM nextval('ticket') n \gset
BEGIN;
SELECT idem_token_consume((SELECT token FROM pool WHERE i = :i), 'race')::int AS got \gset
INSERT INTO consumed (i) SELECT :i WHERE :got = 1;
\if :gives_back
ROLLBACK;
INSERT INTO rolled_back (i) SELECT :i WHERE :got = 1;
\else
COMMIT;
\endif
SCRIPT
close $fh;

$node->command_ok([ 'pgbench', '-n', '-c', '8', '-j', '2', '-t', '200', '-f', $script, '-d', $node->connstr('postgres') ],
	'8 clients x 200 tries: 8 racing tries at each of 200 tokens');
my ($successes, $distinct, $left, $clients) = split /\|/, $node->safe_psql('postgres',
	q{SELECT count(*), count(DISTINCT i), (SELECT count(*) FROM idem_tokens), count(DISTINCT by_pid) FROM consumed});
is($successes, $distinct, "no token was consumed twice ($successes successes)");
is($distinct, 200, 'every token was consumed');
my $given_back = $node->safe_psql('postgres', 'SELECT count(DISTINCT i) FROM rolled_back');
cmp_ok($given_back, '>', 0, "including $given_back tokens whose first consumption rolled back");
is($left, 0, 'no token is left');
cmp_ok($clients, '>', 1, "the successes are spread over the clients ($clients)");

$node->stop;
done_testing();
