# pg_idem on a Citus cluster (SPEC "Beyond one machine", README "Scaling out
# with Citus"): a coordinator and two workers, pg_idem's tables laid out by
# idem_distribute('orders').
#
# 1. Every call from the coordinator touches one shard on one worker, and a
#    claim with its order is one single-worker transaction (no two-phase
#    commit): seen in the commands Citus sends (citus.log_remote_commands).
# 2. Exactly one order per key: four clients with duplicates, through the
#    order function delegated with force_delegation and through the
#    coordinator; duplicates write no WAL on the workers.
# 3. idem_claim_many, wait => false, lock_timeout and pg_idem.wait_timeout
#    from the coordinator; wait => false in a delegated function.
# 4. Each worker's purge deletes the expired rows of its shards (claims,
#    tokens, leases); lease fences grow across expiry and purge.
# 5. Fences and hot stock stay with the coordinator: a worker, or a
#    delegated function, gets 0A000; hot stock's tables as a reference table
#    are refused.
# 6. A shard move in the default transfer mode (logical replication) under
#    load loses nothing.
# 7. DROP EXTENSION pg_idem leaves nothing behind on the workers.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use IPC::Run;
use CitusCluster qw(start_cluster);

# No autovacuum: the WAL check below must see only what the duplicates write.
my ($coordinator, $worker1, $worker2) = start_cluster(conf => "autovacuum = off\n");
my $host = $coordinator->host;
my %worker_of_port = map { $_->port => $_->name } ($worker1, $worker2);

# The layout idem_distribute() made, again after a second call: claims and
# holds by key in the colocation group of orders, tokens and leases by their
# own keys, hot stock local.
$coordinator->safe_psql('postgres', q{SELECT idem_distribute('orders')});
is($coordinator->safe_psql('postgres', q{
		SELECT string_agg(format('%s by %s%s', p.logicalrelid::regclass, a.attname,
		                         CASE WHEN p.colocationid = o.colocationid THEN ', with orders' ELSE '' END),
		                  '; ' ORDER BY p.logicalrelid::regclass::text)
		FROM pg_dist_partition p
		JOIN pg_attribute a ON a.attrelid = p.logicalrelid
		  AND a.attname = column_to_column_name(p.logicalrelid, p.partkey)
		CROSS JOIN (SELECT colocationid FROM pg_dist_partition WHERE logicalrelid = 'orders'::regclass) o
		WHERE p.logicalrelid::text LIKE 'idem\_%'}),
	'idem_claims by key, with orders; idem_holds by key, with orders; idem_leases by name; idem_tokens by token',
	'idem_distribute(), called twice: the layout');

# Runs $sql on the coordinator with every command Citus sends to a worker
# logged. Returns the workers they went to, the pg_idem shards they named,
# whether one was a two-phase commit, and the output.
sub remote_commands
{
	my ($sql) = @_;
	my ($out, $err) = ('', '');
	$coordinator->psql('postgres', "SET citus.log_remote_commands = on;\n$sql",
		stdout => \$out, stderr => \$err, on_error_die => 1);
	my %ports = map { $_ => 1 } ($err =~ /DETAIL:  on server \S+:(\d+) connectionId/g);
	my %shards = map { $_ => 1 } ($err =~ /\b(idem_[a-z]+_\d+)\b/g);
	return ([ sort keys %ports ], [ sort keys %shards ], $err =~ /PREPARE TRANSACTION/ ? 1 : 0, $out);
}

# The same order function, delegated without force_delegation: Citus then
# delegates a call made outside a transaction block.
$coordinator->safe_psql('postgres', q{
	CREATE FUNCTION place_order_plain(request_key text, item text, qty int) RETURNS text
	LANGUAGE plpgsql AS $$ BEGIN RETURN place_order(request_key, item, qty); END $$;
	SELECT create_distributed_function('place_order_plain(text,text,int)', 'request_key', colocate_with := 'orders');
});

