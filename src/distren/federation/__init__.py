"""Federation: named servers share a job's frames (pull, with leases) and dependencies."""
