# Logical replication of pg_idem's tables (SPEC "Beyond one machine"), the
# way a DBA upgrades PostgreSQL without downtime (README "Logical
# replication: an upgrade without downtime"): a publication FOR ALL TABLES
# on a publisher under load (claims and their renewals, idem_begin and
# idem_finish, tokens, leases, hot stock, the purge), a subscriber created
# in the middle of it that catches up with a copy equal to the publisher's,
# then the application switched over to the subscriber: every committed
# claim is there, a retry is a duplicate, fences go on growing, stock goes
# on from the publisher's level.
#
# While subscribed, the subscriber leaves pg_idem's tables to the publisher:
# its purge does not delete their rows (a renewal replicated later would find
# no row, and the retry after the switchover would be answered as new), its
# worker does not fold the stock ledger, and hot stock refuses takes (55000)
# and reads levels from the tables, also on a failback to a server whose
# shared memory had the item loaded. Last, a table's replica identity is
# dropped on purpose: the publisher's UPDATEs and DELETEs of it then fail,
# which the load above would have met, and the purge goes on with the other
# tables.
#
# Nothing is timed: each step waits for a state it can see.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use IPC::Run;

my %node;
for my $name ('publisher', 'subscriber')
{
	my $node = PostgreSQL::Test::Cluster->new($name);
	$node->init(allows_streaming => 'logical');
	$node->append_conf('postgresql.conf', qq{
shared_preload_libraries = 'pg_idem'
pg_idem.purge_interval = '100ms'
max_connections = 40
});
	$node->start;
	# Logical replication copies rows, not DDL: the schema is created on both.
	$node->safe_psql('postgres', q{
		CREATE EXTENSION pg_idem;
		CREATE TABLE orders (key text PRIMARY KEY, placed int NOT NULL);
		CREATE TABLE payments (key text PRIMARY KEY, paid int NOT NULL);
		CREATE FUNCTION pay(k text, ttl interval) RETURNS text LANGUAGE plpgsql AS $$
		DECLARE
			r record;
		BEGIN
			SELECT * INTO r FROM idem_begin(k, 'pay', ttl);
			IF r.status = 'new' THEN
				INSERT INTO payments VALUES (k, 1) ON CONFLICT (key) DO UPDATE SET paid = payments.paid + 1;
				PERFORM idem_finish(k, 'pay', jsonb_build_object('paid', k));
			END IF;
			RETURN r.status;
		END $$;
	});
	$node{$name} = $node;
}
my ($pub, $sub) = @node{ 'publisher', 'subscriber' };
$pub->safe_psql('postgres', q{
	CREATE PUBLICATION everything FOR ALL TABLES;
	SELECT idem_stock_add('sku', 1000000);
});

# The load: four clients. Orders and payments whose claims
# expire within moments (renewed by later duplicates, purged in between),
# payments kept for an hour (the retries after the switchover), tokens
# issued and consumed, leases taken over between clients, hot-stock takes
# (the purge worker folds their ledger rows).
my $scripts = PostgreSQL::Test::Utils::tempdir;
my %script = (
	orders => q{
\set k random(1, 300)
BEGIN;
INSERT INTO orders SELECT 'order-' || :k, 1 WHERE idem_claim('order-' || :k, 'shop', interval '200 milliseconds')
ON CONFLICT (key) DO UPDATE SET placed = orders.placed + 1;
COMMIT;
},
	payments => q{
\set k random(1, 300)
BEGIN;
SELECT pay('pay-' || :k, interval '200 milliseconds');
SELECT pay('keep-' || :k, interval '1 hour');
COMMIT;
},
	tokens => q{
BEGIN;
SELECT idem_token_consume(idem_token_issue('tokens', interval '200 milliseconds'), 'tokens');
SELECT idem_token_issue('tokens', interval '100 milliseconds');
COMMIT;
},
	leases => q{
\set l random(1, 10)
BEGIN;
SELECT idem_lease_acquire('job-' || :l, 'worker-' || :client_id, interval '20 milliseconds');
COMMIT;
},
	stock => q{
BEGIN;
SELECT idem_stock_take('sku', 1);
COMMIT;
});
my @files;
for my $name (sort keys %script)
{
	PostgreSQL::Test::Utils::append_to_file("$scripts/$name.sql", $script{$name});
	push @files, '-f', "$scripts/$name.sql";
}
# The load runs until the test stops it (-T is only a bound), so that the
# subscriber surely joins and catches up while it runs.
my ($load_out, $load_err) = ('', '');
my $load = IPC::Run::start(
	[ 'pgbench', '-n', '-c', '4', '-j', '2', '-T', '600', @files, '-h', $pub->host, '-p', $pub->port, 'postgres' ],
	'>', \$load_out, '2>', \$load_err);

