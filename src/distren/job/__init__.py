"""Jobs: the distrenjob.xml format, package intake and bundles."""
