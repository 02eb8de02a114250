# Hot stock in a small shared memory (pg_idem.max_stock_items = 3, so that
# a transaction loads at most one entry). Entries with nothing in flight are
# evicted when room is needed and loaded again from the tables, so
# re-created extensions and rolled-back adds of new names cannot use up the
# slots. When every slot has units in flight, or a transaction has loaded
# its share, takes and adds of items without an entry go by the item's row
# instead (never 53400): one role holding units of many items cannot make
# another's take or add fail, and the two paths never both decide for one
# item (an entry is never loaded while a take by the row is in flight).
# Eviction, reloading and the row path neither lose nor double count a unit.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use IdemTest qw(blocked_or_done);

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

# Three items with units in flight fill every slot: an add or a take of
# another item goes by its row, and works.
my @holders;
for my $item ('a', 'b', 'c')
{
	my $session = $node->background_psql('postgres');
	$session->query_safe(qq{BEGIN; SELECT idem_stock_take('$item', 1)});
	push @holders, $session;
}
my ($ret, $stdout, $stderr) = $node->psql('postgres', "SELECT idem_stock_add('d', 1)");
is("$ret|$stdout|$stderr", '0|6|', 'an add of an item without a slot goes by its row when every slot has units in flight');
is($node->safe_psql('postgres', q{SELECT idem_stock_take('d', 2), idem_stock_take('d', 5), idem_stock_level('d')}), 't|f|6',
	'and so does a take: it sells what the row holds, and no more (the level counts commits)');
is($node->safe_psql('postgres', q{SELECT idem_stock_level('d'), (SELECT level || '/' || in_flight FROM idem_stock WHERE item = 'd')}),
	'4|4/0', 'the level of an item without a slot is read from the tables');
is($node->safe_psql('postgres', q{SELECT idem_stock_add('new-by-row', 3), idem_stock_take('new-by-row', 1), idem_stock_level('new-by-row')}),
	'3|f|0', 'a new item can be created by its row; as through an entry, its units are for sale once committed');
is($node->safe_psql('postgres', q{SELECT idem_stock_take('new-by-row', 1), idem_stock_level('new-by-row')}), 't|3',
	'and then they are');
($ret, $stdout, $stderr) = $node->psql('postgres', q{
	BEGIN;
	SELECT idem_stock_add('new-by-row', 9223372036854775000);
	SAVEPOINT s;
	SELECT idem_stock_take('new-by-row', 2);
	SELECT idem_stock_add('new-by-row', 806);
	ROLLBACK TO SAVEPOINT s;
	SELECT idem_stock_add('new-by-row', 805);
	COMMIT;
	SELECT idem_stock_level('new-by-row');}, on_error_stop => 0, extra_params => [ '-v', 'VERBOSITY=verbose' ]);
is($stdout, "9223372036854775002\nt\n9223372036854775807\n9223372036854775807",
	'by row too, an add that could pass bigint (every add in flight committing, no take) is refused');
like($stderr, qr/ERROR:  22003: n = 806 would take item "new-by-row" beyond the bigint range/, 'with 22003 naming n and the item');
is($node->safe_psql('postgres', q{SELECT idem_stock_take('new-by-row', 9223372036854775807), idem_stock_take('new-by-row', 1)}), 't|f',
	'and the savepoint gave back exactly its units');

# A take by the row in flight: an item is never loaded meanwhile, even when a
# slot is free again. The second take waits for the first one's row lock and
# then counts its units (it once loaded the item from the tables, which did
# not show the first take's units yet, and sold them again).
$node->safe_psql('postgres', q{SELECT idem_stock_add('x', 5)});
my $first = $node->background_psql('postgres');
is($first->query_safe(q{BEGIN; SELECT idem_stock_take('x', 3)}), 't', 'a take by the row holds 3 of 5 units');
$holders[0]->query_safe('COMMIT');    # a slot is free again
my $second = $node->background_psql('postgres');
$second->query_until(qr/taking\n/, "\\echo taking\nSELECT idem_stock_take('x', 3);\n");
ok(blocked_or_done($node, q{idem_stock_take('x', 3)}), 'the second take waits for the first (or has answered)');
$first->query_safe('COMMIT');
is($second->query_safe(q{SELECT 'answered'}), "f\nanswered", 'once the first commits, the second finds 2 units: false');
is($second->query_safe(q{BEGIN; SELECT idem_stock_take('x', 2)}), 't', 'the 2 units are there');
$second->query_safe('ROLLBACK');
is($node->safe_psql('postgres', q{SELECT idem_stock_take('x', 2), idem_stock_take('x', 1)}), 't|f',
	'a rollback gives them back, and none is sold twice');
is($node->safe_psql('postgres', q{
	SELECT idem_stock_level('x'),
	       (SELECT i.level + coalesce((SELECT sum(l.delta) FROM idem_stock_ledger l WHERE l.item = i.item), 0)
	        FROM idem_stock_items i WHERE i.item = 'x')}), '0|0', 'x: 5 - 3 - 2, in shared memory and in the tables');