# The subscriber joins while the load runs: the initial copy, then the stream.
ok($pub->poll_query_until('postgres', q{SELECT count(*) >= 200 FROM idem_claims}), 'the load is under way');
my $pub_connstr = 'host=' . $pub->host . ' port=' . $pub->port . ' dbname=postgres';
$sub->safe_psql('postgres', "CREATE SUBSCRIPTION upgrade CONNECTION '$pub_connstr' PUBLICATION everything");
$sub->wait_for_subscription_sync($pub, 'upgrade');
# Every catch-up waits for the publisher's insert position, not its
# write position (wait_for_catchup's default): the purge worker commits
# asynchronously, so its deletes are visible before their commit record is
# written, and a catch-up to the write position could end without them.
$pub->wait_for_catchup('upgrade', 'replay', $pub->lsn('insert'));
my $streamed = $pub->safe_psql('postgres', q{SELECT sum(placed) FROM orders});
ok($pub->poll_query_until('postgres', qq{SELECT sum(placed) > $streamed FROM orders}), 'the load goes on');
$pub->wait_for_catchup('upgrade', 'replay', $pub->lsn('insert'));
ok($load->pumpable, 'the subscriber copied the tables and caught up with the stream while the load ran');
$load->signal('TERM');
eval { $load->finish };
unlike($load_err, qr/aborted|ERROR/, 'no client of the load met an error') or diag($load_err);
# A backend whose client was killed still ends the statement it runs, and a
# COMMIT it had received commits: the load is over once they are gone.
ok($pub->poll_query_until('postgres', q{SELECT count(*) = 0 FROM pg_stat_activity WHERE application_name = 'pgbench'}),
	"the load's backends are gone");

# The publisher settles: every short-lived row purged (not only those
# expired so far: the purge must have nothing left to do), the ledger
# folded. Then the subscriber catches up, and its copy is the publisher's,
# row for row.
ok($pub->poll_query_until('postgres', q{
	SELECT NOT EXISTS (SELECT FROM idem_claims WHERE key NOT LIKE 'keep-%')
	   AND NOT EXISTS (SELECT FROM idem_tokens)
	   AND NOT EXISTS (SELECT FROM idem_leases)
	   AND NOT EXISTS (SELECT FROM idem_stock_ledger)}), 'the publisher purged and folded everything');
$pub->wait_for_catchup('upgrade', 'replay', $pub->lsn('insert'));
my $contents = join " || ' ' || ",
  map { "(SELECT '$_=' || md5(coalesce(string_agg(t::text, ',' ORDER BY t::text), '')) FROM $_ t)" }
  qw(idem_claims idem_holds idem_tokens idem_leases idem_stock_items idem_stock_ledger orders payments);
is($sub->safe_psql('postgres', "SELECT $contents"), $pub->safe_psql('postgres', "SELECT $contents"),
	"the subscriber's idem_* and business tables equal the publisher's");
my $kept = $pub->safe_psql('postgres', q{SELECT count(*) FROM idem_claims WHERE key LIKE 'keep-%'});
cmp_ok($kept, '>', 100, "with $kept payments kept for an hour");
is($sub->safe_psql('postgres', q{SELECT rows_purged FROM idem_stats}), '0',
	"the subscriber's purge deleted nothing: the publisher's DELETEs did");

