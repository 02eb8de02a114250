# The background purge worker: purges expired rows on its own, leaves live
# ones, reports its deletions so autovacuum sees them, logs an error and
# carries on, comes back after a restart, follows a reload of its settings,
# serves every database in pg_idem.database (and only logs one that does
# not exist), stops cleanly on shutdown, and counts what it purged.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

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

ok($node->poll_query_until('postgres', q{
	SELECT count(*) = 1 FROM pg_stat_activity WHERE backend_type = 'pg_idem purge worker' AND datname = 'postgres'}),
	'a purge worker runs for the database');
ok($node->poll_query_until('postgres', q{
	SELECT count(*) = 1 FROM pg_stat_activity WHERE backend_type = 'pg_idem purge worker' AND datname = 'shop'}),
	'and one for the second database in the list');
ok(wait_for_log($node, qr/database "nosuchdb" does not exist/, 0),
	'a database in the list that does not exist is reported in the log');
ok($node->log_contains('pg_idem purge worker started for database "postgres"'), 'it says so in the log');

# 5,000 claims that expire at once, 100 that live an hour, 10 forever.
$node->safe_psql('postgres', q{
	SELECT count(idem_claim('gone-' || g, 'w', '1 millisecond')) FROM generate_series(1, 5000) g;
	SELECT count(idem_claim('kept-' || g, 'w', '1 hour')) FROM generate_series(1, 100) g;
	SELECT count(idem_claim('forever-' || g, 'w')) FROM generate_series(1, 10) g;
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
	'the second database is purged by its own worker');

# An error (here: a lock_timeout while a DBA holds the table) is logged and
# the same worker carries on once the table is free.
my $pid = $node->safe_psql('postgres',
	q{SELECT pid FROM pg_stat_activity WHERE backend_type = 'pg_idem purge worker' AND datname = 'postgres'});
$node->safe_psql('postgres', q{ALTER DATABASE postgres SET lock_timeout = '50ms'});
$node->safe_psql('postgres', q{SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE backend_type = 'pg_idem purge worker' AND datname = 'postgres'});
ok($node->poll_query_until('postgres',
	q{SELECT count(*) = 1 FROM pg_stat_activity WHERE backend_type = 'pg_idem purge worker' AND datname = 'postgres'}),
	'a terminated worker is started again');
$pid = $node->safe_psql('postgres',
	q{SELECT pid FROM pg_stat_activity WHERE backend_type = 'pg_idem purge worker' AND datname = 'postgres'});
$node->safe_psql('postgres', q{SELECT count(idem_claim('late-' || g, 'w', '1 millisecond')) FROM generate_series(1, 50) g});
my $size_before_lock = -s $node->logfile;
my ($in, $out, $err) = ('', '', '');
my $h = IPC::Run::start(
	[ 'psql', '-X', '-q', '-v', 'ON_ERROR_STOP=1', '-d', $node->connstr('postgres') ],
	'<', \$in, '>', \$out, '2>', \$err);
$in .= "BEGIN; LOCK idem_claims IN ACCESS EXCLUSIVE MODE; SELECT 'locked';\n";
$h->pump until $out =~ /locked/;
ok(wait_for_log($node, qr/canceling statement due to lock timeout/, $size_before_lock),
	'the worker logs the error it met');
$in .= "COMMIT;\n\\q\n";
$h->finish;
ok($node->poll_query_until('postgres', q{SELECT count(*) = 0 FROM idem_claims WHERE key LIKE 'late-%'}),
	'and purges once the table is free');
is($node->safe_psql('postgres',
	q{SELECT pid FROM pg_stat_activity WHERE backend_type = 'pg_idem purge worker' AND datname = 'postgres'}),
	$pid, 'the same worker carried on after the error');
$node->safe_psql('postgres', q{ALTER DATABASE postgres RESET lock_timeout});

# After a restart the worker is back and the live claims are intact.
$node->restart;
ok($node->poll_query_until('postgres',
	q{SELECT count(*) = 1 FROM pg_stat_activity WHERE backend_type = 'pg_idem purge worker' AND datname = 'postgres'}),
	'the worker is back after a restart');
is($node->safe_psql('postgres', q{SELECT count(*) FROM idem_claims}), '110', 'live claims survive');

# A reload changes the interval of the running worker: at an hour it leaves
# new expired rows alone, back at 100 ms it purges them.
$node->safe_psql('postgres', q{ALTER SYSTEM SET pg_idem.purge_interval = '1h'; SELECT pg_reload_conf()});
ok($node->poll_query_until('postgres', q{SELECT count(*) = 110 FROM idem_claims}), 'nothing left to purge');
sleep 1;    # the worker has gone to sleep for an hour
$node->safe_psql('postgres', q{SELECT count(idem_claim('idle-' || g, 'w', '1 millisecond')) FROM generate_series(1, 20) g});
sleep 1;
is($node->safe_psql('postgres', q{SELECT count(*) FROM idem_claims WHERE key LIKE 'idle-%'}), '20',
	'with an interval of an hour, new expired rows wait');
$node->safe_psql('postgres', q{ALTER SYSTEM RESET pg_idem.purge_interval; ALTER SYSTEM SET pg_idem.purge_interval = '100ms'; SELECT pg_reload_conf()});
ok($node->poll_query_until('postgres', q{SELECT count(*) = 0 FROM idem_claims WHERE key LIKE 'idle-%'}),
	'a reload wakes the worker with the new interval');

# A cancel (pg_cancel_backend) interrupts a round, never the worker: not
# while it sleeps between rounds, nor while a round waits for a lock. The
# same worker goes on purging, and nothing is logged as FATAL.
my $worker_pid = q{SELECT pid FROM pg_stat_activity WHERE backend_type = 'pg_idem purge worker' AND datname = 'postgres'};
$pid = $node->safe_psql('postgres', $worker_pid);
my $size_before_cancel = -s $node->logfile;
# Asleep for an hour, with expired rows waiting: a cancel only wakes it.
$node->safe_psql('postgres', q{ALTER SYSTEM SET pg_idem.purge_interval = '1h'; SELECT pg_reload_conf()});
ok($node->poll_query_until('postgres', qq{SELECT state = 'idle' AND wait_event = 'Extension' FROM pg_stat_activity WHERE pid = $pid}),
	'the worker sleeps between rounds');
sleep 1;    # past the round the reload woke it for
$node->safe_psql('postgres', q{SELECT count(idem_claim('cancel-idle-' || g, 'w', '1 millisecond')) FROM generate_series(1, 30) g});
is($node->safe_psql('postgres', qq{SELECT state, wait_event FROM pg_stat_activity WHERE pid = $pid}), 'idle|Extension',
	'it sleeps while rows expire');
is($node->safe_psql('postgres', qq{SELECT pg_cancel_backend($pid)}), 't', 'a cancel reaches the sleeping worker');
ok($node->poll_query_until('postgres', q{SELECT count(*) = 0 FROM idem_claims WHERE key LIKE 'cancel-idle-%'}),
	'the worker purges after a cancel while it slept');
is($node->safe_psql('postgres', $worker_pid), $pid, 'and it is the same worker');
$node->safe_psql('postgres', q{ALTER SYSTEM SET pg_idem.purge_interval = '100ms'; SELECT pg_reload_conf()});

$node->safe_psql('postgres', q{SELECT count(idem_claim('cancel-busy-' || g, 'w', '1 millisecond')) FROM generate_series(1, 30) g});
($in, $out, $err) = ('', '', '');
$h = IPC::Run::start(
	[ 'psql', '-X', '-q', '-v', 'ON_ERROR_STOP=1', '-d', $node->connstr('postgres') ],
	'<', \$in, '>', \$out, '2>', \$err);
$in .= "BEGIN; LOCK idem_claims IN ACCESS EXCLUSIVE MODE; SELECT 'locked';\n";
$h->pump until $out =~ /locked/;
ok($node->poll_query_until('postgres', qq{SELECT wait_event_type = 'Lock' FROM pg_stat_activity WHERE pid = $pid}),
	'a round of the worker waits for the locked table');
is($node->safe_psql('postgres', qq{SELECT pg_cancel_backend($pid)}), 't', 'a cancel reaches the busy worker');
ok(wait_for_log($node, qr/ERROR:  canceling statement due to user request/, $size_before_cancel),
	'the round is canceled and that is logged');
$in .= "COMMIT;\n\\q\n";
$h->finish;
ok($node->poll_query_until('postgres', q{SELECT count(*) = 0 FROM idem_claims WHERE key LIKE 'cancel-busy-%'}),
	'the worker purges after a cancel of its round');
is($node->safe_psql('postgres', $worker_pid), $pid, 'and it is still the same worker');
my $cancel_log = slurp_from($node->logfile, $size_before_cancel);
unlike($cancel_log, qr/FATAL|terminated by signal|exited with exit code/, 'no worker died of a cancel');

# A database without the extension is left alone, without errors.
$node->safe_psql('postgres', 'DROP EXTENSION pg_idem');
my $size_before_drop = -s $node->logfile;
sleep 1;
unlike(slurp_from($node->logfile, $size_before_drop), qr/ERROR/, 'no errors where pg_idem is not installed');

# Shutdown stops it cleanly: a fast stop that would hang on a stuck worker.
$node->stop('fast');
ok(1, 'the server stopped with the worker running');

done_testing();

sub slurp_from
{
	my ($file, $offset) = @_;
	open my $fh, '<', $file or die "open $file: $!";
	seek $fh, $offset, 0;
	local $/;
	return <$fh> // '';
}

sub wait_for_log
{
	my ($node, $re, $offset) = @_;
	for (1 .. 100)
	{
		return 1 if slurp_from($node->logfile, $offset) =~ $re;
		select undef, undef, undef, 0.1;
	}
	return 0;
}
