# The purge worker keeps its row locks short (SPEC "Expiry and purge": it
# never blocks claims beyond a short lock on each deleted row). It deletes a
# backlog in transactions of at most 100 rows each, committed one after the
# other, so a claim of an expired key waits at most for one such transaction,
# never for the whole batch.
#
# A trigger pauses the worker's DELETE on two marked rows (on advisory locks
# this test holds); while it is paused, the test looks at what the worker's
# transaction has locked and which claims can go ahead. Nothing is timed:
# each step waits for a state it can see in pg_locks or pg_stat_activity.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

my $node = PostgreSQL::Test::Cluster->new('purge_locks');
$node->init;
$node->append_conf('postgresql.conf', qq{
shared_preload_libraries = 'pg_idem'
pg_idem.database = 'postgres'
pg_idem.purge_interval = '100ms'
});
$node->start;
$node->safe_psql('postgres', q{
	CREATE EXTENSION pg_idem;
	CREATE EXTENSION pgrowlocks;
	CREATE FUNCTION pause_purge() RETURNS trigger LANGUAGE plpgsql AS $$
	BEGIN
		IF OLD.key = 'pause-1' THEN PERFORM pg_advisory_xact_lock_shared(1); END IF;
		IF OLD.key = 'pause-2' THEN PERFORM pg_advisory_xact_lock_shared(2); END IF;
		RETURN OLD;
	END $$;
	CREATE TRIGGER pause_purge BEFORE DELETE ON idem_claims FOR EACH ROW EXECUTE FUNCTION pause_purge();
});
my $worker_pid = q{SELECT pid FROM pg_stat_activity WHERE backend_type = 'pg_idem purge worker' AND datname = 'postgres'};
ok($node->poll_query_until('postgres', "SELECT count(*) = 1 FROM ($worker_pid) w"), 'the purge worker runs');
my $worker = $node->safe_psql('postgres', $worker_pid);
sub waits_at
{
	my ($pause) = @_;
	return qq{SELECT EXISTS (SELECT 1 FROM pg_locks WHERE pid = $worker AND locktype = 'advisory' AND objid = $pause AND NOT granted)};
}

my $holder = $node->background_psql('postgres');
$holder->query_safe('SELECT pg_advisory_lock(1), pg_advisory_lock(2)');

# 9,002 expired claims, committed at once: 3,000, a pause, 3,000, a pause, 3,000.
$node->safe_psql('postgres', q{
	BEGIN;
	SELECT count(idem_claim('early-' || g, 'w', '1 millisecond')) FROM generate_series(1, 3000) g;
	SELECT idem_claim('pause-1', 'w', '1 millisecond');
	SELECT count(idem_claim('mid-' || g, 'w', '1 millisecond')) FROM generate_series(1, 3000) g;
	SELECT idem_claim('pause-2', 'w', '1 millisecond');
	SELECT count(idem_claim('late-' || g, 'w', '1 millisecond')) FROM generate_series(1, 3000) g;
	COMMIT;
});
ok($node->poll_query_until('postgres', waits_at(1)), 'the worker reaches the first marked row');

my $locked = $node->safe_psql('postgres', qq{SELECT count(*) FROM pgrowlocks('idem_claims') WHERE $worker = ANY (pids)});
cmp_ok($locked, '<=', 100, "the worker's transaction holds at most 100 row locks ($locked)");
is($node->safe_psql('postgres', q{SELECT count(*) FROM idem_claims WHERE key LIKE 'early-%'}), '0',
	'the rows before it are purged, and committed');
is($node->safe_psql('postgres', q{SELECT status FROM idem_begin('late-10', 'w', wait => false)}), 'new',
	'an expired key beyond that transaction is claimed at once, not in_progress');

# A claim of an expired key in the worker's transaction waits for it, and
# only for it: it goes on while the worker goes on to the next marked row.
my ($in, $out, $err) = ('', '', '');
my $claim = IPC::Run::start(
	[ 'psql', '-X', '-q', '-A', '-t', '-v', 'ON_ERROR_STOP=1', '-d', $node->connstr('postgres') . ' application_name=waiting_claim' ],
	'<', \$in, '>', \$out, '2>', \$err);
$in .= "SELECT idem_claim('mid-1', 'w');\n";
$claim->pump_nb while length $in;    # the claim is sent; it runs on its own
ok($node->poll_query_until('postgres', q{
	SELECT EXISTS (SELECT 1 FROM pg_stat_activity WHERE application_name = 'waiting_claim' AND wait_event_type = 'Lock')}),
	'a claim of an expired key the worker has locked waits');
$holder->query_safe('SELECT pg_advisory_unlock(1)');
ok($node->poll_query_until('postgres', waits_at(2)), 'the worker goes on to the second marked row');
ok($node->poll_query_until('postgres', q{
	SELECT EXISTS (SELECT 1 FROM pg_stat_activity WHERE application_name = 'waiting_claim' AND state = 'idle')}),
	'the waiting claim went on before the worker finished its batch');
$in .= "\\q\n";
$claim->finish;
is($out, "t\n", 'and claimed the key anew');
is($node->safe_psql('postgres', q{SELECT status FROM idem_begin('mid-2', 'w', wait => false)}), 'new',
	'the rows of the earlier transaction are free');
$locked = $node->safe_psql('postgres', qq{SELECT count(*) FROM pgrowlocks('idem_claims') WHERE $worker = ANY (pids)});
cmp_ok($locked, '<=', 100, "at the second pause too, at most 100 row locks ($locked)");

$holder->query_safe('SELECT pg_advisory_unlock(2)');
$holder->quit;
ok($node->poll_query_until('postgres', q{SELECT count(*) = 0 FROM idem_claims WHERE expires_at <= clock_timestamp()}),
	'the worker purges the rest');
is($node->safe_psql('postgres', q{SELECT count(*) FROM idem_claims}), '3', 'and keeps the three keys claimed again');
is($node->safe_psql('postgres', $worker_pid), $worker, 'all done by the same worker');

unlike(slurp_file($node->logfile), qr/FATAL/, 'no worker died');
$node->stop;
unlike(slurp_file($node->logfile), qr/terminated by signal|TRAP:/, 'no backend crashed');
done_testing();
