# The background purge: a launcher visits every database in
# pg_idem.database with a short-lived worker, which purges expired rows on
# its own, leaves live ones, reports its deletions so autovacuum sees them,
# logs an error and lets the next round carry on, and exits when nothing is
# left. The launcher comes back after a restart, follows a reload of its
# settings, only logs a listed database that does not exist, is woken (not
# ended) by a cancel, stops cleanly on shutdown; the purge counts what it
# purged. (Every database by default, and the slots it needs:
# test/t/018_purge_every_database.pl.)
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use IdemTest qw(stop_or_report);

my $node = PostgreSQL::Test::Cluster->new('purge');
$node->init;
$node->append_conf('postgresql.conf', qq{
shared_preload_libraries = 'pg_idem'
pg_idem.database = 'postgres, shop, nosuchdb'
pg_idem.purge_interval = '100ms'
pg_idem.purge_batch_size = 1000
});
$node->start;
$node->safe_psql('postgres', 'CREATE EXTENSION pg_idem; CREATE DATABASE shop');
$node->safe_psql('shop', 'CREATE EXTENSION pg_idem');

my $launcher = q{SELECT pid FROM pg_stat_activity WHERE backend_type = 'pg_idem purge launcher'};
ok($node->poll_query_until('postgres', "SELECT count(*) = 1 FROM ($launcher) l"), 'the purge launcher runs');
my $launcher_pid = $node->safe_psql('postgres', $launcher);
ok($node->wait_for_log(qr/pg_idem.database names database "nosuchdb", which does not exist/),
	'a database in the list that does not exist is reported in the log');
ok($node->log_contains('pg_idem purge launcher started'), 'the launcher says it started');

# 5,000 claims that expire at once, 100 that live an hour, 10 forever.
$node->safe_psql('postgres', q{
	SELECT count(idem_claim('gone-' || g, 'w', '1 millisecond')) FROM generate_series(1, 5000) g;
	SELECT count(idem_claim('kept-' || g, 'w', '1 hour')) FROM generate_series(1, 100) g;
	SELECT count(idem_claim('forever-' || g, 'w', NULL)) FROM generate_series(1, 10) g;
});
ok($node->poll_query_until('postgres', q{SELECT count(*) = 110 FROM idem_claims}),
	'the worker purges the expired claims on its own, in batches');
is($node->safe_psql('postgres', q{SELECT count(*) FROM idem_claims WHERE key LIKE 'gone-%'}),
	'0', 'no expired claim is left');
is($node->safe_psql('postgres', q{SELECT rows_purged >= 5000 FROM idem_stats}),
	't', 'idem_stats counts the rows it purged');
ok($node->poll_query_until('postgres', q{
	SELECT n_tup_del >= 5000 AND n_dead_tup >= 1 FROM pg_stat_user_tables WHERE relname = 'idem_claims'}),
	'its deletions reach pg_stat_user_tables, where autovacuum looks for dead rows');
$node->safe_psql('shop', q{SELECT count(idem_claim('shop-' || g, 'w', '1 millisecond')) FROM generate_series(1, 100) g});
ok($node->poll_query_until('shop', q{SELECT count(*) = 0 FROM idem_claims}),
	'the second database in the list is purged too');
ok($node->poll_query_until('postgres', q{SELECT count(*) = 0 FROM pg_stat_activity WHERE backend_type = 'pg_idem purge worker'}),
	'and no worker stays when nothing is left');

# A round has passed once a claim that expires in shop, made now, is gone.
my $witness = 0;
sub round_passes
{
	$witness++;
	$node->safe_psql('shop', "SELECT idem_claim('witness-$witness', 'w', '1 millisecond')");
	return $node->poll_query_until('shop', "SELECT count(*) = 0 FROM idem_claims WHERE key = 'witness-$witness'");
}

