from cluster.cli import cluster

cluster()
