# A Citus cluster for pg_idem's Citus test and benchmark: a coordinator and
# two workers with Citus and pg_idem preloaded, the workers added by their
# socket directory (citus.local_hostname names it to each node itself),
# pg_idem created on the coordinator (Citus creates it on the workers), and
# the layout of README "Scaling out with Citus": orders distributed by
# request_key, pg_idem's tables by idem_distribute('orders'), and the order
# function delegated to the worker that owns the key.
package CitusCluster;
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use Exporter 'import';
our @EXPORT_OK = qw(start_cluster);

# Returns the coordinator and the two workers, started and set up.
sub start_cluster
{
	my (%opt) = @_;
	my @nodes;
	for my $name ('coordinator', 'worker1', 'worker2')
	{
		my $node = PostgreSQL::Test::Cluster->new($name);
		$node->init(allows_streaming => 'logical');
		my $host = $node->host;
		$node->append_conf('postgresql.conf', qq{
shared_preload_libraries = 'citus,pg_idem'
citus.local_hostname = '$host'
max_connections = 100
max_prepared_transactions = 100
pg_idem.purge_interval = '100ms'
} . ($opt{conf} // ''));
		$node->start;
		$node->safe_psql('postgres', 'CREATE EXTENSION citus');
		push @nodes, $node;
	}
	my ($coordinator, @workers) = @nodes;
	my $host = $coordinator->host;
	$coordinator->safe_psql('postgres', join ';',
		"SELECT citus_set_coordinator_host('$host', " . $coordinator->port . ')',
		map { "SELECT citus_add_node('$host', " . $_->port . ')' } @workers);
	$coordinator->safe_psql('postgres', q{
		CREATE EXTENSION pg_idem;
		SET citus.shard_count = 32;
		CREATE TABLE orders (request_key text PRIMARY KEY, item text NOT NULL, qty int NOT NULL);
		SELECT create_distributed_table('orders', 'request_key');
		SELECT idem_distribute('orders');
		-- README "Scaling out with Citus": the order function, delegated to
		-- the worker that owns the key, claims and writes there.
		CREATE FUNCTION place_order(request_key text, item text, qty int) RETURNS text
		LANGUAGE plpgsql AS $$
		DECLARE
			r record;
		BEGIN
			SELECT * INTO r FROM idem_begin(request_key, 'orders');
			IF r.status = 'new' THEN
				INSERT INTO orders VALUES (request_key, item, qty);
				PERFORM idem_finish(request_key, 'orders', jsonb_build_object('placed', request_key));
				RETURN 'placed';
			END IF;
			RETURN r.status;
		END $$;
		SELECT create_distributed_function('place_order(text,text,int)', 'request_key',
		                                   colocate_with := 'orders', force_delegation := true);
	});
	return ($coordinator, @workers);
}

1;
