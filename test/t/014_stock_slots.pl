# Hot stock in a small shared memory (pg_idem.max_stock_items = 3). Entries
# with nothing in flight are evicted when room is needed and loaded again
# from the tables, so re-created extensions and rolled-back adds of new names
# cannot use up the slots; 53400 comes only when every slot has units in
# flight. Eviction and reloading neither lose nor double count a unit.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

my $node = PostgreSQL::Test::Cluster->new('stock_slots');
$node->init;
$node->append_conf('postgresql.conf', qq{
shared_preload_libraries = 'pg_idem'
pg_idem.max_stock_items = 3
pg_idem.purge_interval = '100ms'
});
$node->start;

# Each re-created extension has new tables: its items are new entries.
for my $round (1 .. 4)
{
	$node->safe_psql('postgres', q{
		CREATE EXTENSION pg_idem;
		SELECT idem_stock_add('a', 1), idem_stock_add('b', 1), idem_stock_add('c', 1);
		DROP EXTENSION pg_idem;
	});
}
$node->safe_psql('postgres', 'CREATE EXTENSION pg_idem');
is($node->safe_psql('postgres', q{SELECT idem_stock_add('a', 10), idem_stock_add('b', 10), idem_stock_add('c', 10)}),
	'10|10|10', 'DROP and CREATE EXTENSION do not strand the slots');

# Any role may call the stock functions: rolled-back adds of new names.
$node->safe_psql('postgres', q{CREATE ROLE shopper LOGIN});
for my $i (1 .. 20)
{
	$node->safe_psql('postgres', qq{BEGIN; SELECT idem_stock_add('junk-$i', 1); ROLLBACK;}, extra_params => [ '-U', 'shopper' ]);
}
is($node->safe_psql('postgres', q{SELECT idem_stock_take('a', 1), idem_stock_add('d', 5)}),
	't|5', 'rolled-back adds of new names do not use up the slots');

# Three items with units in flight fill every slot.
my @holders;
for my $item ('a', 'b', 'c')
{
	my $session = $node->background_psql('postgres');
	$session->query_safe(qq{BEGIN; SELECT idem_stock_take('$item', 1)});
	push @holders, $session;
}
my ($ret, $stdout, $stderr) = $node->psql('postgres', "\\set VERBOSITY verbose\nSELECT idem_stock_add('d', 1)");
like($stderr, qr/ERROR:  53400: pg_idem hot stock has units in flight for 3 items, its maximum, and no room for item "d"/,
	'53400 when every slot has units in flight');
is($node->safe_psql('postgres', q{SELECT idem_stock_level('d'), (SELECT level FROM idem_stock WHERE item = 'd')}), '5|5',
	'the level of an item without a slot is read from the tables');
$holders[0]->query_safe('COMMIT');
is($node->safe_psql('postgres', q{SELECT idem_stock_add('d', 1)}), '6', 'a slot is free again once one of them commits');
$_->query_safe('ROLLBACK') for @holders[ 1 .. 2 ];
$_->quit for @holders;
is($node->safe_psql('postgres', q{SELECT string_agg(item || '=' || level || '/' || in_flight, ',' ORDER BY item) FROM idem_stock}),
	'a=8/0,b=10/0,c=10/0,d=6/0', 'levels after eviction and reloading');

# Three buyers and sellers over nine items, so that entries are evicted and
# loaded again all the time: every item's level is what was added minus
# what was sold, in shared memory and in the tables.
$node->safe_psql('postgres', q{
	CREATE TABLE moves (item text NOT NULL, delta bigint NOT NULL);
	INSERT INTO moves SELECT 'i' || g, 100 FROM generate_series(1, 9) g;
	GRANT INSERT ON moves TO PUBLIC;
} . join('', map { "SELECT idem_stock_add('i$_', 100);\n" } 1 .. 9));  # one transaction each
my $dir = PostgreSQL::Test::Utils::tempdir;
my %scripts = (
	'take.pgbench' => "\\set i random(1, 9)\n\\set n random(1, 5)\n"
	  . "INSERT INTO moves SELECT 'i' || :i, -:n WHERE idem_stock_take('i' || :i, :n);\n",
	'add.pgbench' => "\\set i random(1, 9)\n\\set n random(1, 5)\n"
	  . "INSERT INTO moves SELECT 'i' || :i, :n FROM (SELECT idem_stock_add('i' || :i, :n)) a;\n",
	'undo.pgbench' => "\\set i random(1, 9)\n"
	  . "BEGIN;\nSELECT idem_stock_take('i' || :i, 1);\nSELECT idem_stock_add('i' || :i, 1);\nROLLBACK;\n");
for my $name (keys %scripts)
{
	open my $fh, '>', "$dir/$name" or die $!;
	print $fh $scripts{$name};
	close $fh;
}
my ($out, $err) = ('', '');
IPC::Run::run(
	[ 'pgbench', '-n', '-c', '3', '-j', '3', '-t', '2000',
	  '-f', "$dir/take.pgbench\@6", '-f', "$dir/add.pgbench\@2", '-f', "$dir/undo.pgbench\@1",
	  '-d', $node->connstr('postgres') ],
	'>', \$out, '2>', \$err);
like($out, qr/number of failed transactions: 0/, 'no transaction failed (never 53400 with at most 3 items in flight)')
  or diag($err);
my $books = q{
	SELECT count(*) FROM (
	    SELECT item, sum(delta) AS expected FROM moves GROUP BY item) m
	JOIN idem_stock s USING (item)
	WHERE s.level = m.expected AND s.in_flight = 0
	  AND idem_stock_level(item) = m.expected
	  AND (SELECT i.level + coalesce((SELECT sum(l.delta) FROM idem_stock_ledger l WHERE l.item = i.item), 0)
	       FROM idem_stock_items i WHERE i.item = m.item) = m.expected};
is($node->safe_psql('postgres', $books), '9', 'every unit of the nine items is accounted for');
$node->restart;
is($node->safe_psql('postgres', $books), '9', 'and so after a restart');
$node->stop;

# An evicted item is loaded with the latest snapshot: a REPEATABLE READ
# transaction whose snapshot predates a sale must not bring the units back.
my $small = PostgreSQL::Test::Cluster->new('stock_one_slot');
$small->init;
$small->append_conf('postgresql.conf', qq{
shared_preload_libraries = 'pg_idem'
pg_idem.max_stock_items = 1
});
$small->start;
$small->safe_psql('postgres', q{CREATE EXTENSION pg_idem; SELECT idem_stock_add('rr', 5)});
my $old_snapshot = $small->background_psql('postgres');
$old_snapshot->query_safe(q{BEGIN ISOLATION LEVEL REPEATABLE READ; SELECT count(*) FROM idem_stock_items});
is($small->safe_psql('postgres', q{SELECT idem_stock_take('rr', 5)}), 't', 'all 5 sold');
is($small->safe_psql('postgres', q{SELECT idem_stock_add('other', 1)}), '1', 'then another item takes the only slot');
is($old_snapshot->query_safe(q{SELECT idem_stock_take('rr', 1)}), 'f',
	'the old snapshot reloads the item as sold out');
$old_snapshot->query_safe('COMMIT');
$old_snapshot->quit;
$small->stop;

done_testing();