# An error (here: a lock_timeout while a DBA holds the table) is logged and
# the next round purges once the table is free.
$node->safe_psql('postgres', q{ALTER DATABASE postgres SET lock_timeout = '50ms'});
$node->safe_psql('postgres', q{SELECT count(idem_claim('late-' || g, 'w', '1 millisecond')) FROM generate_series(1, 50) g});
my $size_before_lock = -s $node->logfile;
my ($in, $out, $err) = ('', '', '');
my $h = IPC::Run::start(
	[ 'psql', '-X', '-q', '-v', 'ON_ERROR_STOP=1', '-d', $node->connstr('postgres') ],
	'<', \$in, '>', \$out, '2>', \$err);
$in .= "BEGIN; LOCK idem_claims IN ACCESS EXCLUSIVE MODE; SELECT 'locked';\n";
$h->pump until $out =~ /locked/;
ok($node->wait_for_log(qr/canceling statement due to lock timeout/, $size_before_lock),
	'the worker logs the error it met');
$in .= "COMMIT;\n\\q\n";
$h->finish;
ok($node->poll_query_until('postgres', q{SELECT count(*) = 0 FROM idem_claims WHERE key LIKE 'late-%'}),
	'and the purge goes on once the table is free');
is($node->safe_psql('postgres', $launcher), $launcher_pid, 'the same launcher carried on after the error');
$node->safe_psql('postgres', q{ALTER DATABASE postgres RESET lock_timeout});

# A terminated launcher is started again by the postmaster.
$node->safe_psql('postgres', "SELECT pg_terminate_backend($launcher_pid)");
ok($node->poll_query_until('postgres', "SELECT count(*) = 1 FROM ($launcher) l WHERE pid <> $launcher_pid"),
	'a terminated launcher is started again');
$node->safe_psql('postgres', q{SELECT count(idem_claim('relaunched-' || g, 'w', '1 millisecond')) FROM generate_series(1, 20) g});
ok($node->poll_query_until('postgres', q{SELECT count(*) = 0 FROM idem_claims WHERE key LIKE 'relaunched-%'}),
	'and purges');

# After a restart the launcher is back and the live claims are intact.
$node->restart;
ok($node->poll_query_until('postgres', "SELECT count(*) = 1 FROM ($launcher) l"), 'the launcher is back after a restart');
is($node->safe_psql('postgres', q{SELECT count(*) FROM idem_claims}), '110', 'live claims survive');
$launcher_pid = $node->safe_psql('postgres', $launcher);

# Sets the interval and names another missing database with it: the report
# of that name shows the launcher has applied the reload and begun a round;
# then it is idle (in pg_stat_activity) only while it sleeps between rounds.
my $marker = 0;
sub reload_and_sleep
{
	my ($interval) = @_;
	$marker++;
	my $offset = -s $node->logfile;
	$node->safe_psql('postgres', qq{
		ALTER SYSTEM SET pg_idem.purge_interval = '$interval';
		ALTER SYSTEM SET pg_idem.database = 'postgres, shop, nosuchdb$marker';
		SELECT pg_reload_conf()});
	$node->wait_for_log(qr/names database "nosuchdb$marker"/, $offset);
	return $node->poll_query_until('postgres', "SELECT state = 'idle' FROM ($launcher) l JOIN pg_stat_activity USING (pid)");
}

# A reload changes the interval of the running launcher: at an hour it leaves
# new expired rows alone, back at 100 ms it purges them.
ok(reload_and_sleep('1h'), 'the launcher sleeps for an hour');
$node->safe_psql('postgres', q{SELECT count(idem_claim('idle-' || g, 'w', '1 millisecond')) FROM generate_series(1, 20) g});
sleep 1;    # time enough for a purge that should not come
is($node->safe_psql('postgres', q{SELECT count(*) FROM idem_claims WHERE key LIKE 'idle-%'}), '20',
	'with an interval of an hour, new expired rows wait');
