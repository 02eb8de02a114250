# pg_idem works without shared_preload_libraries and with it, and
# DROP EXTENSION leaves nothing behind in either case.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

for my $preload (0, 1)
{
	my $label = $preload ? 'preloaded' : 'not preloaded';
	my $node = PostgreSQL::Test::Cluster->new($preload ? 'preload' : 'plain');
	$node->init;
	$node->append_conf('postgresql.conf', "shared_preload_libraries = 'pg_idem'") if $preload;
	$node->start;

	is($node->safe_psql('postgres', q{SHOW shared_preload_libraries}),
		$preload ? 'pg_idem' : '', "$label: shared_preload_libraries as configured");
	$node->safe_psql('postgres', 'CREATE EXTENSION pg_idem');
	is($node->safe_psql('postgres', q{SELECT idem_claim('k'), idem_claim('k')}),
		't|f', "$label: a claim, then a duplicate");

	# Statistics live in shared memory: only with preload; without it the
	# views refuse (55000) instead of showing zeros.
	my ($ret, $stdout, $stderr) = $node->psql('postgres', "\\set VERBOSITY verbose\nSELECT new_claims FROM idem_stats");
	if ($preload)
	{
		is($stdout, '1', "$label: idem_stats counts the new claim");
	}
	else
	{
		like($stderr, qr/ERROR:  55000: pg_idem statistics needs pg_idem in shared_preload_libraries/,
			"$label: idem_stats refuses with 55000");
		like($stderr, qr/HINT:  Add pg_idem to shared_preload_libraries/, "$label: and says how to fix it");
		for my $call (q{SELECT idem_stock_add('tv', 1)}, q{SELECT idem_stock_take('tv', 1)},
			q{SELECT idem_stock_level('tv')}, q{SELECT * FROM idem_stock})
		{
			($ret, $stdout, $stderr) = $node->psql('postgres', "\\set VERBOSITY verbose\n$call");
			like($stderr, qr/ERROR:  55000: pg_idem hot stock needs pg_idem in shared_preload_libraries/,
				"$label: $call refuses with 55000, never a wrong answer");
		}
	}

	# A claim survives a restart: it is a committed row.
	$node->restart;
	is($node->safe_psql('postgres', q{SELECT idem_claim('k')}),
		'f', "$label: the claim survives a restart");

	$node->safe_psql('postgres', 'DROP EXTENSION pg_idem');
	is($node->safe_psql('postgres', q{
		SELECT (SELECT count(*) FROM pg_class WHERE relname LIKE 'idem\_%')
		     + (SELECT count(*) FROM pg_proc WHERE proname LIKE 'idem\_%')
		     + (SELECT count(*) FROM pg_type WHERE typname LIKE '%idem\_%')}),
		'0', "$label: DROP EXTENSION leaves nothing behind");
	$node->stop;
}

done_testing();
