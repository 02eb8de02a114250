# Helpers shared by pg_idem's TAP tests.
package IdemTest;
use strict;
use warnings;
use Exporter 'import';
use Time::HiRes qw(usleep);
our @EXPORT_OK = qw(crash_server blocked_or_done stop_or_report);

# On the machines pg_idem is tested on, process 1 does not reap orphans, so a
# postmaster killed with SIGKILL would stay a zombie and PostgreSQL would take
# its pid file for a live server. A test that uses this module therefore
# becomes the reaper of its orphans (prctl PR_SET_CHILD_SUBREAPER) before it
# starts any server, and reaps a killed postmaster itself.
syscall(157, 36, 1, 0, 0, 0) == 0    # SYS_prctl, PR_SET_CHILD_SUBREAPER
  or die "prctl(PR_SET_CHILD_SUBREAPER): $!";

# Kill the postmaster with SIGKILL and wait until it and the backends it
# leaves behind are gone, so that the server can start again.
sub crash_server
{
	my ($node) = @_;
	my $pid = $node->{_pid} or die 'the server is not running';
	$node->kill9;
	waitpid($pid, 0);
	my $name = $node->name;
	for (1 .. 600)
	{
		return 1 unless grep { /postgres: \Q$name\E:/ } `ps -ww -eo args`;
		usleep(100_000);
	}
	return 0;
}

# Polls until no active statement whose text contains $text runs without
# waiting for a lock: it either waits on one (a row or transaction lock) or
# has answered. Returns whether that happened before the poll's timeout.
sub blocked_or_done
{
	my ($node, $text) = @_;
	$text =~ s/'/''/g;
	return $node->poll_query_until('postgres', qq{
		SELECT NOT EXISTS (SELECT FROM pg_stat_activity
		                   WHERE position('$text' IN query) > 0 AND state = 'active'
		                     AND pid <> pg_backend_pid()
		                     AND wait_event_type IS DISTINCT FROM 'Lock')});
}

# Stops the server (pg_ctl -m $mode) waiting at most $timeout seconds. If it
# does not stop, prints what every child of the postmaster still running is
# doing (its state and signal masks from /proc, its stack from gdb), so that
# a child that ignores the shutdown shows where it is stuck, then stops the
# server immediately. Returns whether the first stop worked.
sub stop_or_report
{
	my ($node, $mode, $timeout) = @_;
	my $pid = $node->{_pid} or die 'the server is not running';
	my $pgdata = $node->data_dir;
	if (system('pg_ctl', '-D', $pgdata, '-m', $mode, '-t', $timeout, 'stop') == 0)
	{
		$node->_update_pid(0);
		return 1;
	}
	# diag, not print: PostgreSQL::Test::Utils sends STDOUT and STDERR to the
	# test's log file alone.
	Test::More::diag("pg_ctl -m $mode stop did not finish in $timeout s; the postmaster's children:");
	for my $child (split ' ', `pgrep -P $pid`)
	{
		Test::More::diag('--- ', `ps -o pid=,stat=,pcpu=,args= -p $child`,
			grep({ /^(State|Sig)/ } `cat /proc/$child/status 2>/dev/null`),
			grep({ /^#/ } `gdb -p $child -batch -ex bt 2>/dev/null`));
	}
	system('pg_ctl', '-D', $pgdata, '-m', 'immediate', 'stop');
	$node->_update_pid(-1);
	return 0;
}

1;
