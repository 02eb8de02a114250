# idem_claim_many's working memory is bounded by a small multiple of its
# input (hardening finding 7: 4,000 keys of 64 KiB drove one backend to
# 1.9 GB resident, where the same array through plain unnest peaked at
# 534 MB). Two backends build the same array of 1,000 incompressible 64 KiB
# keys (64 MB); one unnests it, the other claims it. Their peak resident
# memory (VmHWM) is compared in one run: the claiming backend may use at most
# a quarter more than the unnesting one (measured: the same; the first
# version, which sent the whole batch through one INSERT ... RETURNING key,
# twice as much here, and 3.6 times with 4,000 keys).
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

my $node = PostgreSQL::Test::Cluster->new('claim_many_memory');
$node->init;
# Shared buffers count in a backend's resident memory once it touches them:
# keep them small against the 64 MB under test.
$node->append_conf('postgresql.conf', "shared_buffers = '16MB'\nautovacuum = off");
$node->start;
$node->safe_psql('postgres', 'CREATE EXTENSION pg_idem');

my $keys = q{ARRAY(SELECT string_agg(md5(g::text || ':' || i::text), '' ORDER BY i)
                   FROM generate_series(1, 1000) g, generate_series(1, 2048) i GROUP BY g)};

sub peak_kb
{
	my ($query) = @_;
	my $session = $node->background_psql('postgres');
	my $pid = $session->query_safe('SELECT pg_backend_pid()');
	$pid =~ s/\s+//g;
	my $result = $session->query_safe($query);
	open(my $status, '<', "/proc/$pid/status") or die "/proc/$pid/status: $!";
	my ($peak) = map { /^VmHWM:\s+(\d+) kB/ ? $1 : () } <$status>;
	close $status;
	$session->quit;
	$result =~ s/\s+//g;
	return ($peak, $result);
}

my ($unnest_kb, $unnested) = peak_kb("SELECT count(*) FROM unnest($keys)");
is($unnested, '1000', 'the plain unnest saw 1,000 keys');
my ($claim_kb, $claimed) = peak_kb("SELECT count(*) FILTER (WHERE claimed) FROM idem_claim_many($keys)");
is($claimed, '1000', 'idem_claim_many claimed 1,000 keys');
is($node->safe_psql('postgres', q{SELECT count(*) FROM idem_claims WHERE length(key) = 65536}), '1000',
	'and stored them whole');
note("peak memory: idem_claim_many $claim_kb kB, unnest $unnest_kb kB");
cmp_ok($claim_kb, '<=', 1.25 * $unnest_kb,
	"peak memory: idem_claim_many $claim_kb kB, unnest $unnest_kb kB");

$node->stop;
done_testing();
