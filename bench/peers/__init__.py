"""Other replication systems measured in the same run, on the same machine, for comparison."""