# Each call, from the coordinator, in this order: one worker, one shard of
# each table.
my @calls = (
	'a claim and its order, in one transaction' => q{
		BEGIN;
		SELECT idem_claim('route-1', 'shop');
		INSERT INTO orders VALUES ('route-1', 'sku', 1);
		COMMIT;},
	'a duplicate claim' => q{BEGIN; SELECT idem_claim('route-1', 'shop'); COMMIT;},
	'idem_begin, then idem_finish' => q{
		BEGIN;
		SELECT status FROM idem_begin('route-2', 'pay');
		SELECT idem_finish('route-2', 'pay', '{"paid": true}');
		COMMIT;},
	'a replay' => q{BEGIN; SELECT response FROM idem_begin('route-2', 'pay'); COMMIT;},
	'idem_status' => q{SELECT status FROM idem_status('route-2', 'pay');},
	'idem_forget' => q{SELECT idem_forget('route-2', 'pay');},
	'the renewal of an expired claim' => q{
		SELECT idem_claim('route-3', 'shop', interval '1 millisecond');
		SELECT pg_sleep(0.01);
		BEGIN; SELECT idem_claim('route-3', 'shop'); COMMIT;},
	'idem_claim_many of one key' => q{BEGIN; SELECT claimed FROM idem_claim_many(ARRAY['route-4'], 'shop'); COMMIT;},
	'a token, issued and consumed' => q{
		SELECT idem_token_consume(idem_token_issue('checkout'), 'checkout');},
	'a lease, acquired, checked and released' => q{
		SELECT idem_lease_check('route-lease', idem_lease_acquire('route-lease', 'me', interval '1 minute'));
		SELECT idem_lease_release('route-lease', 'me');},
	'a multi-step request: hold, checkpoint, complete' => q{
		SELECT fence FROM idem_hold('route-5', 'pay', interval '1 minute') \gset
		SELECT idem_checkpoint('route-5', 'pay', :fence, 'charged');
		SELECT idem_complete('route-5', 'pay', :fence, '{"done": true}');},
	'the delegated order function' => q{SELECT place_order('route-6', 'sku', 1);},
	'the order function delegated without force_delegation, outside a transaction block' =>
	  q{SELECT place_order_plain('route-7', 'sku', 1); SELECT place_order_plain('route-7', 'sku', 1);},
);
while (my ($call, $sql) = splice @calls, 0, 2)
{
	my ($ports, $shards, $two_phase) = remote_commands($sql);
	is(scalar @$ports, 1, "$call: one worker (" . join(', ', map { $worker_of_port{$_} } @$ports) . ')');
	my %tables;
	$tables{ $_ =~ s/_\d+$//r }++ for @$shards;
	ok(!grep({ $_ > 1 } values %tables), "$call: one shard of each table (@$shards)");
	is($two_phase, 0, "$call: no two-phase commit");
}

# 2. Exactly one order per key, four clients, 300 keys sent again and again:
#    the delegated function, and claims from the coordinator.
my $scripts = PostgreSQL::Test::Utils::tempdir;
my %script = (
	delegated => q{
\set k random(1, 300)
SELECT place_order('order-' || :k, 'sku', 1);
},
	coordinator => q{
\set k random(1, 300)
BEGIN;
INSERT INTO orders SELECT 'order-' || :k, 'sku', 2 WHERE idem_claim('order-' || :k, 'orders');
COMMIT;
},);
my @files;
for my $name (sort keys %script)
{
	PostgreSQL::Test::Utils::append_to_file("$scripts/$name.sql", $script{$name});
	push @files, '-f', "$scripts/$name.sql";
}
chmod 0644, glob("$scripts/*.sql");
my ($out, $err) = ('', '');
my $ok = IPC::Run::run([ 'pgbench', '-n', '-c', '4', '-j', '2', '-t', '400', @files,
		'-h', $host, '-p', $coordinator->port, 'postgres' ], '>', \$out, '2>', \$err);
ok($ok, 'four clients placed orders with duplicates, with no error') or diag($out, $err);
like($out, qr/number of failed transactions: 0 /, 'pgbench counted no failed transaction') if $out =~ /failed/;
is($coordinator->safe_psql('postgres', q{
		SELECT (SELECT count(*) FROM orders WHERE request_key LIKE 'order-%')
		     = (SELECT count(*) FROM idem_claims WHERE scope = 'orders' AND key LIKE 'order-%')}),
	't', 'one order per claimed key');
my $placed = $coordinator->safe_psql('postgres', q{SELECT count(*) FROM orders WHERE request_key LIKE 'order-%'});
cmp_ok($placed, '>', 250, "most of the 300 keys were placed ($placed)");

# Duplicates write no WAL on the workers: every key exists now, and after a
# VACUUM no read has anything to prune. (One request, one transaction: a
# transaction that touches shards on both workers commits in two phases, and
# PREPARE TRANSACTION writes WAL whatever it wrote.) The server writes
# records of its own meanwhile (RUNNING_XACTS every 15 s, the pruning of
# catalog pages, invalidation records Citus' own calls leave under
# wal_level = logical): read back with pg_walinspect (Citus creates it on
# the workers too), no record may touch a shard of idem_claims or its
# index, and no transaction may commit, prepare or abort.
$coordinator->safe_psql('postgres', q{
	CREATE EXTENSION pg_walinspect;
	SELECT place_order('order-' || i, 'sku', 1) FROM generate_series(1, 300) i;
	VACUUM orders, idem_claims;
});
my %lsn = map { $_->name => $_->safe_psql('postgres', 'SELECT pg_current_wal_lsn()') } ($worker1, $worker2);
$coordinator->safe_psql('postgres', join "\n",
	map({ "SELECT place_order('order-$_', 'sku', 1);" } 1 .. 100),
	map({ "BEGIN; SELECT idem_claim('order-$_', 'orders'); COMMIT;" } 1 .. 100));
for my $worker ($worker1, $worker2)
{
	my $start = $lsn{ $worker->name };
	my $written = $worker->safe_psql('postgres', qq{
		WITH claims AS (
		  SELECT string_agg(pg_relation_filenode(c.oid)::text, '|') AS filenodes
		  FROM pg_class c WHERE c.relname ~ '^idem_claims_[0-9]+(_pkey)?\$')
		SELECT CASE WHEN pg_current_wal_lsn() = '$start' THEN ''
		       ELSE (SELECT coalesce(string_agg(resource_manager || ' ' || record_type, ', '), '')
		             FROM pg_get_wal_records_info('$start', pg_current_wal_lsn()), claims
		             WHERE (resource_manager = 'Transaction' AND record_type IN ('COMMIT', 'PREPARE', 'ABORT'))
		                OR block_ref ~ ('/(' || claims.filenodes || ')( |\$)')) END});
	is($written, '', $worker->name . ': 200 duplicates wrote no WAL to idem_claims\' shards and ended no transaction');
}

# 3. idem_claim_many with keys that exist, from the coordinator: one row per
#    distinct key, in the caller's order.
is($coordinator->safe_psql('postgres', q{
		BEGIN;
		SELECT string_agg(key || '=' || claimed, ',')
		FROM idem_claim_many(ARRAY['many-1', 'order-1', 'many-2', 'many-1', 'order-2'], 'orders');
		COMMIT;}),
	'many-1=true,order-1=false,many-2=true,order-2=false', 'idem_claim_many from the coordinator');

# ... and in a function delegated to the key's worker, for that key: new,
# then (the key exists) a duplicate.
$coordinator->safe_psql('postgres', q{
	CREATE FUNCTION claim_batch(request_key text) RETURNS boolean LANGUAGE plpgsql
	AS $$ BEGIN RETURN (SELECT claimed FROM idem_claim_many(ARRAY[request_key], 'batch')); END $$;
	SELECT create_distributed_function('claim_batch(text)', 'request_key',
	                                   colocate_with := 'orders', force_delegation := true);
});
is($coordinator->safe_psql('postgres', q{SELECT claim_batch('batch-1'); SELECT claim_batch('batch-1');}),
	"t\nf", 'idem_claim_many in a delegated function: new, then a duplicate');

# A holder in an open transaction; from the coordinator, wait => false
# answers in_progress, and lock_timeout and pg_idem.wait_timeout end the wait
# with 55P03 naming the key. The same in a function delegated to the worker.
# Should a wait not end as it must, the statement times out and the test
# fails instead of waiting for the holder, which waits for the test.
my $bounded = q{SET statement_timeout = '30s';};
my $holder = $coordinator->background_psql('postgres');
$holder->query_safe('BEGIN');
is($holder->query_safe(q{SELECT status FROM idem_begin('busy', 'pay')}), 'new', 'a transaction holds key busy');
is($coordinator->safe_psql('postgres', qq{$bounded
		BEGIN; SELECT status FROM idem_begin('busy', 'pay', wait => false); COMMIT;}),
	'in_progress', 'wait => false from the coordinator: in_progress');
$coordinator->safe_psql('postgres', q{
	CREATE FUNCTION try_pay(request_key text) RETURNS text LANGUAGE plpgsql
	AS $$ BEGIN RETURN (SELECT status FROM idem_begin(request_key, 'pay', wait => false)); END $$;
	SELECT create_distributed_function('try_pay(text)', 'request_key',
	                                   colocate_with := 'orders', force_delegation := true);
});
my ($ports, $shards, $two_phase, $answer) = remote_commands(qq{$bounded
SELECT try_pay('busy')});
is($answer, 'in_progress', 'wait => false in a delegated function: in_progress');
is_deeply($shards, [], 'the function ran on the worker: the coordinator sent it no statement on a shard');
for my $setting (q{SET LOCAL lock_timeout = '200ms'}, q{SET LOCAL pg_idem.wait_timeout = '200ms'})
{
	my ($ret, $stdout, $stderr) = $coordinator->psql('postgres', qq{
		\\set VERBOSITY verbose
		$bounded
		BEGIN;
		$setting;
		SELECT idem_claim('busy', 'pay');
		COMMIT;});
	like($stderr, qr/55P03: key "busy" in scope "pay" is still in progress/, "$setting: 55P03 from the coordinator");
}
$holder->query_safe('COMMIT');
$holder->quit;
is($coordinator->safe_psql('postgres',
		q{BEGIN; SELECT status FROM idem_begin('busy', 'pay', wait => false); COMMIT;}),
	'replay', 'once the holder committed: replay');

# 4. The purge: each worker deletes the expired rows of its own shards.
$coordinator->safe_psql('postgres', q{
	SELECT idem_claim('short-' || i, 'short', interval '100 milliseconds') FROM generate_series(1, 300) i;
	SELECT idem_token_issue('short', interval '100 milliseconds') FROM generate_series(1, 50);
	SELECT idem_lease_acquire('short-' || i, 'me', interval '100 milliseconds') FROM generate_series(1, 20) i;
});
ok($coordinator->poll_query_until('postgres', q{
		SELECT (SELECT count(*) FROM idem_claims WHERE scope = 'short')
		     + (SELECT count(*) FROM idem_tokens WHERE scope = 'short')
		     + (SELECT count(*) FROM idem_leases WHERE name LIKE 'short-%') = 0}),
	'the workers purged the expired claims, tokens and leases');
for my $worker ($worker1, $worker2)
{
	my @failed = grep { /ERROR:/ && /pg_idem purge worker/ }
	  split /\n(?=\d{4}-\d\d-\d\d )/, PostgreSQL::Test::Utils::slurp_file($worker->logfile);
	is(scalar @failed, 0, $worker->name . ': no purge statement failed') or diag(@failed);
	cmp_ok($worker->safe_psql('postgres', q{SELECT rows_purged FROM idem_stats}), '>', 0,
		$worker->name . ': its own purge deleted rows');
}

# Lease fences grow: across an expiry, and across the purge of the row.
my $fence1 = $coordinator->safe_psql('postgres', q{SELECT idem_lease_acquire('job', 'a', interval '200 milliseconds')});
ok($coordinator->poll_query_until('postgres', q{
		SELECT idem_lease_acquire('job', 'b', interval '200 milliseconds') IS NOT NULL}),
	'b got the lease once it expired');
my $fence2 = $coordinator->safe_psql('postgres', q{SELECT fencing_token FROM idem_leases WHERE name = 'job'});
ok($coordinator->poll_query_until('postgres', q{SELECT count(*) = 0 FROM idem_leases WHERE name = 'job'}),
	'the purge deleted the expired lease');
my $fence3 = $coordinator->safe_psql('postgres', q{SELECT idem_lease_acquire('job', 'c', interval '1 minute')});
ok($fence1 < $fence2 && $fence2 < $fence3, "fences grow: $fence1, $fence2, $fence3");

# 5. What stays with the coordinator: on a worker, and in a delegated
#    function, 0A000.
$coordinator->safe_psql('postgres', q{
	CREATE FUNCTION lease_for(request_key text) RETURNS bigint LANGUAGE plpgsql
	AS $$ BEGIN RETURN idem_lease_acquire(request_key, 'me', interval '1 minute'); END $$;
	SELECT create_distributed_function('lease_for(text)', 'request_key',
	                                   colocate_with := 'orders', force_delegation := true);
});
my %on_worker = (
	'idem_lease_acquire' => q{SELECT idem_lease_acquire('w', 'me', interval '1 minute')},
	'idem_hold'          => q{SELECT * FROM idem_hold('w', 'pay', interval '1 minute')},
	'hot stock'          => q{SELECT idem_stock_take('sku', 1)},);
for my $function (sort keys %on_worker)
{
	my ($ret, $stdout, $stderr) = $worker1->psql('postgres', "\\set VERBOSITY verbose\n$on_worker{$function}");
	like($stderr, qr/0A000: \Q$function\E.* runs on the Citus coordinator only/, "$function on a worker: 0A000");
}
my ($ret, $stdout, $stderr) = $coordinator->psql('postgres', "\\set VERBOSITY verbose\nSELECT lease_for('order-1')");
like($stderr, qr/0A000: idem_lease_acquire\(\) runs on the Citus coordinator only/,
	'idem_lease_acquire in a delegated function: 0A000');

# Hot stock on the coordinator; its tables as a reference table are refused.
is($coordinator->safe_psql('postgres', q{
		SELECT idem_stock_add('sku', 10);
		BEGIN; SELECT idem_stock_take('sku', 3); COMMIT;
		SELECT idem_stock_level('sku');}),
	"10\nt\n7", 'hot stock on the coordinator');
for my $refused (
	[ q{SELECT idem_stock_take('sku', 1)},
	  qr/0A000: hot stock cannot take or add item "sku": idem_stock_items is a Citus table/,
	  'hot stock with its items as a reference table: 0A000' ],
	[ q{SELECT idem_distribute('orders')},
	  qr/0A000: hot stock's table idem_stock_items is a Citus table/,
	  'idem_distribute() refuses that layout' ])
{
	my ($sql, $error, $name) = @$refused;
	($ret, $stdout, $stderr) = $coordinator->psql('postgres', qq{
		\\set VERBOSITY verbose
		BEGIN;
		SELECT create_reference_table('idem_stock_items');
		$sql;
		ROLLBACK;});
	like($stderr, $error, $name);
}
is($coordinator->safe_psql('postgres', q{SELECT idem_stock_level('sku')}), '7', 'the level is kept');

# 6. A shard move in the default transfer mode, under load: the shard group
#    of orders, idem_claims and idem_holds moves by logical replication,
#    which needs a replica identity on every table.
my $moving = $coordinator->safe_psql('postgres', qq{
	SELECT shardid FROM citus_shards
	WHERE table_name = 'orders'::regclass AND nodeport = @{[ $worker1->port ]} ORDER BY shardid LIMIT 1});
PostgreSQL::Test::Utils::append_to_file("$scripts/move.sql", q{
\set k random(1, 3000)
SELECT place_order('move-' || :k, 'sku', 1);
});
chmod 0644, "$scripts/move.sql";
my ($load_out, $load_err) = ('', '');
my $load = IPC::Run::start([ 'pgbench', '-n', '-c', '4', '-j', '2', '-t', '1500', '-f', "$scripts/move.sql",
		'-h', $host, '-p', $coordinator->port, 'postgres' ], '>', \$load_out, '2>', \$load_err);
ok($coordinator->poll_query_until('postgres', q{SELECT count(*) > 200 FROM orders WHERE request_key LIKE 'move-%'}),
	'the load is placing orders');
$coordinator->safe_psql('postgres', qq{
	SELECT citus_move_shard_placement($moving, '$host', @{[ $worker1->port ]}, '$host', @{[ $worker2->port ]})});
ok($load->finish, 'the load ran through the move with no error') or diag($load_out, $load_err);
is($coordinator->safe_psql('postgres', qq{SELECT nodeport FROM citus_shards WHERE shardid = $moving}),
	$worker2->port, 'the shard is on worker2 now');
is($coordinator->safe_psql('postgres', q{
		SELECT (SELECT count(*) FROM orders WHERE request_key LIKE 'move-%')
		     = (SELECT count(*) FROM idem_claims WHERE scope = 'orders' AND key LIKE 'move-%')}),
	't', 'after the move, one order per claimed key');
# Every key placed so far, sent again, is answered without a second order.
my @moved_keys = split /\n/,
  $coordinator->safe_psql('postgres', q{SELECT request_key FROM orders WHERE request_key LIKE 'move-%'});
my @answers = split /\n/,
  $coordinator->safe_psql('postgres', join("\n", map { "SELECT place_order('$_', 'sku', 1);" } @moved_keys));
is(scalar(grep { $_ eq 'replay' } @answers), scalar @moved_keys,
	'after the move, every key placed during it is a replay (' . scalar(@moved_keys) . ' keys)');

# 7. DROP EXTENSION leaves nothing behind on the workers (once Citus has
#    dropped the placements the move left, as it does a while after a move).
$coordinator->safe_psql('postgres', q{CALL citus_cleanup_orphaned_resources()});
$coordinator->safe_psql('postgres', q{DROP EXTENSION pg_idem CASCADE});
for my $worker ($worker1, $worker2)
{
	is($worker->safe_psql('postgres', q{SELECT count(*) FROM pg_class WHERE relname LIKE 'idem\_%'}),
		'0', $worker->name . ': no pg_idem table or shard is left');
}
is($coordinator->safe_psql('postgres', q{
		SELECT count(*) FROM pg_dist_partition WHERE logicalrelid::text LIKE 'idem\_%'}),
	'0', 'no pg_idem table is left in the Citus metadata');

done_testing();