# While subscribed, the subscriber leaves pg_idem's tables alone. The
# publisher's purge is stopped (a restart: then surely no worker is left),
# so that expired rows stay there too.
$pub->append_conf('postgresql.conf', q{pg_idem.database = ''});
$pub->restart;
$pub->safe_psql('postgres', q{
	SELECT count(idem_claim('renew-' || g, 'shop', interval '1 millisecond')) FROM generate_series(1, 20) g;
	SELECT count(idem_stock_take('sku', 1)) FROM generate_series(1, 5);
});
my $last_hold_fence = $pub->safe_psql('postgres',
	q{SELECT max(h.fence) FROM generate_series(1, 5) g, idem_hold('hold-' || g, 'pay') h});
$pub->wait_for_catchup('upgrade', 'replay', $pub->lsn('insert'));
is($sub->safe_psql('postgres', q{SELECT count(*) FROM idem_claims WHERE key LIKE 'renew-%' AND expires_at <= now()}),
	'20', 'the subscriber has the expired claims');
is($sub->safe_psql('postgres', 'SELECT idem_purge()'), '0', 'idem_purge() there deletes none of them');

# A round of the subscriber's purge worker, seen by a claim that expires in
# a database of its own being purged, twice: a whole round lies between.
$sub->safe_psql('postgres', 'CREATE DATABASE witness');
$sub->safe_psql('witness', 'CREATE EXTENSION pg_idem');
for my $round (1 .. 2)
{
	$sub->safe_psql('witness', "SELECT idem_claim('round-$round', 'w', '1 millisecond')");
	$sub->poll_query_until('witness', 'SELECT count(*) = 0 FROM idem_claims') or die 'the purge worker stopped';
}
is($sub->safe_psql('postgres', q{
	SELECT (SELECT count(*) FROM idem_claims WHERE key LIKE 'renew-%') || ' ' ||
	       (SELECT count(*) FROM idem_stock_ledger) || ' ' || (SELECT rows_purged FROM idem_stats)}),
	'20 5 0', 'after a round of its purge worker the expired claims and the ledger rows are still there');
my ($ret, $stdout, $stderr) = $sub->psql('postgres', "\\set VERBOSITY verbose\nSELECT idem_stock_take('sku', 1)");
like($stderr, qr/55000: item "sku" is replicated into this database by a subscription/,
	'hot stock refuses takes there (55000)');
is($sub->safe_psql('postgres', q{SELECT idem_stock_level('sku')}), $pub->safe_psql('postgres', q{SELECT idem_stock_level('sku')}),
	"and reads the publisher's level from the tables");

# A renewal on the publisher of a claim the subscriber did not purge: its
# UPDATE finds the row.
$pub->safe_psql('postgres',
	q{SELECT count(*) FILTER (WHERE idem_claim('renew-' || g, 'shop', interval '1 hour')) FROM generate_series(1, 20) g});
$pub->wait_for_catchup('upgrade', 'replay', $pub->lsn('insert'));
is($sub->safe_psql('postgres', q{SELECT count(*) FROM idem_claims WHERE key LIKE 'renew-%' AND expires_at > now() + interval '50 minutes'}),
	'20', 'the renewals of those expired claims reached the subscriber');

# The switchover (README "Logical replication"): with the publisher's writes
# stopped and the subscriber caught up, sequences are copied (logical
# replication does not carry them) and the subscription dropped.
my $setvals = $pub->safe_psql('postgres', q{
	SELECT string_agg(format('SELECT pg_catalog.setval(%L, %s);', format('%I.%I', schemaname, sequencename), last_value), ' ')
	FROM pg_sequences WHERE last_value IS NOT NULL});
like($setvals, qr/idem_lease_fencing.*idem_hold_fencing|idem_hold_fencing.*idem_lease_fencing/,
	'the fencing sequences are copied');
