from cluster.commands.cli import cluster

cluster()
