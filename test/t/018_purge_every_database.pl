# The purge reaches every database where pg_idem is installed, with no
# configuration (SPEC "Expiry and purge": pg_idem.database defaults to '*'):
# one launcher, connected to no database, visits each database in turn with
# a short-lived worker. A database created after the server started is
# found, and so is a second one later, without a restart; a dropped
# database and one without the extension leave the log clean; a list of
# names purges only those; with max_worker_processes tight the launcher
# says so once and goes on when a slot is free.
#
# Nothing is timed: "a round has passed" is seen by a claim that expires in
# `app` being purged (rounds_pass below); every other step polls for a
# state it can see.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

my $node = PostgreSQL::Test::Cluster->new('purge_every');
$node->init;
# Preloaded, and nothing else of pg_idem's: no pg_idem.database, no interval.
$node->append_conf('postgresql.conf', qq{
shared_preload_libraries = 'pg_idem'
});
$node->start;

is($node->safe_psql('postgres', 'SHOW pg_idem.database'), '*', "pg_idem.database is '*' by default");
my $launcher = q{SELECT pid FROM pg_stat_activity WHERE backend_type = 'pg_idem purge launcher' AND datname IS NULL};
ok($node->poll_query_until('postgres', "SELECT count(*) = 1 FROM ($launcher) l"),
	'one purge launcher runs, connected to no database');
my $launcher_pid = $node->safe_psql('postgres', $launcher);
my $started = $node->safe_psql('postgres', 'SELECT pg_postmaster_start_time()');

# The lines of the log from $offset that report a problem.
sub problems_since
{
	my ($offset) = @_;
	return join '', grep { /ERROR|FATAL|WARNING|PANIC/ } split /^/m, slurp_file($node->logfile, $offset);
}

# A database created after the server started, the extension installed
# there and claims that expire: purged with no configuration at all (the
# default interval, 10 s).
$node->safe_psql('postgres', 'CREATE DATABASE app');
$node->safe_psql('app', 'CREATE EXTENSION pg_idem');
$node->safe_psql('app', q{
	SELECT count(idem_claim('gone-' || g, 'w', '1 millisecond')) FROM generate_series(1, 200) g;
	SELECT count(idem_claim('kept-' || g, 'w', '1 hour')) FROM generate_series(1, 10) g;
});
ok($node->poll_query_until('app', q{SELECT count(*) = 10 FROM idem_claims}),
	"the new database's expired claims are purged, with no configuration");
is($node->safe_psql('app', q{SELECT count(*) FROM idem_claims WHERE key LIKE 'kept-%'}), '10', 'live claims stay');
is($node->safe_psql('app', q{SELECT rows_purged >= 200 FROM idem_stats}), 't', "and counted in app's idem_stats");
ok($node->poll_query_until('postgres', q{
	SELECT count(*) = 0 FROM pg_stat_activity WHERE backend_type = 'pg_idem purge worker'}),
	'no purge worker stays once nothing is left to purge');
is(problems_since(0), '', 'the launcher and its workers have logged no problem since the server started');
is($node->safe_psql('postgres', $launcher), $launcher_pid, 'and it is the launcher that started with the server');

# The rest goes faster: a reload changes the interval.
$node->safe_psql('postgres', q{ALTER SYSTEM SET pg_idem.purge_interval = '100ms'; SELECT pg_reload_conf()});

# Each call waits for $n rounds of the launcher: a claim that expires at once
# in app, purged. The round that purges the (k+1)th started after the kth was
# purged, so with $n >= 3 at least one whole round ran after the call began
# and visited every database it found.
my $witness = 0;
sub rounds_pass
{
	my ($n) = @_;
	for (1 .. $n)
	{
		$witness++;
		$node->safe_psql('app', "SELECT idem_claim('witness-$witness', 'w', '1 millisecond')");
		$node->poll_query_until('app', "SELECT count(*) = 0 FROM idem_claims WHERE key = 'witness-$witness'")
		  or return 0;
	}
	return 1;
}

# A second database, created later, is picked up without a restart.
$node->safe_psql('postgres', 'CREATE DATABASE app2');
$node->safe_psql('app2', 'CREATE EXTENSION pg_idem');
$node->safe_psql('app2', q{SELECT count(idem_claim('gone-' || g, 'w', '1 millisecond')) FROM generate_series(1, 100) g});
ok($node->poll_query_until('app2', q{SELECT count(*) = 0 FROM idem_claims}),
	'a database created later is purged too');