$sub->safe_psql('postgres', $setvals);
$sub->safe_psql('postgres', 'DROP SUBSCRIPTION upgrade');
my $last_fence = $pub->safe_psql('postgres', q{SELECT max(fencing_token) FROM idem_leases});

is($sub->safe_psql('postgres', q{
	SELECT count(*) FILTER (WHERE idem_claim(key, scope, interval '1 hour'))
	FROM idem_claims WHERE expires_at > now() AND hold_fence IS NULL}), '0',
	'after the switchover every claim committed on the publisher is a duplicate on the subscriber');
is($sub->safe_psql('postgres', q{SELECT string_agg(DISTINCT b.status || ' ' || (b.response ->> 'paid' = c.key), ',')
	FROM idem_claims c, idem_begin(c.key, 'pay') b WHERE c.key LIKE 'keep-%'}),
	'replay true', 'and every kept payment replays its own response');
is($sub->safe_psql('postgres', q{SELECT count(*) FROM payments WHERE key LIKE 'keep-%' AND paid <> 1}), '0',
	'each paid once');
cmp_ok($sub->safe_psql('postgres', q{SELECT idem_lease_acquire('job-1', 'after-switchover', interval '1 minute')}),
	'>', $last_fence, "a lease taken there gets a fence above every fence of the publisher's ($last_fence)");
cmp_ok($sub->safe_psql('postgres', q{SELECT fence FROM idem_hold('hold-after-switchover', 'pay')}),
	'>', $last_hold_fence, "and a new hold a fence above the publisher's holds ($last_hold_fence)");
is($sub->safe_psql('postgres', q{SELECT string_agg(status, ',') FROM generate_series(1, 5) g, idem_hold('hold-' || g, 'pay')}),
	'in_progress,in_progress,in_progress,in_progress,in_progress', "the publisher's holds are still held there");
my $level = $pub->safe_psql('postgres', q{SELECT idem_stock_level('sku')});
is($sub->safe_psql('postgres', q{SELECT idem_stock_level('sku')}), $level, "the stock level is the publisher's");
is($sub->safe_psql('postgres', q{BEGIN; SELECT idem_stock_take('sku', 1); COMMIT; SELECT idem_stock_level('sku')}),
	"t\n" . ($level - 1), 'and takes go on from it');
$sub->safe_psql('postgres', q{SELECT idem_claim('gone-after-switchover', 'shop', interval '1 millisecond')});
ok($sub->poll_query_until('postgres', q{
	SELECT NOT EXISTS (SELECT FROM idem_stock_ledger)
	   AND NOT EXISTS (SELECT FROM idem_claims WHERE key = 'gone-after-switchover')}),
	"the subscriber's own purge and fold work once the subscription is gone");

# A failback: the old publisher, whose shared memory holds the item it sold
# from, subscribes to the new server's stock tables. While subscribed, its
# takes are refused though the item is loaded there, and its level is read
# from the tables, which follow the new server's sales.
# A session that took before the subscription (and so knew the tables were
# not subscribed) learns of it too.
my ($in, $out, $err) = ('', '', '');
my $session = IPC::Run::start([ 'psql', '-X', '-At', '-v', 'VERBOSITY=verbose', '-d', $pub->connstr('postgres') ],
	'<', \$in, '>', \$out, '2>', \$err);
$in .= "SELECT 'before ' || idem_stock_take('sku', 1);\n";
$session->pump until $out =~ /before (\w+)/;
is($1, 'true', 'a session takes before the subscription');
$sub->safe_psql('postgres', 'CREATE PUBLICATION back FOR TABLE idem_stock_items, idem_stock_ledger');
my $sub_connstr = 'host=' . $sub->host . ' port=' . $sub->port . ' dbname=postgres';
$pub->safe_psql('postgres', "CREATE SUBSCRIPTION back CONNECTION '$sub_connstr' PUBLICATION back WITH (copy_data = false)");
$pub->wait_for_subscription_sync($sub, 'back');
$in .= "SELECT 'after ' || idem_stock_take('sku', 1);\n\\q\n";
$session->finish;
like($err, qr/55000: item "sku" is replicated into this database by a subscription/,
	'and is refused in the same session once the stock tables are subscribed');
