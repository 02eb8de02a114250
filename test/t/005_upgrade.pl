# ALTER EXTENSION pg_idem UPDATE works from every released version: for each
# version the server offers, install it, keep a claim, walk the update path
# to the default version, and compare the result with a fresh install.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

my $node = PostgreSQL::Test::Cluster->new('upgrade');
$node->init;
$node->start;

my $default = $node->safe_psql('postgres',
	q{SELECT default_version FROM pg_available_extensions WHERE name = 'pg_idem'});
my @versions = split /\n/, $node->safe_psql('postgres',
	q{SELECT version FROM pg_available_extension_versions WHERE name = 'pg_idem' ORDER BY string_to_array(version, '.')::int[]});
ok(scalar(@versions) >= 1, "versions offered: @versions (default $default)");

# What an install looks like: every member object, described.
my $describe = q{
	SELECT string_agg(pg_describe_object(classid, objid, objsubid), E'\n' ORDER BY 1)
	FROM pg_depend WHERE refclassid = 'pg_extension'::regclass AND deptype = 'e'
	  AND refobjid = (SELECT oid FROM pg_extension WHERE extname = 'pg_idem')};
$node->safe_psql('postgres', 'CREATE DATABASE fresh');
$node->safe_psql('fresh', 'CREATE EXTENSION pg_idem');
my $fresh = $node->safe_psql('fresh', $describe);

for my $version (@versions)
{
	my $db = 'from_' . ($version =~ s/\W/_/gr);
	$node->safe_psql('postgres', "CREATE DATABASE $db");
	$node->safe_psql($db, "CREATE EXTENSION pg_idem VERSION '$version'");
	$node->safe_psql($db, q{SELECT idem_claim('kept-across-update')});
	$node->safe_psql($db, 'ALTER EXTENSION pg_idem UPDATE');
	is($node->safe_psql($db, q{SELECT extversion FROM pg_extension WHERE extname = 'pg_idem'}),
		$default, "$version: updated to $default");
	is($node->safe_psql($db, $describe), $fresh, "$version: the same objects as a fresh $default install");
	is($node->safe_psql($db, q{SELECT idem_claim('kept-across-update')}), 'f', "$version: claims survive the update");
}

$node->stop;
done_testing();
