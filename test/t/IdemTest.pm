# Helpers shared by pg_idem's TAP tests.
package IdemTest;
use strict;
use warnings;
use Exporter 'import';
use Time::HiRes qw(usleep);
our @EXPORT_OK = qw(crash_server blocked_or_done);

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

1;