($ret, $stdout, $stderr) = $pub->psql('postgres', "\\set VERBOSITY verbose\nSELECT idem_stock_take('sku', 1)");
like($stderr, qr/55000: item "sku" is replicated into this database by a subscription/,
	'a loaded item is refused while a subscription replicates the stock tables');
my $loaded_level = $pub->safe_psql('postgres', q{SELECT level FROM idem_stock WHERE item = 'sku'});
$sub->safe_psql('postgres', q{BEGIN; SELECT count(idem_stock_take('sku', 1)) FROM generate_series(1, 3); COMMIT});
$sub->wait_for_catchup('back', 'replay', $sub->lsn('insert'));
# (The old publisher's tables lack what the new server did before this
# subscription, copy_data being off; what they hold is read, not the item
# its shared memory loaded, which the new server's takes went below.)
is($pub->safe_psql('postgres', qq{
	SELECT idem_stock_level('sku') = i.level + coalesce((SELECT sum(delta) FROM idem_stock_ledger WHERE item = 'sku'), 0)
	   AND idem_stock_level('sku') < $loaded_level
	FROM idem_stock_items i WHERE item = 'sku'}), 't',
	"and its level is the tables', which follow the new server's takes");
$pub->safe_psql('postgres', 'DROP SUBSCRIPTION back');

# A replica identity dropped on purpose: the publisher's finishes of
# claims fail while it publishes the table, as the load above would have
# failed, and so does the purge of its expired rows; the purge of the other
# tables and the fold go on.
$pub->safe_psql('postgres', 'ALTER TABLE idem_claims REPLICA IDENTITY NOTHING');
($ret, $stdout, $stderr) = $pub->psql('postgres', q{SELECT pay('no-identity', interval '1 hour')});
like($stderr, qr/cannot update table "idem_claims" because it does not have a replica identity and publishes updates/,
	'without a replica identity idem_finish fails under a publication');
$pub->safe_psql('postgres', q{
	SELECT count(idem_claim('stuck-' || g, 'shop', interval '1 millisecond')) FROM generate_series(1, 10) g;
	SELECT count(idem_token_issue('stuck', interval '1 millisecond')) FROM generate_series(1, 10) g;
	SELECT idem_lease_acquire('stuck', 'nobody', interval '1 millisecond');
});
my $log_offset = -s $pub->logfile;
$pub->safe_psql('postgres', q{ALTER SYSTEM SET pg_idem.database = '*'; SELECT pg_reload_conf()});
ok($pub->poll_query_until('postgres', q{
	SELECT NOT EXISTS (SELECT FROM idem_tokens WHERE scope = 'stuck')
	   AND NOT EXISTS (SELECT FROM idem_leases WHERE name = 'stuck')
	   AND NOT EXISTS (SELECT FROM idem_stock_ledger)}),
	'the purge of tokens and leases, and the fold, go on while the purge of claims fails');
like(slurp_file($pub->logfile, $log_offset),
	qr/cannot delete from table "idem_claims" because it does not have a replica identity and publishes deletes/,
	'which the purge worker logs');
is($pub->safe_psql('postgres', q{SELECT count(*) FROM idem_claims WHERE key LIKE 'stuck-%'}), '10',
	'and the expired claims stay');
$pub->safe_psql('postgres', 'ALTER TABLE idem_claims REPLICA IDENTITY DEFAULT');
is($pub->safe_psql('postgres', q{SELECT pay('no-identity', interval '1 hour')}), 'new',
	'with the replica identity back, idem_finish works');
ok($pub->poll_query_until('postgres', q{SELECT NOT EXISTS (SELECT FROM idem_claims WHERE key LIKE 'stuck-%')}),
	'and the purge of claims');

$sub->stop;
$pub->stop;
done_testing();
