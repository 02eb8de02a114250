# Failover: a primary with a synchronous streaming standby under load from
# the stress client, which records every request whose commit it saw
# acknowledged. The standby refuses claims (25006); the primary is stopped
# hard mid-load; the standby is promoted; every acknowledged claim is there
# and a retry of it is a duplicate; the orders' invariants hold.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(sleep time);
use IdemTest qw(crash_server);

my $client = 'test/stress/idem_stress';
-x $client or BAIL_OUT("$client is not built: run make stress");

my $primary = PostgreSQL::Test::Cluster->new('primary');
$primary->init(allows_streaming => 1);
$primary->append_conf('postgresql.conf', qq{
shared_preload_libraries = 'pg_idem'
pg_idem.purge_interval = '100ms'
});
$primary->start;
$primary->safe_psql('postgres', q{
	CREATE EXTENSION pg_idem;
	SELECT idem_lease_acquire('nightly', 'worker-a', '1 hour');
});
$primary->backup('base');
my $standby = PostgreSQL::Test::Cluster->new('standby');
$standby->init_from_backup($primary, 'base', has_streaming => 1);
$standby->start;
# Synchronous from now on: a commit is acknowledged once the standby has it.
$primary->safe_psql('postgres', q{ALTER SYSTEM SET synchronous_standby_names = 'standby'; SELECT pg_reload_conf()});
$primary->poll_query_until('postgres',
	q{SELECT sync_state = 'sync' FROM pg_stat_replication WHERE application_name = 'standby'})
  or die 'the standby never became synchronous';

my $acked = PostgreSQL::Test::Utils::tempdir . '/acked.txt';
my ($out, $err) = ('', '');
my $run = IPC::Run::start(
	[ $client, '--dsn', $primary->connstr('postgres'), '--setup', 'test/stress/shop.sql', '--clients', '8', '--requests', '100000',
		'--retry-share', '0.3', '--seed', '11', '--acked', $acked, '--give-up', '3' ],
	'>', \$out, '2>', \$err);
# Wait for load, not for time: the crash comes once requests are being acknowledged.
my $deadline = time + 60;
sleep 0.1 while time < $deadline && acked_count($acked) < 200;

# Before promotion the standby refuses claims, also of a key that exists.
my ($ret, $stdout, $stderr) = $standby->psql('postgres',
	"\\set VERBOSITY verbose\nSELECT idem_claim(key, scope) FROM idem_claims LIMIT 1");
like($stderr, qr/25006/, 'the standby refuses claims with 25006');

# Reads work there: a lease check answers from the replicated row.
is($standby->safe_psql('postgres', q{
	SELECT idem_lease_check('nightly', fencing_token) FROM idem_leases WHERE name = 'nightly'}),
	't', 'the standby answers idem_lease_check');
# The purge launcher waits for the end of recovery: none runs on the standby.
is($standby->safe_psql('postgres', q{
	SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'pg_idem purge launcher'}),
	'0', 'no purge launcher runs on the standby');

ok(crash_server($primary), 'the primary is stopped hard (kill -9) in the middle of the load');
$run->finish;    # the client gives up: its primary is gone
$standby->promote;
$standby->poll_query_until('postgres', 'SELECT NOT pg_is_in_recovery()');
ok($standby->poll_query_until('postgres', q{
	SELECT count(*) = 1 FROM pg_stat_activity WHERE backend_type = 'pg_idem purge launcher'}),
	'once promoted, the new primary runs the purge launcher');

open my $fh, '<', $acked or die "no acknowledged requests: $!";
my @keys = do { my %seen; grep { !$seen{$_}++ } map { chomp; $_ } <$fh> };
close $fh;
cmp_ok(scalar(@keys), '>', 100, scalar(@keys) . ' requests were acknowledged before the crash');
my $list = join(',', map { "'$_'" } @keys);
is($standby->safe_psql('postgres', "SELECT count(*) FROM idem_claims WHERE scope = 'shop.orders' AND key IN ($list)"),
	scalar(@keys), 'every acknowledged claim is on the new primary');
is($standby->safe_psql('postgres', "SELECT count(*) FROM shop.orders WHERE request_key IN ($list)"),
	scalar(@keys), 'with its order');
is($standby->safe_psql('postgres', qq{
	SELECT count(*) FROM shop.orders o, shop.place_order(o.request_key, o.sku, o.qty) p
	WHERE o.request_key IN ($list) AND NOT (p.replayed AND p.order_id = o.order_id)}),
	'0', 'and a retry of each replays the acknowledged answer');
is($standby->safe_psql('postgres', q{
	SELECT (SELECT count(*) FROM (SELECT request_key FROM shop.orders GROUP BY 1 HAVING count(*) > 1) x),
	       (SELECT count(*) FROM shop.orders o WHERE NOT EXISTS
	            (SELECT 1 FROM idem_claims c WHERE c.scope = 'shop.orders' AND c.key = o.request_key)),
	       (SELECT sum(i.amount - s.amount) FROM shop.stock s JOIN shop.initial_stock i USING (sku))
	         = (SELECT coalesce(sum(qty), 0) FROM shop.orders)}),
	'0|0|t', 'no order twice, none without its claim, stock conserved');

$standby->stop;
done_testing();

sub acked_count
{
	my ($file) = @_;
	open my $fh, '<', $file or return 0;
	my $n = () = <$fh>;
	return $n;
}