is($node->safe_psql('postgres', 'SELECT pg_postmaster_start_time()'), $started, 'without a restart');
is($node->safe_psql('postgres', $launcher), $launcher_pid, 'by the same launcher');

# A database without the extension: visited, and nothing logged.
my $offset = -s $node->logfile;
$node->safe_psql('postgres', 'CREATE DATABASE plain');
ok(rounds_pass(3), 'rounds go on with a database that lacks the extension');
is(problems_since($offset), '', 'which leaves the log clean');

# A dropped database: the launcher goes on with the others, and nothing is
# logged about it. (Only a worker that connects in the very instant of the
# drop fails, with PostgreSQL's own FATAL: allowed at the drop, never after.)
$node->safe_psql('postgres', 'CREATE DATABASE doomed');
$node->safe_psql('doomed', 'CREATE EXTENSION pg_idem');
$node->safe_psql('doomed', q{SELECT count(idem_claim('gone-' || g, 'w', '1 millisecond')) FROM generate_series(1, 50) g});
ok($node->poll_query_until('doomed', q{SELECT count(*) = 0 FROM idem_claims}), 'the database to drop is purged');
$offset = -s $node->logfile;
$node->safe_psql('postgres', 'DROP DATABASE doomed');
ok(rounds_pass(2), 'rounds end after the drop');
my $at_drop = problems_since($offset);
$at_drop =~ s/^.*FATAL:  database ("doomed"|\d+) does not exist\n//mg;
is($at_drop, '', 'the drop logs no problem (but the race PostgreSQL reports itself)');
$offset = -s $node->logfile;
$node->safe_psql('app2', q{SELECT count(idem_claim('after-drop-' || g, 'w', '1 millisecond')) FROM generate_series(1, 20) g});
ok($node->poll_query_until('app2', q{SELECT count(*) = 0 FROM idem_claims}), 'the other databases are still purged');
ok(rounds_pass(3), 'round after round');
is(problems_since($offset), '', 'and the log stays clean');
ok(!$node->log_contains('doomed', $offset), 'with no word of the dropped database');
is($node->safe_psql('postgres', $launcher), $launcher_pid, 'the same launcher all along');

# A list: only the databases named are purged; a reload applies it.
$offset = -s $node->logfile;
$node->safe_psql('postgres', q{ALTER SYSTEM SET pg_idem.database = 'app, nosuchdb'; SELECT pg_reload_conf()});
ok($node->wait_for_log(qr/pg_idem.database names database "nosuchdb", which does not exist/, $offset),
	'a listed database that does not exist is reported');
$node->safe_psql('app2', q{SELECT count(idem_claim('unlisted-' || g, 'w', '1 millisecond')) FROM generate_series(1, 20) g});
ok(rounds_pass(3), "pg_idem.database = 'app, nosuchdb' purges app");
is($node->safe_psql('app2', q{SELECT count(*) FROM idem_claims WHERE key LIKE 'unlisted-%'}), '20',
	'and not app2, which it does not name');
my @reports = slurp_file($node->logfile, $offset) =~ /names database "nosuchdb"/g;
is(scalar(@reports), 1, 'the missing database is reported once, not every round');
is(problems_since($offset), '', 'and nothing else is logged');
$node->safe_psql('postgres', q{ALTER SYSTEM RESET pg_idem.database; SELECT pg_reload_conf()});
ok($node->poll_query_until('app2', q{SELECT count(*) = 0 FROM idem_claims WHERE key LIKE 'unlisted-%'}),
	"back to '*', app2 is purged again");

# A value that is not '*' or a list is refused: by ALTER SYSTEM, and at a
# reload of postgresql.conf, which keeps the setting in force.
for my $bad ('*, app', 'app,,app2')
{
	my ($ret, $stdout, $stderr) = $node->psql('postgres', qq{ALTER SYSTEM SET pg_idem.database = '$bad'});
	like($stderr, qr/invalid value for parameter "pg_idem.database"/, "ALTER SYSTEM refuses '$bad'");
}
$offset = -s $node->logfile;
$node->append_conf('postgresql.conf', "pg_idem.database = '*, app'\n");
$node->safe_psql('postgres', 'SELECT pg_reload_conf()');
ok($node->wait_for_log(qr/invalid value for parameter "pg_idem.database"/, $offset),
	'a reload reports a bad value in postgresql.conf');
