# Multi-step requests under crashing clients (SPEC "Multi-step requests"):
# clients of test/stress/idem_pay take payments in three phases (the order
# and a recovery point; the provider's charge and a recovery point; the
# completion), racing for the same requests, and are killed with kill -9 at
# moments drawn from a fixed seed while others go on, or stopped (SIGSTOP)
# past their hold and woken again. A killed client's held request stalls
# until its hold runs out and another client resumes it; a stopped client
# wakes with a stale fence, which idem_checkpoint and idem_complete refuse.
# At the end every request completed exactly once, under one fence, from
# one order and one charge; the provider was called more often than it
# charged, and the statistics show the resumes and the stale fences refused.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(usleep);
use IPC::Run;

my $client = 'test/stress/idem_pay';
-x $client or BAIL_OUT("$client is not built: run make stress");

my $node = PostgreSQL::Test::Cluster->new('hold_crash');
$node->init;
$node->append_conf('postgresql.conf', qq{
shared_preload_libraries = 'pg_idem'
max_connections = 40
});
$node->start;
$node->safe_psql('postgres', 'CREATE EXTENSION pg_idem');
my $dsn = $node->connstr('postgres');
system($client, '--dsn', $dsn, '--setup') == 0 or BAIL_OUT('idem_pay --setup failed');

my $keys = 300;
my @clients;
my $next_seed = 1;
sub start_client
{
	my ($out, $err) = ('', '');
	my $h = IPC::Run::start([ $client, '--dsn', $dsn, '--keys', $keys, '--hold-ms', '300', '--provider-ms', '30',
			'--seed', $next_seed++ ], '>', \$out, '2>', \$err);
	return { h => $h, err => \$err };
}
push @clients, start_client() for 1 .. 4;

srand(22);
my ($kills, $pauses, $failed) = (0, 0, 0);
for my $round (1 .. 30)
{
	usleep(50_000 + int(rand(200_000)));
	my @live = grep { $_->{h}->pumpable } @clients;
	last unless @live;
	my $victim = $live[ int(rand(@live)) ];
	if ($round % 3 == 0)
	{
		# A stall, not a crash: the client sleeps past its hold (SIGSTOP),
		# others may resume its request, and it wakes up with a stale fence.
		kill 'STOP', $victim->{h}{KIDS}[0]{PID};
		usleep(600_000);
		kill 'CONT', $victim->{h}{KIDS}[0]{PID};
		$pauses++;
		next;
	}
	kill 'KILL', $victim->{h}{KIDS}[0]{PID};
	eval { $victim->{h}->finish };
	$kills++;
	@clients = grep { $_ != $victim } @clients;
	push @clients, start_client();
}
for my $c (@clients)
{
	$c->{h}->finish;
	if ($c->{h}->result != 0)
	{
		$failed++;
		diag('a client failed: ' . ${ $c->{err} });
	}
}
# A last client completes whatever the killed ones left stalled.
my ($out, $err) = ('', '');
IPC::Run::run([ $client, '--dsn', $dsn, '--keys', $keys, '--hold-ms', '300', '--seed', '999' ], '>', \$out, '2>', \$err)
  or $failed++;
is($failed, 0, 'no client failed (every error a client met was one it handles)');
cmp_ok($kills, '>=', 15, "clients were killed with kill -9 mid-request ($kills kills, $pauses stalls)");

my $q = sub { $node->safe_psql('postgres', shift) };
is($q->(q{SELECT count(*) FROM idem_claims WHERE scope = 'payments' AND hold_fence IS NULL AND response IS NOT NULL}),
	$keys, 'every request completed');
is($q->(q{SELECT count(*) FROM idem_holds}), '0', 'no hold is left');
is($q->(q{SELECT count(*) || '/' || count(DISTINCT request_key) FROM pay_completions}), "$keys/$keys",
	'every request completed exactly once: one completion under one fence');
is($q->(q{SELECT count(*) FROM (SELECT request_key FROM pay_orders GROUP BY 1 HAVING count(*) <> 1) x}), '0',
	'one order per request: a resumed request went on from its recovery point, never redid a phase');
is($q->(q{SELECT count(*) FROM pay_orders}), $keys, 'and no request lacks its order');
is($q->(q{
	SELECT count(*) FROM idem_claims c
	JOIN pay_completions p ON p.request_key = c.key
	JOIN provider_charges ch ON ch.idempotency_key = c.key
	WHERE c.scope = 'payments' AND (c.response ->> 'charge')::bigint = ch.charge_id AND p.charge_id = ch.charge_id}),
	$keys, 'every stored response names the one charge the provider made for the request');
is($q->(q{
	SELECT count(*) FROM (SELECT idempotency_key FROM provider_calls GROUP BY 1 HAVING count(DISTINCT fence) > 1) x
	WHERE EXISTS (SELECT FROM pay_completions p WHERE p.request_key = x.idempotency_key
	              GROUP BY p.request_key HAVING count(DISTINCT p.fence) > 1)}),
	'0', 'no request charged under two fences that both completed');

my ($calls, $charges, $resumed, $refused, $in_progress) = split /\|/, $q->(q{
	SELECT (SELECT count(*) FROM provider_calls), (SELECT count(*) FROM provider_charges),
	       holds_resumed, stale_fences_refused, holds_in_progress
	FROM idem_scope_stats WHERE scope = 'payments'});
cmp_ok($resumed, '>', 0, 'stalled requests were resumed');
note("payments: $keys requests, $kills kills, $pauses stalls, $resumed resumes, $refused stale fences refused, "
	  . "$in_progress in_progress answers, $calls provider calls for $charges charges, double charges: 0");
diag("payments: $keys requests, $kills kills, $pauses stalls, $resumed resumes, $refused stale fences refused, "
	  . "$in_progress in_progress answers, $calls provider calls for $charges charges, double charges: 0");

$node->stop;
done_testing();
