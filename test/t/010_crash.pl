# kill -9 of the postmaster while the stress client runs: the client
# reconnects and retries with the same keys once the server is back, and at
# the end every request has exactly one outcome, every retry got the first
# attempt's answer, and stock is conserved (the client checks). amcheck then verifies every
# btree index of pg_idem. Three crashes at moments drawn from a fixed seed.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(usleep);
use IdemTest qw(crash_server);

my $client = 'test/stress/idem_stress';
-x $client or BAIL_OUT("$client is not built: run make stress");

my $node = PostgreSQL::Test::Cluster->new('crash');
$node->init;
$node->append_conf('postgresql.conf', qq{
shared_preload_libraries = 'pg_idem'
pg_idem.database = 'postgres'
max_connections = 60
});
$node->start;
$node->safe_psql('postgres', 'CREATE EXTENSION pg_idem; CREATE EXTENSION amcheck;');

srand(7);
my ($out, $err) = ('', '');
my $run = IPC::Run::start(
	[ $client, '--dsn', $node->connstr('postgres'), '--setup', 'test/stress/shop.sql', '--clients', '16', '--requests', '30000',
		'--retry-share', '0.4', '--seed', '7', '--give-up', '120' ],
	'>', \$out, '2>', \$err);
my $crashes = 0;
for my $round (1 .. 3)
{
	usleep(700_000 + int(rand(1_500_000)));
	last unless $run->pumpable;
	ok(crash_server($node), "crash $round: kill -9 of the postmaster");
	$crashes++;
	$node->start;
}
my $client_ok = $run->finish;
ok($client_ok, "the client finished after $crashes crashes and its invariants hold")
  or diag("stdout:\n$out\nstderr (tail):\n" . substr($err, -2000));
note($out);
cmp_ok($crashes, '>=', 2, 'the server crashed while the client was running');

my $indexes = $node->safe_psql('postgres', q{
	SELECT string_agg(c.relname, ',' ORDER BY c.relname)
	FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid JOIN pg_am a ON a.oid = c.relam
	JOIN pg_depend d ON d.objid = i.indrelid AND d.deptype = 'e' AND d.classid = 'pg_class'::regclass
	JOIN pg_extension e ON e.oid = d.refobjid AND e.extname = 'pg_idem' WHERE a.amname = 'btree'});
for my $index (split /,/, $indexes)
{
	is($node->safe_psql('postgres', "SELECT bt_index_parent_check('$index', true)::text"), '',
		"amcheck: $index is sound");
}
$node->stop;
done_testing();
