# idem_finish after an xid wraparound (hardening finding 2). A claim row's
# raw xmin survives freezing; once the 32-bit xid counter comes round, a
# transaction that holds no claim can get the very xid that wrote the row.
# idem_finish must refuse it (IK002) and leave the stored response alone, so
# the retry replays what the claiming transaction stored. The wraparound is
# simulated as the report did: freeze everything, then pg_resetwal -x sets
# the next xid back to the claim's.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

my $node = PostgreSQL::Test::Cluster->new('wraparound');
$node->init;
# No background transaction may take the xid the test wants.
$node->append_conf('postgresql.conf', 'autovacuum = off');
$node->start;
$node->safe_psql('postgres', 'CREATE EXTENSION pg_idem');

my $xid = $node->safe_psql('postgres', q{
	BEGIN;
	SELECT idem_claim('paid-order') \gset
	SELECT idem_finish('paid-order', 'default', '{"charged": 100}') \gset
	SELECT txid_current();
	COMMIT;
});
like($xid, qr/^\d+$/, "the claim was written by xid $xid");
$node->safe_psql('postgres', 'SELECT txid_current()') for 1 .. 5;
$node->command_ok([ 'vacuumdb', '--all', '--freeze', '-p', $node->port, '-h', $node->host ],
	'every row frozen');
$node->stop;
command_ok([ 'pg_resetwal', '-x', $xid, '-D', $node->data_dir ], "next xid set back to $xid");
$node->start;

my ($ret, $stdout, $stderr) = $node->psql('postgres', qq{
	\\set VERBOSITY verbose
	BEGIN;
	SELECT txid_current() = $xid AS same_xid;
	SELECT idem_finish('paid-order', 'default', '{"forged": true}');
	COMMIT;
});
is($stdout, 't', 'a transaction that claimed nothing has the claim\'s xid');
like($stderr, qr/IK002: this transaction holds no claim on key "paid-order" in scope "default"/,
	'its idem_finish is refused');
is($node->safe_psql('postgres', q{SELECT status || ' ' || response FROM idem_begin('paid-order')}),
	'replay {"charged": 100}', 'the retry replays the response of the transaction that claimed');

$node->stop;
done_testing();
