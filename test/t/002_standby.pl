# On a hot standby claims are refused with 25006 (never a silent "duplicate"),
# and the standby's idem_claims shows what the primary committed.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

my $primary = PostgreSQL::Test::Cluster->new('primary');
$primary->init(allows_streaming => 1);
$primary->start;
$primary->safe_psql('postgres', 'CREATE EXTENSION pg_idem');
$primary->safe_psql('postgres', q{SELECT idem_claim('order-1', 'shop')});
$primary->backup('base');

my $standby = PostgreSQL::Test::Cluster->new('standby');
$standby->init_from_backup($primary, 'base', has_streaming => 1);
$standby->start;

$primary->safe_psql('postgres', q{SELECT idem_claim('order-2', 'shop')});
$primary->wait_for_catchup($standby);

is($standby->safe_psql('postgres', q{SELECT string_agg(key, ',' ORDER BY key) FROM idem_claims}),
	'order-1,order-2', 'the standby sees the claims the primary committed');

for my $call (
	q{SELECT idem_claim('order-1', 'shop')},
	q{SELECT idem_claim('order-3', 'shop')},
	q{SELECT * FROM idem_begin('order-1', 'shop')},
	q{SELECT * FROM idem_claim_many(ARRAY['order-1', 'order-4'], 'shop')})
{
	my ($ret, $stdout, $stderr) = $standby->psql('postgres', "\\set VERBOSITY verbose\n$call");
	isnt($ret, 0, "refused on the standby: $call");
	like($stderr, qr/ERROR:  25006: cannot execute idem_\w+\(\) in a read-only transaction/,
		"25006 on the standby: $call");
}

$standby->stop;
$primary->stop;
done_testing();
