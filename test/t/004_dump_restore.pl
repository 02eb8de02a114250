# pg_dump / pg_restore keep every claim, token, lease and fencing counter:
# after restoring into a new database a retried request is
# still a duplicate and gets its stored response back, a consumed token stays
# consumed, an unconsumed one works once, and fencing tokens keep growing.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

my $node = PostgreSQL::Test::Cluster->new('dump');
$node->init;
$node->start;
$node->safe_psql('postgres', 'CREATE DATABASE shop');
$node->safe_psql('shop', q{
	CREATE EXTENSION pg_idem;
	SELECT idem_claim('order-1', 'orders');
	SELECT idem_claim('order-2', 'orders', '1 day');
	BEGIN;
	SELECT * FROM idem_begin('pay-1', 'payments', '1 day', '{"amount": 10}');
	SELECT idem_finish('pay-1', 'payments', '{"payment_id": 42}');
	COMMIT;
	SELECT idem_claim(repeat('k', 10000), 'big');
	CREATE TABLE tokens (name text, token uuid);
	INSERT INTO tokens SELECT 'used', idem_token_issue('pay');
	INSERT INTO tokens SELECT 'fresh', idem_token_issue('pay', NULL);
	SELECT idem_token_consume((SELECT token FROM tokens WHERE name = 'used'), 'pay');
	CREATE TABLE fences AS SELECT idem_lease_acquire('job', 'worker-a', '1 hour') AS token;
});

my $tempdir = PostgreSQL::Test::Utils::tempdir;
my $snapshot = q{SELECT string_agg(format('%s|%s|%s|%s|%s|%s', scope, md5(key), claimed_at, expires_at, response, fingerprint), E'\n' ORDER BY scope, key) FROM idem_claims};
my $before = $node->safe_psql('shop', $snapshot);

for my $format ('custom', 'plain')
{
	my $target = "restored_$format";
	$node->safe_psql('postgres', "CREATE DATABASE $target");
	if ($format eq 'custom')
	{
		$node->command_ok([ 'pg_dump', '-Fc', '-f', "$tempdir/shop.dump", '-d', $node->connstr('shop') ], 'pg_dump -Fc');
		$node->command_ok([ 'pg_restore', '-d', $node->connstr($target), "$tempdir/shop.dump" ], 'pg_restore');
	}
	else
	{
		$node->command_ok([ 'pg_dump', '-f', "$tempdir/shop.sql", '-d', $node->connstr('shop') ], 'pg_dump (plain)');
		$node->command_ok([ 'psql', '-X', '-q', '-v', 'ON_ERROR_STOP=1', '-f', "$tempdir/shop.sql", '-d', $node->connstr($target) ], 'psql < dump');
	}

	is($node->safe_psql($target, $snapshot), $before, "$format: every claim restored as it was");
	is($node->safe_psql($target, q{SELECT idem_claim('order-1', 'orders'), idem_claim('order-2', 'orders'), idem_claim(repeat('k', 10000), 'big')}),
		'f|f|f', "$format: retried requests are still duplicates");
	is($node->safe_psql($target, q{SELECT status || ' ' || response FROM idem_begin('pay-1', 'payments', '1 day', '{"amount": 10}')}),
		'replay {"payment_id": 42}', "$format: a retry gets the stored response");
	my ($ret, $stdout, $stderr) = $node->psql($target,
		qq{\\set VERBOSITY verbose\nSELECT * FROM idem_begin('pay-1', 'payments', '1 day', '{"amount": 11}')});
	like($stderr, qr/IK001/, "$format: the request fingerprint survives too");
	is($node->safe_psql($target, q{SELECT idem_claim('order-3', 'orders')}), 't', "$format: new requests still claim");
	is($node->safe_psql($target, q{
		SELECT idem_token_consume((SELECT token FROM tokens WHERE name = 'used'), 'pay'),
		       idem_token_consume((SELECT token FROM tokens WHERE name = 'fresh'), 'pay'),
		       idem_token_consume((SELECT token FROM tokens WHERE name = 'fresh'), 'pay')}),
		'f|t|f', "$format: a consumed token stays consumed, a fresh one works once");
	is($node->safe_psql($target, q{SELECT idem_lease_check('job', (SELECT token FROM fences))}),
		't', "$format: the lease and its fencing token are restored");
	is($node->safe_psql($target, q{
		SELECT idem_lease_release('job', 'worker-a'),
		       idem_lease_acquire('job', 'worker-b', '1 minute') > (SELECT token FROM fences)}),
		't|t', "$format: the fencing counter keeps growing after a restore");
}

$node->stop;
done_testing();