$node->safe_psql('app2', q{SELECT count(idem_claim('kept-setting-' || g, 'w', '1 millisecond')) FROM generate_series(1, 20) g});
ok($node->poll_query_until('app2', q{SELECT count(*) = 0 FROM idem_claims}), "and keeps '*' in force");
$node->append_conf('postgresql.conf', "pg_idem.database = '*'\n");
$node->safe_psql('postgres', 'SELECT pg_reload_conf()');

# max_worker_processes tight: the launcher and one worker fit (no logical
# replication launcher takes a slot).
$node->append_conf('postgresql.conf', qq{
max_worker_processes = 2
max_logical_replication_workers = 0
});
$node->restart;
ok($node->poll_query_until('postgres', "SELECT count(*) = 1 FROM ($launcher) l"), 'the launcher runs with two slots');
ok(rounds_pass(3), 'and purges with the one slot left');
my $log = slurp_file($node->logfile);
is(problems_since(rindex($log, 'starting PostgreSQL')), '', 'with no problem logged since the restart');
$launcher_pid = $node->safe_psql('postgres', $launcher);

# Take the free slot with a parallel worker. First the launcher is given
# nothing to visit, so it cannot race the query for the slot: the report of
# the missing name shows it has applied the setting and ended that round.
$offset = -s $node->logfile;
$node->safe_psql('postgres', q{ALTER SYSTEM SET pg_idem.database = 'nosuchdb'; SELECT pg_reload_conf()});
$node->wait_for_log(qr/names database "nosuchdb"/, $offset);
my $force_parallel = $node->safe_psql('postgres', 'SHOW server_version_num') >= 160000
  ? 'debug_parallel_query' : 'force_parallel_mode';
my ($in, $out, $err) = ("SET $force_parallel = on;\nSELECT pg_sleep(600);\n", '', '');
my $sleeper = IPC::Run::start([ 'psql', '-X', '-q', '-d', $node->connstr('postgres') ], '<', \$in, '>', \$out, '2>', \$err);
$sleeper->pump_nb while length $in;    # sent; it runs on its own
ok($node->poll_query_until('postgres', q{SELECT count(*) = 1 FROM pg_stat_activity WHERE backend_type = 'parallel worker'}),
	'a parallel worker holds the last free slot');

$node->safe_psql('app', q{SELECT count(idem_claim('starved-' || g, 'w', '1 millisecond')) FROM generate_series(1, 20) g});
$offset = -s $node->logfile;
# Each reload names another missing database, which the next round reports:
# so each report marks a round, here four in a row without a slot.
for my $name (qw(missing_a missing_b missing_c missing_d))
{
	$node->safe_psql('postgres', qq{ALTER SYSTEM SET pg_idem.database = 'app, $name'; SELECT pg_reload_conf()});
	$node->wait_for_log(qr/names database "$name"/, $offset);
}
my @full = slurp_file($node->logfile, $offset) =~ /could not start a purge worker: no background worker slot is free/g;
is(scalar(@full), 1, 'no free slot is logged once over rounds that found none');
is($node->safe_psql('app', q{SELECT count(*) FROM idem_claims WHERE key LIKE 'starved-%'}), '20',
	'meanwhile nothing is purged');
is($node->safe_psql('postgres', $launcher), $launcher_pid, 'and the launcher carries on');
unlike(slurp_file($node->logfile, $offset), qr/FATAL|terminated by signal|exited with exit code/,
	'nothing died of it');

# Once the slot is free again, the next round purges.
$node->safe_psql('postgres', q{
	SELECT pg_cancel_backend(pid) FROM pg_stat_activity
	WHERE backend_type = 'client backend' AND query LIKE 'SELECT pg_sleep(600)%'});
$in .= "\\q\n";
$sleeper->finish;
ok($node->poll_query_until('app', q{SELECT count(*) = 0 FROM idem_claims WHERE key LIKE 'starved-%'}),
	'a freed slot lets the next round purge');
ok($node->wait_for_log(qr/pg_idem purge launcher started a purge worker again/, $offset), 'which the log says');
is($node->safe_psql('postgres', $launcher), $launcher_pid, 'by the same launcher');

$node->stop('fast');
unlike(slurp_file($node->logfile), qr/terminated by signal|TRAP:/, 'no process crashed');
done_testing();
