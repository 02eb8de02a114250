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
ok($node->poll_query_until('postgres', q{
	SELECT count(*) = 1 FROM pg_stat_activity WHERE backend_type = 'pg_idem purge launcher'}), 'the purge launcher runs');
# The worker that visits postgres, waiting at a marked row.
sub waiter
{
	my ($pause) = @_;
	return qq{SELECT l.pid FROM pg_locks l JOIN pg_stat_activity a USING (pid)
		WHERE a.backend_type = 'pg_idem purge worker' AND l.locktype = 'advisory' AND l.objid = $pause AND NOT l.granted};
}
sub waits_at
{
	my ($pause) = @_;
	return 'SELECT count(*) = 1 FROM (' . waiter($pause) . ') w';
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
my $worker = $node->safe_psql('postgres', waiter(1));

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
is($node->safe_psql('postgres', waiter(2)), $worker, 'the same worker, in the same visit');
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
ok($node->poll_query_until('postgres', qq{SELECT count(*) = 0 FROM pg_stat_activity WHERE pid = $worker}),
	'and its visit ends');

unlike(slurp_file($node->logfile), qr/FATAL/, 'no worker died');
$node->stop;
unlike(slurp_file($node->logfile), qr/terminated by signal|TRAP:/, 'no backend crashed');
done_testing();