$_->quit for ($first, $second);
$_->query_safe('ROLLBACK') for @holders[ 1 .. 2 ];
$_->quit for @holders;
is($node->safe_psql('postgres', q{SELECT string_agg(item || '=' || level || '/' || in_flight, ',' ORDER BY item) FROM idem_stock WHERE item IN ('a', 'b', 'c', 'd')}),
	'a=8/0,b=10/0,c=10/0,d=4/0', 'levels after eviction, reloading and takes by the row');

# One role holds units of many items in an open transaction (the attack:
# it once took every slot, so that every other take and add, in every
# database, failed with 53400). Another role's takes and adds of new and
# of loaded items still work and give the right levels.
$node->safe_psql('postgres', q{CREATE ROLE hog LOGIN; CREATE ROLE buyer LOGIN; CREATE DATABASE other});
$node->safe_psql('other', q{CREATE EXTENSION pg_idem; SELECT idem_stock_add('elsewhere', 10)});
$node->safe_psql('postgres', q{SELECT idem_stock_add('loaded', 10); SELECT idem_stock_take('loaded', 1);});
my $hog = $node->background_psql('postgres', extra_params => [ '-U', 'hog' ]);
is($hog->query_safe(q{
	SELECT count(idem_stock_add('junk-' || g, 1)) FROM generate_series(1, 50) g;
	BEGIN;
	SELECT count(*) FROM generate_series(1, 50) g WHERE idem_stock_take('junk-' || g, 1);
	SELECT count(idem_stock_add('new-junk-' || g, 1)) FROM generate_series(1, 50) g;}), "50\n50\n50",
	'one transaction takes units of 50 items and adds 50 new ones');
is($node->safe_psql('postgres', q{SELECT count(*) FROM idem_stock WHERE item LIKE 'junk-%' AND in_flight > 0}), '1',
	'in one entry only: it took the others by their rows');
my $as_buyer = sub {
	my ($db, $sql) = @_;
	my ($rc, $out, $err) = $node->psql($db, $sql, extra_params => [ '-U', 'buyer' ]);
	return $rc == 0 && $err eq '' ? $out : "error: $err";
};
is($as_buyer->('postgres', q{SELECT idem_stock_add('fresh', 5); SELECT idem_stock_take('fresh', 2);}), "5\nt",
	'another role adds and takes a new item');
is($as_buyer->('postgres', q{SELECT idem_stock_take('loaded', 3), idem_stock_add('loaded', 1)}), 't|7',
	'and takes and adds a loaded item');
is($as_buyer->('other', q{SELECT idem_stock_take('elsewhere', 4), idem_stock_add('elsewhere-new', 1)}), 't|1',
	'and so in another database');
is($as_buyer->('postgres', q{SELECT idem_stock_level('fresh'), idem_stock_level('loaded')}), '3|7',
	'the levels count every committed unit');
$hog->query_safe('COMMIT');
$hog->quit;
is($node->safe_psql('postgres', q{
	SELECT count(*) FILTER (WHERE level = 0), count(*) FILTER (WHERE in_flight <> 0), min(idem_stock_level(item))
	FROM idem_stock WHERE item LIKE 'junk-%'}), '50|0|0', 'the 50 units the hog took are gone, none in flight');
is($node->safe_psql('postgres', q{SELECT count(*), sum(idem_stock_level(item)) FROM idem_stock WHERE item LIKE 'new-junk-%'}),
	'50|50', 'and the 50 items it added are there');
is($node->safe_psql('postgres', q{SELECT idem_stock_level('loaded')}), '7', 'loaded: 10 - 1 - 3 + 1');

# Four buyers and sellers over nine items, so that entries are evicted and
# loaded again all the time, and transactions that take all nine items at
# once go by their rows past the first: both paths race on every item.
# Every item's level is what was added minus what was sold, in shared memory
# and in the tables, and none went below zero.
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
	  . "BEGIN;\nSELECT idem_stock_take('i' || :i, 1);\nSELECT idem_stock_add('i' || :i, 1);\nROLLBACK;\n",
	'all.pgbench' => "INSERT INTO moves SELECT 'i' || g, -1 FROM generate_series(1, 9) g WHERE idem_stock_take('i' || g, 1);\n");
for my $name (keys %scripts)
{
	open my $fh, '>', "$dir/$name" or die $!;
	print $fh $scripts{$name};
	close $fh;
}
my ($out, $err) = ('', '');
IPC::Run::run(
	[ 'pgbench', '-n', '-c', '4', '-j', '4', '-t', '2000',
	  '-f', "$dir/take.pgbench\@6", '-f', "$dir/add.pgbench\@3", '-f', "$dir/undo.pgbench\@1",
	  '-f', "$dir/all.pgbench\@1",
	  '-d', $node->connstr('postgres') ],
	'>', \$out, '2>', \$err);
like($out, qr/number of failed transactions: 0/, 'no transaction failed')
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
is($node->safe_psql('postgres', q{SELECT min(level) >= 0 FROM idem_stock WHERE item ~ '^i[1-9]$'}), 't', 'none went below zero');
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
