# Helpers shared by pg_idem's TAP tests.
package IdemTest;
use strict;
use warnings;
use Exporter 'import';
use Time::HiRes qw(usleep);
our @EXPORT_OK = qw(crash_server);

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

1;
