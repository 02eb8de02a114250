# Hostile input: every function of the extension, found in the catalog, is
# called thousands of times with NULLs, empty and huge strings, odd
# intervals, extreme numbers, wrong relations, columns and types, inside and
# outside transactions, in savepoints, read-only transactions and under a
# tiny statement_timeout, by a role without superuser rights; then a bounded
# sqlsmith run. Pass: no backend ever crashes (the postmaster never reports a
# child terminated by a signal), and no error from pg_idem is XX000.
#
# IDEM_FUZZ_CALLS (default 6000) and IDEM_FUZZ_SEED (default 20261125) set
# the size and the seed; IDEM_SQLSMITH_QUERIES (default 3000) the sqlsmith run.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

my $calls = $ENV{IDEM_FUZZ_CALLS} // 6000;
my $seed = $ENV{IDEM_FUZZ_SEED} // 20261125;
my $sqlsmith_queries = $ENV{IDEM_SQLSMITH_QUERIES} // 3000;
srand($seed);

my $node = PostgreSQL::Test::Cluster->new('fuzz');
$node->init;
$node->append_conf('postgresql.conf', qq{
shared_preload_libraries = 'pg_idem'
pg_idem.database = 'postgres'
pg_idem.purge_interval = '200ms'
max_prepared_transactions = 5
log_line_prefix = '%m [%p] sqlstate=%e '
log_min_error_statement = error
log_error_verbosity = default
});
$node->start;
$node->safe_psql('postgres', q{
	CREATE EXTENSION pg_idem;
	CREATE ROLE fuzzer LOGIN;
	CREATE TABLE stock (sku int PRIMARY KEY, amount int NOT NULL, state text, version int);
	INSERT INTO stock SELECT g, 100, 'new', 1 FROM generate_series(1, 50) g;
	CREATE VIEW stock_view AS SELECT * FROM stock;
	CREATE SEQUENCE stock_seq;
	CREATE TYPE fuzz_state AS ENUM ('new', 'paid');
	CREATE TABLE typed (code text PRIMARY KEY, amount numeric(10, 2), state fuzz_state DEFAULT 'new');
	INSERT INTO typed VALUES ('a', 10, 'new');
	GRANT SELECT, UPDATE ON stock, typed, stock_view TO fuzzer;
	SELECT idem_stock_add('hot', 1000);
});

# Every function the extension owns, with its argument types.
my @functions = map { [ split /\|/ ] } split /\n/, $node->safe_psql('postgres', q{
	SELECT p.proname, coalesce(array_to_string(array(SELECT format_type(t, NULL) FROM unnest(p.proargtypes) t), ','), '')
	FROM pg_proc p JOIN pg_depend d ON d.classid = 'pg_proc'::regclass AND d.objid = p.oid AND d.deptype = 'e'
	JOIN pg_extension e ON e.oid = d.refobjid AND e.extname = 'pg_idem' ORDER BY 1});
cmp_ok(scalar(@functions), '>=', 20, scalar(@functions) . ' functions to fuzz');