$node->safe_psql('postgres', q{ALTER SYSTEM SET pg_idem.purge_interval = '100ms'; SELECT pg_reload_conf()});
ok($node->poll_query_until('postgres', q{SELECT count(*) = 0 FROM idem_claims WHERE key LIKE 'idle-%'}),
	'a reload wakes the launcher with the new interval');

# A cancel (pg_cancel_backend) never ends the launcher: while it sleeps it
# starts a round at once. A cancel of a worker ends its visit, logged, and
# the next round carries on. Nothing is logged as FATAL.
my $size_before_cancel = -s $node->logfile;
ok(reload_and_sleep('1h'), 'the launcher sleeps for an hour again');
$node->safe_psql('postgres', q{SELECT count(idem_claim('cancel-idle-' || g, 'w', '1 millisecond')) FROM generate_series(1, 30) g});
is($node->safe_psql('postgres', "SELECT state FROM pg_stat_activity WHERE pid = $launcher_pid"), 'idle',
	'it sleeps while rows expire');
is($node->safe_psql('postgres', "SELECT pg_cancel_backend($launcher_pid)"), 't', 'a cancel reaches the sleeping launcher');
ok($node->poll_query_until('postgres', q{SELECT count(*) = 0 FROM idem_claims WHERE key LIKE 'cancel-idle-%'}),
	'which purges at once');
is($node->safe_psql('postgres', $launcher), $launcher_pid, 'and it is the same launcher');
ok(reload_and_sleep('100ms'), 'back to an interval of 100 ms');

$node->safe_psql('postgres', q{SELECT count(idem_claim('cancel-busy-' || g, 'w', '1 millisecond')) FROM generate_series(1, 30) g});
($in, $out, $err) = ('', '', '');
$h = IPC::Run::start(
	[ 'psql', '-X', '-q', '-v', 'ON_ERROR_STOP=1', '-d', $node->connstr('postgres') ],
	'<', \$in, '>', \$out, '2>', \$err);
$in .= "BEGIN; LOCK idem_claims IN ACCESS EXCLUSIVE MODE; SELECT 'locked';\n";
$h->pump until $out =~ /locked/;
my $waiting_worker = q{SELECT pid FROM pg_stat_activity
	WHERE backend_type = 'pg_idem purge worker' AND datname = 'postgres' AND wait_event_type = 'Lock'};
ok($node->poll_query_until('postgres', "SELECT count(*) = 1 FROM ($waiting_worker) w"),
	'a worker waits for the locked table');
is($node->safe_psql('postgres', "SELECT pg_cancel_backend(pid) FROM ($waiting_worker) w"), 't', 'a cancel reaches it');
ok($node->wait_for_log(qr/ERROR:  canceling statement due to user request/, $size_before_cancel),
	'its visit ends, and that is logged');
$in .= "COMMIT;\n\\q\n";
$h->finish;
ok($node->poll_query_until('postgres', q{SELECT count(*) = 0 FROM idem_claims WHERE key LIKE 'cancel-busy-%'}),
	'the next round purges after a cancel of a worker');
is($node->safe_psql('postgres', $launcher), $launcher_pid, 'by the same launcher');
my $cancel_log = slurp_file($node->logfile, $size_before_cancel);
unlike($cancel_log, qr/FATAL|terminated by signal|exited with exit code/, 'nothing died of a cancel');

# A database without the extension is left alone, without errors.
$node->safe_psql('postgres', 'DROP EXTENSION pg_idem');
my $size_before_drop = -s $node->logfile;
ok(round_passes() && round_passes() && round_passes(), 'rounds go on');
unlike(slurp_file($node->logfile, $size_before_drop), qr/ERROR|FATAL/, 'with no errors where pg_idem is not installed');

# Shutdown stops it cleanly: a fast stop that would hang on a stuck worker.
# (A child that does not stop shows its stack: IdemTest::stop_or_report.)
ok(stop_or_report($node, 'fast', 30), 'the server stopped with the launcher running');

done_testing();