my %values = (
	'text' => [ 'NULL', q{''}, q{'k'}, q{'default'}, q{'hot'}, q{repeat('x', 65536)}, q{repeat('x', 65537)},
		q{repeat('s', 128)}, q{repeat('s', 129)}, q{repeat('n', 1025)}, q{E'a\tb\n'}, q{'ключ'}, q{'new'}, q{'paid'},
		q{'%s%n'}, q{''''}, q{repeat('z', 100000)} ],
	'interval' => [ 'NULL', q{'0'}, q{'-1 second'}, q{'1 month -30 days'}, q{'1 microsecond'}, q{'1 hour'},
		q{'1000 years'}, q{'1001 years'}, q{make_interval(years => 2000, days => -700000)},
		q{make_interval(days => 2147483647)}, q{'-178000000 years'} ],
	'jsonb' => [ 'NULL', q{'{}'}, q{'[1, 2]'}, q{'"s"'}, q{'{"a": 1.0}'}, q{'null'}, q{repeat('[', 1)::text || ']'} ],
	'boolean' => [ 'NULL', 'true', 'false' ],
	'uuid' => [ 'NULL', 'gen_random_uuid()', q{'00000000-0000-0000-0000-000000000000'}, q{idem_token_issue()} ],
	'bigint' => [ 'NULL', '0', '-1', '1', '3', '9223372036854775807', '(-9223372036854775807 - 1)' ],
	'integer' => [ 'NULL', '0', '-1', '1', '2147483647' ],
	'numeric' => [ 'NULL', '0', '-1', '1', '1.5', q{'NaN'}, '1e30', '0.0001', q{'Infinity'}, '99999999999999999999' ],
	'regclass' => [ 'NULL', q{'stock'}, q{'typed'}, q{'stock_view'}, q{'stock_seq'}, q{'pg_class'}, '0::oid',
		q{'stock_pkey'}, '4294967295::oid', q{'idem_claims'} ],
	'name' => [ 'NULL', q{'sku'}, q{'amount'}, q{'state'}, q{'code'}, q{'nope'}, q{'ctid'}, q{''}, q{'version'},
		q{repeat('c', 100)} ],
	'anyelement' => [ 'NULL::int', '42', '1', q{'a'::text}, q{'abc'::text}, 'now()', '1.5', 'true', q{'{}'::jsonb} ],
	'text[]' => [ 'NULL', 'ARRAY[]::text[]', q{ARRAY['a', NULL]}, q{ARRAY['a', '']}, q{ARRAY[repeat('k', 70000)]},
		q{ARRAY['a', 'a', 'b']}, q{ARRAY[['a', 'b'], ['c', 'd']]}, q{ARRAY(SELECT 'f' || g FROM generate_series(1, 500) g)} ],
);
my @wrappers = (
	[ '', '' ], [ '', '' ], [ '', '' ],
	[ "BEGIN;\n", "\nROLLBACK;" ], [ "BEGIN;\n", "\nCOMMIT;" ],
	[ "BEGIN;\nSAVEPOINT s;\n", "\nROLLBACK TO SAVEPOINT s;\nCOMMIT;" ],
	[ "BEGIN READ ONLY;\n", "\nCOMMIT;" ],
	[ "SET statement_timeout = '1ms';\n", "\nRESET statement_timeout;" ],
	[ "BEGIN;\n", "\nPREPARE TRANSACTION 'fuzz';\nROLLBACK PREPARED 'fuzz';" ],
);

# A script of $calls calls, run as the unprivileged role and as superuser.
my %called;
my $script = "\\set VERBOSITY verbose\n";
for (1 .. $calls)
{
	my ($name, $types) = @{ $functions[ int(rand(@functions)) ] };
	my @args = map { my $v = $values{$_} // ['NULL']; $v->[ int(rand(@$v)) ] } grep { $_ ne '' } split /,/, $types;
	my $call = "SELECT * FROM $name(" . join(', ', @args) . ');';
	$call = "SELECT $name();" if $types eq '' && $name eq 'idem_version_guard';
	my $w = $wrappers[ int(rand(@wrappers)) ];
	$script .= "$w->[0]$call$w->[1]\n";
	$called{"$name($types)"}++;    # each signature on its own
}
my $tempdir = PostgreSQL::Test::Utils::tempdir;
open my $fh, '>', "$tempdir/fuzz.sql" or die $!;
print $fh $script;
close $fh;

my %sqlstates;
for my $user ('fuzzer', $ENV{USER} // 'postgres')
{
	my ($stdout, $stderr) = ('', '');
	IPC::Run::run([ 'psql', '-X', '-q', '-f', "$tempdir/fuzz.sql", '-d', $node->connstr('postgres') . " user=$user" ],
		'>', \$stdout, '2>', \$stderr);
	$sqlstates{$1}++ while $stderr =~ /ERROR:  ([0-9A-Z]{5}):/g;
	unlike($stderr, qr/server closed the connection|connection to server was lost/, "$user: the connection survived every call");
}
my $errors = 0;
$errors += $_ for values %sqlstates;
note("calls per function: " . join(', ', map { "$_=$called{$_}" } sort keys %called));
note("errors by SQLSTATE: " . join(', ', map { "$_=$sqlstates{$_}" } sort keys %sqlstates));
ok(!exists $sqlstates{XX000}, "no XX000 among $errors errors of " . (2 * $calls) . " calls");
is(scalar(keys %called), scalar(@functions), 'every function (each overload) was called');

# sqlsmith: random queries over everything the unprivileged role can reach.
my ($out, $err) = ('', '');
IPC::Run::run([ 'sqlsmith', '--target=' . $node->connstr('postgres') . ' user=fuzzer', "--seed=$seed",
		"--max-queries=$sqlsmith_queries", '--verbose' ], '>', \$out, '2>', \$err, IPC::Run::timeout(600));
my @sqlsmith_lines = grep { /\S/ } split /\n/, $err;
note("sqlsmith: " . join(' | ', @sqlsmith_lines[ ($#sqlsmith_lines > 3 ? $#sqlsmith_lines - 3 : 0) .. $#sqlsmith_lines ]));
like($err . $out, qr/queries|\./, 'sqlsmith ran its queries');

# The server log: no child killed by a signal, no XX000 from a pg_idem call.
my $log = slurp_file($node->logfile);
unlike($log, qr/terminated by signal|was terminated by exception/, 'no backend crashed');
my @internal = grep { /sqlstate=XX000/ } split /\n/, $log;
my @ours = grep { /idem_/ } map { my $l = $_; $l } @internal;
is(scalar(@ours), 0, 'no XX000 from a pg_idem function in the server log')
  or diag(join("\n", @ours[0 .. ($#ours < 5 ? $#ours : 5)]));
ok($node->safe_psql('postgres', 'SELECT 1') eq '1', 'the server still answers');

$node->stop;
done_testing();
